"""Build a paired tile dataset from slide pairs: tissue ∩ ROIs -> tiles -> QC -> splits -> files + manifest.

Layout (HER2match): `HE_20x/{train,val,test}/<case>_x<X>_y<Y>.png` and the same names under
`IHC_20x/` (20x = 0.5 µm/px; the name follows the working scale), `manifest.csv` with one row
per candidate tile (kept or not, with every QC value and the reason), `splits.json`,
`tile_config.json`, and per case the tissue mask (`tissue/<case>.png`, `.geojson`).

Resume: each case appends its rows to `.progress/<case>.csv` as tiles are done (a tile's
PNGs are written before its row); a re-run skips the rows already there and the cases
marked done, and refuses to mix settings or splits with an earlier run in the same folder.
Memory stays bounded: one tile pair at a time per worker, whatever the slide size.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.slide.tissue import TissueConfig, box_coverage, detect_tissue
from her2core.tiling.cases import Case
from her2core.tiling.qc import QCConfig, tile_qc
from her2core.tiling.splits import SPLITS, assign_splits, load_splits, save_splits
from her2core.util.atomic import write_png, write_text
from her2core.util.dataset_meta import write_dataset_meta
from her2core.util.progress import Progress, ensure

COLUMNS = ("name", "case", "her2_score", "mode", "split", "x", "y", "size_px", "source_mpp", "mpp", "tile",
           "x_um", "y_um", "coverage", "background_frac", "blur_frac", "sharpness", "dark_frac", "ink_frac",
           "shift_um", "correlation", "correlation_unshifted", "kept", "reason", "he_path", "ihc_path")


@dataclass
class TileConfig:
    """What a tile is and which are kept; saved as tile_config.json beside the dataset."""

    tile_px: int = 1024            # tile side at the source scale ...
    source_mpp: float = 0.25       # ... of this many µm/px (so 256 µm by default)
    out_px: int = 512              # written tile side ...
    out_mpp: float = 0.5           # ... at the working scale
    stride_px: int | None = None   # step between tiles at the source scale (None = tile_px, no overlap)
    min_coverage: float = 0.5      # share of the tile that must be tissue ∩ ROI
    seed: int = 0
    split_fractions: tuple = (0.6, 0.2, 0.2)
    roi_classes: tuple | None = None
    tissue: TissueConfig = field(default_factory=TissueConfig)
    qc: QCConfig = field(default_factory=QCConfig)

    def check(self) -> None:
        tile_um, out_um = self.tile_px * self.source_mpp, self.out_px * self.out_mpp
        if abs(tile_um - out_um) > 1e-6 * tile_um:
            raise UserError(f"tile {self.tile_px} px at {self.source_mpp} µm/px ({tile_um:g} µm) and output "
                            f"{self.out_px} px at {self.out_mpp} µm/px ({out_um:g} µm) must cover the same area")
        if not 0 < self.min_coverage <= 1:
            raise UserError(f"min coverage must be in (0, 1], got {self.min_coverage}")

    @property
    def tile_um(self) -> float:
        return self.tile_px * self.source_mpp

    @property
    def layout_names(self) -> tuple[str, str]:
        mag = 10.0 / self.out_mpp
        mag_s = f"{mag:g}x"
        return f"HE_{mag_s}", f"IHC_{mag_s}"


# ----------------------------------------------------------------------------- per case


class _PairReader:
    """Reads an H&E tile and the matching HER2 tile at the working scale (one per worker thread)."""

    def __init__(self, case: Case, cfg: TileConfig, mpp: float | None):
        from her2core.slide import open_slide

        self.cfg = cfg
        self.he = open_slide(case.he, mpp=mpp)
        he_mpp = self.he.mpp
        if he_mpp is None:
            raise UserError(f"{case.he}: slide has no microns per pixel; pass --mpp (e.g. --mpp 0.25)")
        self.transform = None
        if case.her2_registered is not None:
            self.ihc = open_slide(case.her2_registered, mpp=mpp)
            r_mpp = self.ihc.mpp or he_mpp
            if self.ihc.dimensions != self.he.dimensions or abs(r_mpp - he_mpp) > 1e-3 * he_mpp:
                raise UserError(f"{case.her2_registered}: not in the pixel grid of {case.he} "
                                f"({self.ihc.dimensions} vs {self.he.dimensions}); give the "
                                "her2_registered.ome.tif of `her2 register`, or her2 + transform")
            if self.ihc.mpp is None:
                self.ihc.mpp = he_mpp
        else:
            from her2core.registration.transform import load_transform

            self.ihc = open_slide(case.her2, mpp=mpp)
            self.ihc.require_mpp()
            self.transform = load_transform(case.transform)
            if tuple(self.transform.he_size) not in ((0, 0), tuple(self.he.dimensions)):
                raise UserError(f"{case.transform}: made for an H&E slide of {tuple(self.transform.he_size)} px, "
                                f"but {case.he} is {self.he.dimensions}")
            self.transform.he_mpp = he_mpp

    def read(self, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        he = self.he.read_at_mpp((x, y), (cfg.tile_um, cfg.tile_um), cfg.out_mpp)
        if self.transform is None:
            ihc = self.ihc.read_at_mpp((x, y), (cfg.tile_um, cfg.tile_um), cfg.out_mpp)
        else:
            from her2core.registration.warp import warp_region

            ihc = warp_region(self.ihc, self.transform, (x, y), (cfg.out_px, cfg.out_px), cfg.out_mpp)
        return _fit(he, cfg.out_px), _fit(ihc, cfg.out_px)

    def close(self):
        self.he.close()
        self.ihc.close()


def _fit(img: np.ndarray, n: int) -> np.ndarray:
    if img.shape[:2] == (n, n):
        return img
    from her2core.slide.reader import resize_rgb

    return resize_rgb(img, (n, n))


def save_tissue_geojson(tissue, path: Path, name: str = "Tissue") -> None:
    """The tissue mask as one QuPath annotation (level-0 (x, y)), class "Tissue"."""
    from her2core.qupath.geojson import Feature, classification_of, write_features

    write_features(path, [Feature(geometry=tissue.to_geometry(), name=name,
                                  classification=classification_of("Tissue"))])


def candidate_tiles(case: Case, cfg: TileConfig, mpp: float | None, tissue_dir: Path | None = None):
    """(tissue mask, [(x, y, coverage)]) of tiles whose tissue ∩ ROI share reaches min_coverage."""
    from her2core.qupath.rois import load_rois, rasterize
    from her2core.slide import open_slide

    with open_slide(case.he, mpp=mpp) as he:
        if he.mpp is None:
            raise UserError(f"{case.he}: slide has no microns per pixel; pass --mpp (e.g. --mpp 0.25)")
        tissue = detect_tissue(he, cfg.tissue)
        W, H = he.dimensions
        size = cfg.tile_um / he.mpp
        stride = (cfg.stride_px or cfg.tile_px) * cfg.source_mpp / he.mpp
    if tissue_dir is not None:
        tissue.save_png(tissue_dir / f"{case.case}.png")
        save_tissue_geojson(tissue, tissue_dir / f"{case.case}.geojson", name=f"{case.case} tissue")
    region = tissue.mask
    if case.rois is not None:
        roi = load_rois(case.rois, (W, H), classes=list(cfg.roi_classes) if cfg.roi_classes else None)
        region = region & rasterize(roi, (0, region.shape[0]), (0, region.shape[1]),
                                    scale=tissue.step)
        if not region.any():
            raise UserError(f"{case.rois}: the ROIs of case {case.case} contain no detected tissue")
    out = []
    ys = np.arange(0, H - size + 1e-6, stride)
    xs = np.arange(0, W - size + 1e-6, stride)
    for y in ys:
        for x in xs:
            cov = box_coverage(region, tissue.step, x, y, size, size)
            if cov >= cfg.min_coverage:
                out.append((round(x), round(y), cov))
    return tissue, out, round(size)


def _read_progress(path: Path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # a row cut by a kill
    return list(csv.DictReader(io.StringIO("".join(lines))))


def _row_csv(row: dict) -> str:
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n").writerow(row)
    return buf.getvalue()


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.5g}"
    return str(v)


def review_flagged_boxes(case: Case) -> list[tuple[float, float, float, float]]:
    """Level-0 (x, y, w, h) of the regions `her2 register`'s review flagged for this case's pair.

    Read from review.json beside the registered slide (or the transform); tiles touching
    one are dropped ("review_flagged"): the review measured a residual above its threshold
    there. "No reliable match" regions are not flagged (nothing was measured); per-tile QC
    still checks them.
    """
    import json

    for folder in registration_folders(case):
        if (folder / "review.json").is_file():
            try:
                rv = json.loads((folder / "review.json").read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"{folder / 'review.json'}: unreadable review ({exc}); "
                                "re-run `her2 review` or delete it") from None
            return [(r["x"], r["y"], r["w"], r["h"]) for r in rv.get("regions", []) if r.get("flagged")]
    return []


def registration_folders(case: Case) -> list[Path]:
    """Folders of the case's registration (`her2 register --out`): beside its registered slide
    and/or its transform."""
    return [Path(p).parent for p in (case.her2_registered, case.transform) if p is not None]


def require_reviewed(case: Case) -> None:
    """A UserError unless a person accepted the case's registration (`review_decision.json`)."""
    from her2core.registration.decision import require_accepted

    folders = registration_folders(case)
    if not folders:
        raise UserError(f"case {case.case}: no registration to review (give her2_registered or "
                        "transform), or drop --require-review")
    require_accepted(folders[0], case.case)


def tile_case(case: Case, split: str, out_dir: Path, cfg: TileConfig, *, mpp: float | None = None,
              workers: int = 1, progress: Progress | None = None) -> list[dict]:
    """Tile one case into `out_dir` (resumable); returns its manifest rows.

    `progress` hears `("tile", tiles judged, candidate tiles)`; a stop raises `Cancelled` and the
    rows written so far stay in `.progress/` for the next run to resume from."""
    from concurrent.futures import ThreadPoolExecutor

    he_dir, ihc_dir = cfg.layout_names
    p = ensure(progress)
    prog_dir = out_dir / ".progress"
    prog_dir.mkdir(parents=True, exist_ok=True)
    done_marker = prog_dir / f"{case.case}.done"
    prog = prog_dir / f"{case.case}.csv"
    if done_marker.exists():
        return _read_progress(prog)
    _, cands, size0 = candidate_tiles(case, cfg, mpp, out_dir / "tissue")
    if not cands:
        raise UserError(f"{case.he}: case {case.case}: no tile has {cfg.min_coverage:.0%} tissue"
                        + (" inside the ROIs" if case.rois else "") + "; lower --min-coverage or check the ROIs")
    flagged_boxes = review_flagged_boxes(case)
    rows = _read_progress(prog)
    done = {(int(r["x"]), int(r["y"])) for r in rows
            if r["kept"] != "1" or ((out_dir / r["he_path"]).exists() and (out_dir / r["ihc_path"]).exists())}
    rows = [r for r in rows if (int(r["x"]), int(r["y"])) in done]
    todo = [(x, y, cov) for (x, y, cov) in cands if (x, y) not in done]
    for d in (out_dir / he_dir / split, out_dir / ihc_dir / split):
        d.mkdir(parents=True, exist_ok=True)
    local = threading.local()
    readers: list[_PairReader] = []
    lock = threading.Lock()

    def reader() -> _PairReader:
        if not hasattr(local, "r"):
            local.r = _PairReader(case, cfg, mpp)
            with lock:
                readers.append(local.r)
        return local.r

    def work(item):
        p.check("tile")
        x, y, cov = item
        r = reader()
        he, ihc = r.read(x, y)
        vals, reasons = tile_qc(he, ihc, cfg.out_mpp, cfg.qc)
        if any(x < bx + bw and bx < x + size0 and y < by + bh and by < y + size0
               for bx, by, bw, bh in flagged_boxes):
            reasons.append("review_flagged")
        name = f"{case.case}_x{x}_y{y}.png"
        kept = not reasons
        he_rel = f"{he_dir}/{split}/{name}" if kept else ""
        ihc_rel = f"{ihc_dir}/{split}/{name}" if kept else ""
        if kept:
            write_png(out_dir / he_rel, he)
            write_png(out_dir / ihc_rel, ihc)
        row = {"name": name, "case": case.case, "her2_score": case.her2_score, "mode": case.mode, "split": split,
               "x": x, "y": y, "size_px": size0, "source_mpp": r.he.mpp, "mpp": cfg.out_mpp, "tile": cfg.out_px,
               "x_um": x * r.he.mpp, "y_um": y * r.he.mpp, "coverage": cov, **vals,
               "kept": int(kept), "reason": ";".join(reasons), "he_path": he_rel, "ihc_path": ihc_rel}
        return {k: _fmt(v) for k, v in row.items()}

    total = len(cands)
    try:
        with open(prog, "a", newline="") as fh:
            if fh.tell() == 0:
                fh.write(",".join(COLUMNS) + "\n")
            p.update("tile", len(done), total)
            with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as ex:
                for row in (ex.map(work, todo) if ex is not None else map(work, todo)):
                    fh.write(_row_csv(row))
                    fh.flush()
                    rows.append(row)
                    p.update("tile", len(rows), total)
    finally:
        for r in readers:
            r.close()
    write_text(done_marker, f"{len(rows)}\n")
    return rows


# ----------------------------------------------------------------------------- many cases


def build_dataset(cases: list[Case], out_dir: str | Path, config: TileConfig | None = None, *,
                  splits: dict[str, str] | str | Path | None = None, mpp: float | None = None,
                  workers: int = 1, progress: Progress | None = None, require_review: bool = False) -> dict:
    """Tile every case into one dataset; returns a summary (counts per split and per reason).

    `require_review`: refuse, before writing anything, any case whose registration no person
    accepted (`her2core.registration.decision`). `progress` hears `("<case>: tile", done, total)`."""
    from her2core.util.atomic import write_json
    from her2core.util.configs import to_dict

    cfg = config or TileConfig()
    cfg.check()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not cases:
        raise UserError("no cases given")
    ids = [c.case for c in cases]
    if len(set(ids)) != len(ids):
        raise UserError(f"duplicate case ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    if require_review:
        for case in cases:
            require_reviewed(case)
    # settings must match an earlier run in the same folder (resume), or the folder is someone else's
    cfg_path = out_dir / "tile_config.json"
    cfg_dict = to_dict(cfg)
    cfg_dict["split_fractions"] = list(cfg_dict["split_fractions"])
    if cfg_path.exists():
        import json

        old = json.loads(cfg_path.read_text())
        if _norm(old) != _norm(cfg_dict):
            diff = sorted(k for k in set(old) | set(cfg_dict) if _norm(old.get(k)) != _norm(cfg_dict.get(k)))
            raise UserError(f"{out_dir}: holds a dataset made with other settings ({', '.join(diff)}); "
                            "use a new --out folder")
    # splits
    if isinstance(splits, (str, Path)):
        splits = load_splits(splits)
    if splits is None:
        splits = assign_splits({c.case: c.her2_score for c in cases}, seed=cfg.seed,
                               fractions=tuple(cfg.split_fractions))
    missing = [i for i in ids if i not in splits]
    if missing:
        raise UserError(f"splits: no split given for case(s) {', '.join(missing)}")
    splits = {i: splits[i] for i in ids}
    sp_path = out_dir / "splits.json"
    if sp_path.exists():
        old = load_splits(sp_path)
        clash = [i for i in ids if i in old and old[i] != splits[i]]
        if clash:
            raise UserError(f"{sp_path}: case(s) {', '.join(clash)} were put in other splits by an earlier run; "
                            "use a new --out folder or the same --splits / --seed")
        splits = {**old, **splits}
    write_json(cfg_path, cfg_dict)
    save_splits(sp_path, splits)

    all_rows: list[dict] = []
    p = ensure(progress)
    for case in cases:
        all_rows.extend(tile_case(case, splits[case.case], out_dir, cfg, mpp=mpp, workers=workers,
                                  progress=p.within(case.case)))
    all_rows.sort(key=lambda r: (r["case"], int(r["y"]), int(r["x"])))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(all_rows)
    write_text(out_dir / "manifest.csv", buf.getvalue())
    summary = _summary(all_rows, splits)
    write_json(out_dir / "summary.json", summary)
    write_dataset_meta(out_dir, generator="her2core.tiling.build_dataset", mpp=cfg.out_mpp,
                       tile_px=cfg.out_px, cases=len(cases), tiles_per_split=summary.get("per_split"))
    if summary["kept"] == 0:
        raise UserError(f"{out_dir}: no tile passed QC ({summary['candidates']} candidates; reasons "
                        f"{summary['reasons']}); see manifest.csv and relax the QC thresholds")
    return summary


def _norm(v):
    import json

    return json.dumps(v, sort_keys=True)


def _summary(rows: list[dict], splits: dict[str, str]) -> dict:
    kept = [r for r in rows if r["kept"] == "1"]
    reasons: dict[str, int] = {}
    for r in rows:
        for why in filter(None, r["reason"].split(";")):
            reasons[why] = reasons.get(why, 0) + 1
    per_split = {s: sum(1 for r in kept if r["split"] == s) for s in SPLITS}
    per_case = {}
    for r in rows:
        d = per_case.setdefault(r["case"], {"split": r["split"], "her2_score": r["her2_score"],
                                            "candidates": 0, "kept": 0})
        d["candidates"] += 1
        d["kept"] += r["kept"] == "1"
    return {"candidates": len(rows), "kept": len(kept), "per_split": per_split, "reasons": reasons,
            "cases": per_case, "splits": splits}
