"""`register`: coarse rigid on thumbnails -> robust affine passes -> dense non-rigid field.

Why this order: the coarse search makes any rotation and large shift small; affine passes
on block matches (RANSAC) absorb the scanner's scale/shear; the dense stage
(`registration.dense`) then optimises a displacement field on the images themselves, coarse
to fine (8 -> 1 µm/px), so tissue stretch is followed everywhere, also in stroma where few
patches would give a confident block match. The older block-matching field passes remain
available (`field_passes`), off by default: their 64 µm grid and fall-back to the affine
where matches fail left 2-3 µm median error on deformed tissue (issue #19).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.registration.coarse import coarse_rigid
from her2core.registration.fit import ransac_affine, reject_local_outliers, smooth_field
from her2core.registration.match import match_points
from her2core.registration.transform import Transform
from her2core.util.atomic import write_json
from her2core.util.progress import Progress, ensure


@dataclass
class RegistrationConfig:
    """Settings of `register`; saved next to the result (registration_config.json)."""

    coarse_size: int = 192                 # thumbnail side (px) of the rotation search
    angle_step: float = 4.0                # degrees between tried rotations
    max_rotation: float = 180.0            # search +/- this many degrees (180 = any angle)
    affine_min_mpp: float = 2.0            # the finest affine pass
    affine_max_mpp: float = 6.0            # the coarsest (on whole slides the thumbnail is far coarser,
    #                                        and nuclei blur below the signal threshold there)
    affine_patch: int = 64
    affine_min_ncc: float = 0.3
    affine_smooth_um: float = 6.0          # blur of hematoxylin in affine passes (tissue-scale signal)
    affine_max_points: int = 400
    # (mpp, patch px, min correlation, smoothing µm, phase normalisation)
    # block-matching field passes (mpp, patch px, min correlation, smoothing µm, phase
    # normalisation), before the dense stage; off by default (the dense stage measures better)
    field_passes: tuple = ()
    field_spacing_um: float = 64.0         # node pitch of the block-matching field
    field_sigma: float = 0.75              # smoothing, in nodes
    outlier_tol_um: float = 6.0            # a node off its neighbours' median by more is dropped
    max_field_points: int = 4000
    dense: bool = True                     # dense non-rigid refinement (registration.dense)
    # (mpp, increment node pitch µm, Adam steps), coarse to fine
    dense_levels: tuple = ((8.0, 64.0, 100), (4.0, 32.0, 100), (2.0, 16.0, 80), (1.0, 8.0, 25))
    dense_node_um: float = 8.0             # pitch of the saved field's nodes
    dense_window: int = 9                  # local-NCC window, work px
    dense_smooth: float = 0.5              # diffusion prior weight
    dense_lr: float = 0.3                  # Adam step, work px
    dense_tile_px: int = 1536              # work px per tile side (bounded memory on whole slides)
    min_matched: int = 6                   # fewer confident matches in the first affine pass = failure
    write_tile: int = 1024
    review_region: int = 1024
    review_threshold_um: float = 5.0
    seed: int = 0


@dataclass
class RegistrationResult:
    transform: Transform
    transform_path: Path
    registered_path: Path | None
    review: dict | None
    warnings: list[str] = field(default_factory=list)
    passes: list[dict] = field(default_factory=list)




def _open(path, mpp, what):
    from her2core.slide import open_slide

    s = open_slide(path, mpp=mpp)
    if s.mpp is None:
        s.close()
        raise UserError(f"{path}: {what} slide has no microns per pixel; pass --{what.lower().replace('&', '')}-mpp "
                        "(or --mpp) with the scan resolution, e.g. 0.25")
    return s


def _grid_points(w: int, h: int, spacing: float) -> tuple[np.ndarray, tuple[int, int]]:
    nx = int(np.floor((w - 1) / spacing)) + 2
    ny = int(np.floor((h - 1) / spacing)) + 2
    gx, gy = np.meshgrid(np.arange(nx) * spacing, np.arange(ny) * spacing)
    return np.stack([gx, gy], axis=-1), (ny, nx)


def _tissue_points(tissue, w, h, spacing, max_points):
    """Grid points inside (dilated) tissue; the grid widens until there are at most max_points."""
    while True:
        pts, shape = _grid_points(w, h, spacing)
        inside = tissue.contains_xy(pts.reshape(-1, 2)).reshape(shape)
        if inside.sum() <= max_points:
            return pts, inside, spacing
        spacing *= np.sqrt(inside.sum() / max_points) * 1.01


def register(he_path, her2_path, out_dir, *, he_mpp: float | None = None, her2_mpp: float | None = None,
             config: RegistrationConfig | None = None, write_image: bool = True, run_review: bool = True,
             progress: Progress | None = None, overwrite: bool = False) -> RegistrationResult:
    """Register the HER2 slide onto the H&E slide; writes transform.json, her2_registered.ome.tif, review.

    An existing registration in `out_dir` is refused unless `overwrite`; `out_dir` is locked
    while written (`her2core.util.outputs`). `progress` hears each stage (coarse, affine, field,
    dense, resample, review); a stop asked there raises `Cancelled` and leaves no transform.json
    half-written.
    """
    from her2core.util.outputs import locked

    with locked(out_dir, "her2 register"):
        if (Path(out_dir) / "transform.json").exists() and not overwrite:
            raise UserError(f"{Path(out_dir) / 'transform.json'}: a registration is already there; "
                            "pass --overwrite to replace it or choose another --out")
        return _register(he_path, her2_path, Path(out_dir), he_mpp=he_mpp, her2_mpp=her2_mpp,
                         config=config, write_image=write_image, run_review=run_review,
                         progress=ensure(progress))


def _register(he_path, her2_path, out_dir: Path, *, he_mpp, her2_mpp, config, write_image, run_review,
              progress: Progress) -> RegistrationResult:
    from scipy.ndimage import binary_dilation

    from her2core.slide.tissue import TissueConfig, detect_tissue

    cfg = config or RegistrationConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tick = progress.update
    he = _open(he_path, he_mpp, "H&E")
    her2 = _open(her2_path, her2_mpp, "HER2")
    t0 = time.time()
    try:
        passes: list[dict] = []
        tissue = detect_tissue(he, TissueConfig(mask_mpp=max(8.0, he.mpp)))
        # grow the mask by a node so tissue borders get matches too
        tissue.mask = binary_dilation(tissue.mask, iterations=max(1, round(32.0 / tissue.mpp)))
        W, H = he.dimensions
        tick("coarse", 0, 1)
        matrix, score, coarse_mpp = coarse_rigid(he, her2, size=cfg.coarse_size, angle_step=cfg.angle_step,
                                                 max_rotation=cfg.max_rotation)
        passes.append({"stage": "coarse", "mpp": coarse_mpp, "score": score})
        tick("coarse", 1, 1)
        t = Transform(matrix=matrix, he_mpp=he.mpp, her2_mpp=her2.mpp, he_size=he.dimensions,
                      her2_size=her2.dimensions)

        # -- affine passes: coarse mpp down to affine_min_mpp, factor ~3 each ---------------
        mpps = [min(coarse_mpp / 2, max(cfg.affine_max_mpp, cfg.affine_min_mpp))]
        while mpps[-1] / 3 > cfg.affine_min_mpp:
            mpps.append(mpps[-1] / 3)
        if mpps[-1] > cfg.affine_min_mpp * 1.01:
            mpps.append(cfg.affine_min_mpp)
        mpps = [max(m, he.mpp) for m in mpps]
        for k, mpp in enumerate(mpps):
            spacing = cfg.affine_patch * mpp / 2 / he.mpp
            pts, inside, _ = _tissue_points(tissue, W, H, spacing, cfg.affine_max_points)
            m = match_points(he, her2, t, pts[inside], mpp=mpp, patch=cfg.affine_patch,
                             min_ncc=cfg.affine_min_ncc, normalization=None,
                             smooth_um=cfg.affine_smooth_um, progress=progress)
            nv = int(m.valid.sum())
            rec = {"stage": "affine", "mpp": mpp, "points": len(m.valid), "matched": nv}
            if nv < max(cfg.min_matched, 3):
                if k == 0:
                    raise UserError(f"{her2_path}: registration failed: only {nv} of {len(m.valid)} tissue "
                                    f"patches matched the H&E slide {he_path} at {mpp:.1f} µm/px; check that "
                                    "both slides show the same tissue and their microns per pixel")
                passes.append(rec)
                continue
            thr = max(3.0 * mpp / he.mpp, 4.0 / he.mpp)
            new, inl = ransac_affine(m.her2_xy[m.valid], m.he_xy[m.valid], thr, seed=cfg.seed + k)
            t.matrix = new
            rec.update(inliers=int(inl.sum()),
                       median_shift_um=float(np.median(np.linalg.norm(m.shift_px[m.valid], axis=1)) * he.mpp))
            passes.append(rec)
            tick("affine", k + 1, len(mpps))

        # -- field passes --------------------------------------------------------------------
        if cfg.field_passes:
            spacing0 = cfg.field_spacing_um / he.mpp
            nodes, inside, spacing = _tissue_points(tissue, W, H, spacing0, cfg.max_field_points)
            ny, nx = inside.shape
            t.field = np.zeros((2, ny, nx), np.float32)
            t.field_spacing = float(spacing)
            t.field_origin_xy = (0.0, 0.0)
            for k, (mpp, patch, min_ncc, smooth_um, phase) in enumerate(cfg.field_passes):
                mpp = max(float(mpp), he.mpp)
                m = match_points(he, her2, t, nodes[inside], mpp=mpp, patch=int(patch),
                                 min_ncc=float(min_ncc), smooth_um=float(smooth_um),
                                 normalization="phase" if phase else None, progress=progress)
                grid = np.zeros((ny, nx, 2))
                valid = np.zeros((ny, nx), bool)
                p = m.he_xy
                inc = (m.her2_xy @ t.matrix[:2, :2].T + t.matrix[:2, 2]) - p - t.displacement(p)
                grid[inside] = inc
                valid[inside] = m.valid
                tol = max(cfg.outlier_tol_um, 2 * mpp) / he.mpp
                keep = reject_local_outliers(grid, valid, tol)
                sm = smooth_field(grid, keep, cfg.field_sigma)
                t.field = (t.field + np.moveaxis(sm, -1, 0)).astype(np.float32)
                passes.append({"stage": "field", "mpp": mpp, "patch": int(patch), "points": int(inside.sum()),
                               "matched": int(m.valid.sum()), "kept": int(keep.sum()),
                               "ncc_median": float(np.median(m.ncc[m.ncc > 0])) if (m.ncc > 0).any() else None,
                               "median_shift_um": float(np.median(np.linalg.norm(inc[m.valid], axis=1)) * he.mpp)
                               if m.valid.any() else None})
                tick("field", k + 1, len(cfg.field_passes))

        if cfg.dense:
            from her2core.registration.dense import DenseLevel, refine_field

            tick("dense", 0, 1)
            passes += refine_field(he, her2, t, tissue, [DenseLevel(*lv) for lv in cfg.dense_levels],
                                   spacing=cfg.dense_node_um / he.mpp, window=cfg.dense_window,
                                   smooth=cfg.dense_smooth, lr=cfg.dense_lr, tile_px=cfg.dense_tile_px,
                                   progress=progress)
            tick("dense", 1, 1)

        warnings = t.plausibility_warnings()
        t.info = {"he_path": str(Path(he_path).resolve()), "her2_path": str(Path(her2_path).resolve()),
                  "passes": passes, "warnings": warnings, "seconds": round(time.time() - t0, 2)}
        from her2core.util.configs import to_dict

        write_json(out_dir / "registration_config.json", to_dict(cfg))
        tpath = t.save(out_dir / "transform.json")
        reg_path = None
        if write_image:
            from her2core.registration.resample import write_registered

            reg_path = write_registered(her2, t, out_dir / "her2_registered.ome.tif", tile=cfg.write_tile,
                                        progress=progress,
                                        properties={"registered_from": str(her2_path),
                                                    "onto": str(he_path)})
        rev = None
        if run_review and reg_path is not None:
            from her2core.registration.review import review

            rev = review(he_path, reg_path, out_dir, region=cfg.review_region,
                         threshold_um=cfg.review_threshold_um, transform=t, he_mpp=he.mpp,
                         progress=progress)
        return RegistrationResult(transform=t, transform_path=tpath, registered_path=reg_path, review=rev,
                                  warnings=warnings, passes=passes)
    finally:
        he.close()
        her2.close()
