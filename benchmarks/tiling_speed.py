"""Tiling speed and memory: `her2 tile`'s core vs raw tile reads, on large synthetic slide pairs.

For each slide size (default 10240² and 20480² px at 0.25 µm/px) a registered H&E/HER2 pair is
written cheaply (a 2048² rendered patch repeated, streamed through `write_pyramid`), then a
fresh subprocess measures, on the same slides and the same tile positions:

* raw reads: H&E + HER2 tiles read at the working scale (1024² at 0.25 -> 512² at 0.5 µm/px);
* the core: `build_dataset` (tissue mask, tile grid, reads, QC, PNG writing, manifest);

and prints tiles/s of both, their ratio, and the peak resident memory (ru_maxrss) of each
subprocess, which must stay flat when the slide area quadruples.

    python benchmarks/tiling_speed.py [--sizes 10240 20480] [--workers 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class Repeated:
    """A (H, W, 3) uint8 'array' that repeats a patch: a huge slide without the memory."""

    def __init__(self, patch: np.ndarray, h: int, w: int):
        self.patch, self.shape, self.ndim, self.dtype = patch, (h, w, 3), 3, np.uint8

    def __getitem__(self, key):
        rows, cols = (key + (slice(None),))[:2] if isinstance(key, tuple) else (key, slice(None))
        r0, r1, _ = rows.indices(self.shape[0])
        c0, c1, _ = cols.indices(self.shape[1])
        ph, pw = self.patch.shape[:2]
        rr = np.arange(r0, r1) % ph
        cc = np.arange(c0, c1) % pw
        return self.patch[rr[:, None], cc[None, :]]


def make_pair(out: Path, size: int) -> Path:
    from her2core.sample.render import he_rgb, her2_rgb
    from her2core.sample.tissue import TissueModel
    from her2core.slide import write_pyramid

    out.mkdir(parents=True, exist_ok=True)
    if (out / "cases.csv").exists():
        return out / "cases.csv"
    n, mpp = 2048, 0.25
    model = TissueModel(0, 0, n * mpp, n * mpp, seed=1, her2_score=3, tissue_cover=0.8)
    lay = model.render(0, 0, n, n, mpp)
    write_pyramid(out / "he.ome.tif", Repeated(he_rgb(lay["h"], lay["e"]), size, size), mpp=mpp, tile=512)
    write_pyramid(out / "her2_registered.ome.tif", Repeated(her2_rgb(lay["h"], lay["dab"]), size, size),
                  mpp=mpp, tile=512)
    (out / "cases.csv").write_text("case,he,her2_registered,her2_score\n"
                                   "bench,he.ome.tif,her2_registered.ome.tif,3+\n")
    return out / "cases.csv"


def child(cases_csv: str, out: str, workers: int) -> None:
    """Runs in a fresh process: raw reads, then the core, then peak memory."""
    from her2core.slide import open_slide
    from her2core.tiling import TileConfig, build_dataset, read_cases_csv
    from her2core.tiling.dataset import candidate_tiles

    cfg = TileConfig()
    cases = read_cases_csv(cases_csv)
    _, cands, _ = candidate_tiles(cases[0], cfg, None)
    t0 = time.perf_counter()
    with open_slide(cases[0].he) as he, open_slide(cases[0].her2_registered) as ihc:
        for x, y, _ in cands:
            he.read_at_mpp((x, y), (cfg.tile_um, cfg.tile_um), cfg.out_mpp)
            ihc.read_at_mpp((x, y), (cfg.tile_um, cfg.tile_um), cfg.out_mpp)
    raw = time.perf_counter() - t0
    rss_raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    s = build_dataset(cases, out, cfg, splits={"bench": "train"}, workers=workers)
    core = time.perf_counter() - t0
    print(json.dumps({"tiles": len(cands), "kept": s["kept"], "raw_s": raw, "core_s": core,
                      "raw_tiles_per_s": len(cands) / raw, "core_tiles_per_s": len(cands) / core,
                      "peak_rss_mb_raw": rss_raw / 1024,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10240, 20480])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--keep", help="folder for the slides (reused between runs)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--make", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        make_pair(Path(args.make[1]), int(args.make[0]))
        return
    if args.child:
        child(args.child[0], args.child[1], args.workers)
        return
    root_ctx = tempfile.TemporaryDirectory(prefix="her2-tiling-bench-") if not args.keep else None
    root = Path(args.keep or root_ctx.name)
    print(f"{'size':>12} {'tiles':>6} {'raw tiles/s':>12} {'tile tiles/s':>13} {'ratio':>6} "
          f"{'peak MB raw':>12} {'peak MB tile':>13}")
    for size in args.sizes:
        # slides are made in their own process: Linux carries a parent's peak RSS into its children
        subprocess.run([sys.executable, __file__, "--make", str(size), str(root / f"slides_{size}")], check=True)
        cases = root / f"slides_{size}" / "cases.csv"
        out = root / f"dataset_{size}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        res = subprocess.run([sys.executable, __file__, "--child", str(cases), str(out),
                              "--workers", str(args.workers)], capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{size:>5}x{size:<6} {r['tiles']:>6} {r['raw_tiles_per_s']:>12.2f} {r['core_tiles_per_s']:>13.2f} "
              f"{r['core_tiles_per_s'] / r['raw_tiles_per_s']:>6.2f} {r['peak_rss_mb_raw']:>12.0f} "
              f"{r['peak_rss_mb']:>13.0f}", flush=True)
    if root_ctx is not None:
        root_ctx.cleanup()


if __name__ == "__main__":
    main()
