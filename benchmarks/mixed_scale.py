"""Mixed model at the study's scale: `her2 compare`'s fit against lme4 + lmerTest, same tables.

Three tables of per-image scores, models crossed with the same test tiles:
    6k    2 frameworks x 2 training datasets x 3 models x 500 tiles   (the issue's table)
    36k   6 models (3 GAN, 3 DM) x 5,980 tiles                         (HER2match test set)
    108k  6 models x 3 training datasets (18 trained models) x 5,980 tiles
For each, the study's  ssim ~ framework * dataset + (1|model) + (1|image)  is fitted
  (a) by her2core (fit_metric: design, REML fit, Satterthwaite df and the likelihood-ratio
      refits), in a fresh Python, and
  (b) by lme4::lmer + lmerTest's summary (Satterthwaite df) in a fresh R (Rscript),
timing the fit inside each process (loading libraries and reading the table are not timed)
and taking each process's peak resident memory from /usr/bin/time. Prints both side by side with ratios and
the largest differences of the estimates. The machine may be shared: times are indicative.

    python benchmarks/mixed_scale.py [--sizes 6k 36k 108k] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {  # name -> (architectures per framework, training datasets, tiles)
    "6k": (3, 2, 500),
    "36k": (3, 1, 5980),
    "108k": (3, 3, 5980),
}


def write_tables(root: Path, archs_per_fw: int, n_datasets: int, n_tiles: int, seed: int) -> list:
    """One per_image.csv per trained model; every model scores the same test tiles."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    tile_effect = rng.normal(0, 0.05, n_tiles)
    datasets = ["bci", "her2match_consecutive", "her2match_same"][-n_datasets:]
    tiles = [f"tile{i:05d}" for i in range(n_tiles)]
    dirs = []
    for fw in ("dm", "gan"):
        for a in range(archs_per_fw):
            for j, ds in enumerate(datasets):
                y = (0.55 + 0.03 * (fw == "gan") + 0.02 * j - 0.01 * j * (fw == "gan")
                     + rng.normal(0, 0.02) + tile_effect + rng.normal(0, 0.03, n_tiles))
                d = root / f"{fw}{a}_{ds}"
                d.mkdir(parents=True)
                pd.DataFrame({"image": tiles, "model": f"{fw}{a}", "framework": fw, "dataset": ds,
                              "test_set": "her2match/test", "ssim": y}).to_csv(
                    d / "per_image.csv", index=False, float_format="%.17g")
                dirs.append(str(d))
    return dirs


def child(dirs_file: str) -> None:
    """Fit in this (fresh) process; print the fit's seconds and results as JSON."""
    import patsy  # noqa: F401 - libraries loaded before the clock, as R's library() calls
    import scipy.optimize
    import scipy.stats  # noqa: F401

    import her2core.evaluation.lmm  # noqa: F401
    from her2core.evaluation.mixed import fit_metric, load_tables

    df = load_tables(json.loads(Path(dirs_file).read_text()))
    t0 = time.perf_counter()
    fit = fit_metric(df, "ssim")
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "rows": fit["rows"], "variances": fit["variances"],
                      "formula": fit["formula"], "n": fit["n"]}))


def ours(dirs_file: Path) -> dict:
    cmd = ["/usr/bin/time", "-f", "HER2_MAXRSS_KB=%M", sys.executable, __file__, "--child",
           str(dirs_file)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["peak_rss_mb"] = next(int(ln.split("=")[1]) for ln in r.stderr.splitlines()
                              if ln.startswith("HER2_MAXRSS_KB=")) / 1024.0
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return 0

    from her2core.evaluation.mixed import load_tables
    from her2core.evaluation.rlme4 import fit_lme4, unavailable

    why = unavailable()
    if why:
        print(f"lme4 reference unavailable: {why}")
    lines = []
    for name in args.sizes:
        with tempfile.TemporaryDirectory(prefix="her2_mixed_") as tmp:
            tmp = Path(tmp)
            dirs = write_tables(tmp / "evals", *SIZES[name], args.seed)
            (tmp / "dirs.json").write_text(json.dumps(dirs))
            a = ours(tmp / "dirs.json")
            print(f"{name}: {a['n']} rows, {a['formula']}", flush=True)
            print(f"  her2core: fit {a['seconds']:.2f} s, peak RSS {a['peak_rss_mb']:.0f} MB",
                  flush=True)
            if why:
                continue
            df = load_tables(dirs).rename(columns={"model": "model_name", "model_id": "model"})
            df["image"] = df["image_id"]
            rhs = a["formula"].split("~")[1].split("+ (1|")[0].strip()
            levels = {f: sorted(df[f].unique()) for f in ("framework", "dataset") if f in rhs}
            levels |= {"model": sorted(df.model.unique()), "image": sorted(df.image.unique())}
            b = fit_lme4(df, a["formula"], levels, measure_memory=True)
            print(f"  lme4 {b['lme4']} + lmerTest {b['lmerTest']}: fit {b['seconds']:.2f} s, "
                  f"peak RSS {b['peak_rss_mb']:.0f} MB", flush=True)
            est = np.array([r["estimate"] for r in a["rows"]])
            se = np.array([r["std_error"] for r in a["rows"]])
            p = np.array([r["p_value"] for r in a["rows"]])
            d_est = np.max(np.abs(est - b["estimate"]) / np.abs(b["estimate"]))
            d_se = np.max(np.abs(se / np.array(b["std_error"]) - 1))
            d_p = np.max(np.abs(np.log10(p) - np.log10(b["p_value"])))
            d_var = max(abs(a["variances"][k] / v - 1) for k, v in b["variances"].items() if v > 0)
            lines.append(f"{name:>5} {a['n']:>7} {a['seconds']:>8.2f} {b['seconds']:>8.2f} "
                         f"{b['seconds'] / a['seconds']:>6.1f}x {a['peak_rss_mb']:>7.0f} "
                         f"{b['peak_rss_mb']:>7.0f} {b['peak_rss_mb'] / a['peak_rss_mb']:>5.1f}x "
                         f"{d_est:>9.1e} {d_se:>8.1e} {d_p:>8.1e} {d_var:>8.1e}")
    if lines:
        print("\nsize    rows  ours s   lme4 s  lme4/ours  ours MB lme4 MB ratio  "
              "max dbeta/beta  dSE  dlog10p  dvar/var")
        print("\n".join(lines))
        print("(one shared machine: times indicative; peak RSS is the whole process, interpreter "
              "and libraries included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
