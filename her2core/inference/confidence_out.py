"""Confidence outputs: a one-channel pyramid beside a virtual slide, or PNGs beside virtual tiles.

Slide: the confidence of every tile goes through the same tiled slide inference as the
virtual HER2 (`translate_slide`: same plan, blend, journal, resume, ranks), carried as an RGB
image (R = G = confidence, B = 0 where a tile was translated, 255 where the slide stayed
white); that image is then rewritten as a one-channel uint8 OME-TIFF pyramid on the same grid
(same µm/px and origin) — 255 on glass and outside the ROI — with the meaning and scale in its
`her2core` map annotation, and per-ROI summaries (mean confidence, fraction of tissue below
0.5) as JSON and as QuPath GeoJSON measurements. The virtual slide itself is not touched.

Tiles: `<out>/confidence/<name>.png` (uint8 confidence) and `<out>/confidence.csv`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.inference.confidence import (
    MEANING,
    U_MAX,
    ConfidenceEstimator,
    ConfidenceSettings,
)
from her2core.inference.model import Translator, load_translator
from her2core.inference.options import InferenceOptions
from her2core.util.progress import Progress, ensure

LOW = 0.5  # confidence below which tissue counts as unreliable in the summaries
PYRAMID_TILE = 256


def confidence_path(virtual_path: str | Path) -> Path:
    """virtual.ome.tif -> virtual.confidence.ome.tif (same folder)."""
    p = Path(virtual_path)
    name = p.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return p.with_name(name[:-len(suffix)] + ".confidence" + suffix)
    return p.with_name(name + ".confidence.ome.tif")


@dataclass(frozen=True)
class ConfidenceFiles:
    """Where the confidence outputs of one virtual slide live (named once, here)."""

    pyramid: Path  # virtual.confidence.ome.tif
    carrier: Path  # the hidden RGB slide the pyramid is made from; a kill resumes from it
    rois_json: Path  # per-ROI summaries
    rois_geojson: Path  # the same as QuPath measurements (only with ROIs)


def confidence_files(virtual_path: str | Path) -> ConfidenceFiles:
    out = confidence_path(virtual_path)
    stem = out.name.split(".")[0]
    return ConfidenceFiles(out, out.with_name(f".{out.name}.rgb.ome.tif"),
                           out.with_name(f"{stem}.confidence_rois.json"),
                           out.with_name(f"{stem}.confidence_rois.geojson"))


@dataclass
class ConfidenceTranslator(Translator):
    """A Translator whose 'image' is the confidence (R = G = uint8 confidence, B = 0)."""

    settings: ConfidenceSettings = field(default_factory=ConfidenceSettings)
    ensemble: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        super().__post_init__()
        for fw in self.ensemble:
            fw.to(self.device).eval()
        self.estimator = ConfidenceEstimator([self.framework, *self.ensemble], self.settings,
                                             steps=self.steps, device=self.device)

    def __call__(self, batch: np.ndarray, seed: int) -> np.ndarray:
        import torch

        self.tiles_translated += len(batch)
        with torch.inference_mode(), self._autocast:
            conf = self.estimator.confidence_uint8(batch, seed)
        out = np.zeros(conf.shape + (3,), np.uint8)
        out[..., 0] = conf
        out[..., 1] = conf
        return out

    def describe(self) -> dict:
        return {**super().describe(), "confidence": self.estimator.describe(),
                "ensemble_sha256": [weights_of(f) for f in self.ensemble]}


def weights_of(framework) -> str:
    from her2core.inference.model import weights_fingerprint

    return weights_fingerprint(framework)


def confidence_translator(run, options: InferenceOptions | None = None, *,
                          settings: ConfidenceSettings | None = None,
                          runs=()) -> ConfidenceTranslator:
    """A ConfidenceTranslator from a run folder, framework or Translator (sharing its network),
    with optional ensemble runs; one already built is returned as it is."""
    from her2core.models import registry

    if isinstance(run, ConfidenceTranslator):
        return run
    o = options or InferenceOptions()
    base = load_translator(run, device=o.device, steps=o.steps, precision=o.precision,
                           scheduler=o.scheduler)
    members = []
    for r in runs:
        t = load_translator(r, device=base.device, steps=o.steps, precision=o.precision,
                            scheduler=o.scheduler)
        if registry.family(t.framework.name) != registry.family(base.framework.name):
            raise UserError(f"--runs {r}: a {t.framework.name} run cannot join an ensemble of "
                            f"{base.framework.name}; give runs of the same family")
        members.append(t.framework)
    return ConfidenceTranslator(base.framework, base.device, steps=base.steps,
                                precision=base.precision, work_mpp=base.work_mpp, name=base.name,
                                run_name=base.run_name, fingerprint=base.fingerprint,
                                settings=settings or ConfidenceSettings(), ensemble=members)


def translate_slide_confidence(run, slide_path, virtual_path, options: InferenceOptions | None = None,
                               *, settings: ConfidenceSettings | None = None, runs=(), roi=None,
                               region=None, overwrite: bool = False,
                               progress: Progress | None = None, team=None,
                               leader: int = 0) -> Path | None:
    """The confidence pyramid of `virtual_path` (see the module doc); returns its path on the
    leader rank, None on the others.

    Pass the `options`, `roi` and `region` the virtual slide was made with, so both lie on the
    same grid. `run` may be a `confidence_translator` already built (a batch loads it once).
    Resumes like the slide: a killed carrier goes on from its journal, a finished one is kept.
    """
    from her2core.inference.slide import translate_slide

    files = confidence_files(virtual_path)
    out, rgb = files.pyramid, files.carrier
    # an output whose carrier is still beside it was killed before its summaries: finish them
    if out.exists() and not overwrite and not rgb.exists():
        raise UserError(f"{out}: output exists; pass --overwrite to replace it")
    translator = confidence_translator(run, options, settings=settings, runs=runs)
    need_carrier = overwrite or not rgb.exists()
    is_leader = team is None or team.rank == leader % team.world
    if team is not None:
        team.barrier()  # every rank has decided on the carrier before the leader changes it
    if need_carrier:
        translate_slide(translator, slide_path, rgb, options, roi=roi, region=region,
                        overwrite=True, progress=ensure(progress).within("confidence"),
                        team=team, leader=leader)
    if not is_leader:
        return None
    features = _roi_features(roi)
    summary = write_confidence_pyramid(rgb, out, features,
                                       {"confidence": translator.estimator.describe()})
    from her2core.util.atomic import write_json

    write_json(files.rois_json, summary)
    if features:
        from her2core.qupath.geojson import write_features

        write_features(files.rois_geojson, _with_measurements(features, summary["rois"]))
    rgb.unlink()
    return out


def _roi_features(roi) -> list:
    if roi is None:
        return []
    if isinstance(roi, (str, Path)):
        from her2core.qupath.geojson import read_features

        feats = read_features(roi)
    elif isinstance(roi, list):
        feats = roi
    else:
        return []
    from shapely.geometry import MultiPolygon, Polygon

    return [f for f in feats if isinstance(f.geometry, (Polygon, MultiPolygon))]


def _with_measurements(features, rois: list[dict]) -> list:
    import copy

    out = []
    for f, r in zip(features, rois):
        g = copy.copy(f)
        g.measurements = {**f.measurements,
                          "her2 confidence mean": r["mean_confidence"],
                          "her2 confidence low fraction": r["low_fraction"]}
        out.append(g)
    return out


def write_confidence_pyramid(rgb_path: Path, out_path: Path, features=(),
                             properties: dict | None = None) -> dict:
    """One-channel uint8 pyramid from the carrier image, and per-ROI / whole-region summaries.

    Reads the carrier level by level, one tile row at a time (bounded memory); level 0 gives
    the summaries (tissue = pixels whose B channel is below 128, i.e. mostly translated).
    """
    import tifffile

    from her2core.qupath.rois import rasterize
    from her2core.slide import open_slide
    from her2core.util.atomic import atomic_path

    with open_slide(rgb_path) as s:
        props = dict(s.properties)
        mpp, origin = float(s.mpp), s.origin_xy
    levels_src = tifffile.TiffFile(rgb_path)
    try:
        import zarr

        series = levels_src.series[0]
        arrays = [zarr.open(series.aszarr(level=i), mode="r") for i in range(len(series.levels))]
        slide_mpp = props.get("slide_mpp")
        scale = mpp / float(slide_mpp) if slide_mpp else 1.0  # level-0 slide px per output px
        stats = [[0.0, 0, 0] for _ in features]  # sum, tissue px, low px
        total = [0.0, 0, 0]
        T = PYRAMID_TILE

        def tiles(level: int):
            a = arrays[level]
            h, w = a.shape[:2]
            for r0 in range(0, h, T):
                band = np.asarray(a[r0:min(r0 + T, h)])
                conf = band[..., 0].copy()
                tissue = band[..., 2] < 128
                conf[~tissue] = 255
                if level == 0:
                    _accumulate(conf, tissue, r0, w, features, stats, total, origin, scale,
                                rasterize)
                for c0 in range(0, w, T):
                    t = np.full((T, T), 0, np.uint8)
                    blk = conf[:, c0:c0 + T]
                    t[:blk.shape[0], :blk.shape[1]] = blk
                    yield t

        meta_props = {k: v for k, v in props.items() if k not in ("kind",)}
        meta_props.update({"kind": "confidence", "meaning": MEANING, "u_max": U_MAX,
                           "scale_uint8": "confidence = value / 255",
                           "virtual_slide_grid": True, **(properties or {})})
        import uuid

        name = out_path.name.split(".")[0]
        uid = uuid.uuid5(uuid.NAMESPACE_URL,  # name-derived, as PyramidStream: same bytes on rerun
                         f"her2core:{name}:confidence:{json.dumps(meta_props, sort_keys=True)}")
        metadata = {"UUID": str(uid), "Creator": "her2core", "Name": name, "axes": "YX",
                    "PhysicalSizeX": mpp, "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": mpp, "PhysicalSizeYUnit": "µm",
                    "MapAnnotation": {"her2core": json.dumps(meta_props, sort_keys=True)}}
        res = (1e4 / mpp, 1e4 / mpp)
        opts = {"tile": (T, T), "photometric": "minisblack", "compression": "zlib",
                "resolutionunit": "CENTIMETER", "dtype": np.uint8, "software": False}
        h, w = arrays[0].shape[:2]
        with atomic_path(out_path) as tmp, \
                tifffile.TiffWriter(tmp, bigtiff=h * w > 2**31, ome=True) as tif:
            tif.write(tiles(0), shape=(h, w), subifds=len(arrays) - 1, resolution=res,
                      metadata=metadata, **opts)
            for i in range(1, len(arrays)):
                lh, lw = arrays[i].shape[:2]
                tif.write(tiles(i), shape=(lh, lw), subfiletype=1,
                          resolution=(res[0] / 2**i, res[1] / 2**i), metadata=None, **opts)
    finally:
        levels_src.close()

    def summary(sum_, n, low):
        return {"mean_confidence": (sum_ / n / 255.0) if n else None,
                "low_fraction": (low / n) if n else None, "tissue_pixels": int(n)}

    rois = []
    for f, (s_, n, low) in zip(features, stats):
        rois.append({"id": f.id, "name": f.name, **summary(s_, n, low)})
    return {"confidence_slide": out_path.name, "mpp": mpp, "low_threshold": LOW,
            **(properties or {}),
            "meaning": MEANING, "region": summary(*total), "rois": rois}


def _accumulate(conf, tissue, r0, width, features, stats, total, origin, scale, rasterize):
    r = (r0, r0 + conf.shape[0])
    low = conf < round(LOW * 255)
    total[0] += float(conf[tissue].sum())
    total[1] += int(tissue.sum())
    total[2] += int((low & tissue).sum())
    for f, st in zip(features, stats):
        _, y0, _, y1 = f.geometry.bounds
        top, bottom = (y0 - origin[1]) / scale, (y1 - origin[1]) / scale
        if bottom < r[0] or top > r[1]:
            continue
        m = rasterize(f.geometry, r, (0, width), origin=origin, scale=scale) & tissue
        st[0] += float(conf[m].sum())
        st[1] += int(m.sum())
        st[2] += int((low & m).sum())


# --------------------------------------------------------------------------- tile folders

def confidence_tile_folder(run, in_dir, out_dir, options: InferenceOptions | None = None, *,
                           settings: ConfidenceSettings | None = None, runs=(),
                           overwrite: bool = False, progress: Progress | None = None) -> Path:
    """`out_dir/confidence/<stem>.png` per tile and `out_dir/confidence.csv` (mean per tile).

    Seeds follow `translate_tile_folder` (batch starting at tile i: seed + i), so sample 0 of
    each map is the virtual tile written beside it. Maps already present are kept (resume).
    `progress` hears `("confidence", maps done, tiles)` and may cancel (`Cancelled`).
    """
    import csv
    import io

    from her2core.datasets.paired import read_rgb
    from her2core.inference.tiles import IMAGE_SUFFIXES
    from her2core.util.atomic import write_png, write_text

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    files = sorted(p for p in in_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    conf_dir = out_dir / "confidence"
    conf_dir.mkdir(parents=True, exist_ok=True)
    o = options or InferenceOptions()
    report = ensure(progress)
    translator = confidence_translator(run, o, settings=settings, runs=runs)
    est = translator.estimator
    todo = [(i, p) for i, p in enumerate(files)
            if overwrite or not (conf_dir / f"{p.stem}.png").exists()]
    pending: dict[tuple, list] = {}
    done = len(files) - len(todo)
    report.update("confidence", done, len(files))

    def flush(key):
        nonlocal done
        group = pending.pop(key)
        maps = est.confidence_uint8(np.stack([img for _, _, img in group]),
                                    seed=o.seed + group[0][0])
        for (_, path, _), m in zip(group, maps):
            write_png(conf_dir / f"{path.stem}.png", m)
        done += len(group)
        report.update("confidence", done, len(files))

    for i, path in todo:
        img = read_rgb(path)
        pending.setdefault(img.shape, []).append((i, path, img))
        if len(pending[img.shape]) >= o.batch_size:
            flush(img.shape)
    for key in list(pending):
        flush(key)
    from PIL import Image

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "mean_confidence", "low_fraction"])
    for p in files:
        m = np.asarray(Image.open(conf_dir / f"{p.stem}.png").convert("L"))
        w.writerow([p.stem, f"{m.mean() / 255:.6f}", f"{(m < round(LOW * 255)).mean():.6f}"])
    write_text(out_dir / "confidence.csv", buf.getvalue())
    write_text(out_dir / "confidence.json", json.dumps(est.describe(), indent=2) + "\n")
    return conf_dir

