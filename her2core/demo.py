"""`her2 demo`: the whole chain on embedded data, ending in one HTML report.

It reproduces, in miniature, the HER2match study's central finding: a model
trained on same-section (cell-to-cell aligned) pairs beats the same model
trained on consecutive-section pairs, on the same aligned test tiles. Every
stage calls the same her2core functions as the `her2` subcommands, and prints
the equivalent command so that users can script it themselves.

Stages (outputs under OUT/):
  1. slides/            `her2 sample`: synthetic cases in both section modes + the real-H&E case
  2. registration/      `her2 register` (+ review) of every HER2 slide onto its H&E slide
  3. datasets/{same,consecutive}  `her2 tile`: same cases, same splits, two datasets
  4. runs/              `her2 train`: Pyramid pix2pix (tiny, two seeds) and BBDM (tiny) on each dataset
  5. virtual/           `her2 translate`: a held-out synthetic region and the real H&E region
  6. eval/, compare/    `her2 evaluate` on the aligned test tiles, `her2 compare` (mixed effects)
  7. report.html        `her2 report`: review, examples, tables, figures, mixed effects, slides

The demo fails loudly (exit 1) if the same-section model does not beat the
consecutive-section model in SSIM.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.util.progress import Progress, tqdm_bars


@dataclass
class DemoConfig:
    """Sizes and budgets of the demo; `quick()` is the short variant."""

    seed: int = 0
    cases: int = 6                      # synthetic cases (each in both section modes)
    scores: tuple = (1, 3)              # HER2 scores; each needs >= 3 cases for train/val/test
    slide_px: int = 2048                # synthetic slide side at 0.25 µm/px
    tile_px: int = 256                  # source tile side at 0.25 µm/px ...
    out_px: int = 128                   # ... written at 0.5 µm/px
    gan_steps: int = 400
    gan_seeds: int = 2                  # Pyramid pix2pix runs per dataset (seeds seed, seed+1, ...)
    dm_model: str = "bbdm"
    dm_steps: int = 150
    dm_sample_steps: int = 2            # BBDM at 1-2 steps is as good as at 20 on these tiles (benchmarks)
    real_region_px: int = 1024          # side of the translated real-H&E region (level 0)
    synthetic_region_px: int = 1536     # side of the translated held-out synthetic region (level 0)
    # FID/KID need an Inception pass per tile (~0.5 s on a CPU): only for these runs' main evaluation.
    set_metric_runs: tuple = ("p2p_same", "p2p_consecutive")

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(cases=6, slide_px=2048, gan_steps=300, dm_steps=100, dm_sample_steps=2,
                   real_region_px=512, synthetic_region_px=1024, set_metric_runs=())


# Consecutive sections never align cell to cell: like BCI, keep tiles whose tissue aligns at
# ~20 µm (shift measured on blurred hematoxylin), not at 5 µm.
_CONSECUTIVE_QC = {"max_shift_um": 20.0, "shift_smooth_um": 6.0}
_CONSECUTIVE_QC_FLAGS = [f"--{k.replace('_', '-')} {v:g}" for k, v in _CONSECUTIVE_QC.items()]


SUMMARY_NAME = "demo_summary.json"
SUMMARY_FORMAT = "her2-demo/1"


@dataclass
class StageLog:
    name: str
    command: str
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


class Demo:
    def __init__(self, out: Path, config: DemoConfig, log=print):
        self.out = Path(out)
        self.cfg = config
        self.log = log
        self.stages: list[StageLog] = []

    # -- bookkeeping -------------------------------------------------------------------------
    def _stage(self, name: str, command: str) -> StageLog:
        n = len(self.stages) + 1
        self.log(f"\n[{n}/7] {name}\n      $ {command}")
        st = StageLog(name, command)
        st._t0 = time.perf_counter()  # type: ignore[attr-defined]
        self.stages.append(st)
        return st

    def _done(self, st: StageLog, **info) -> None:
        st.seconds = time.perf_counter() - st._t0  # type: ignore[attr-defined]
        st.info.update(info)
        self.log(f"      done in {st.seconds:.0f} s")

    # -- 1. slides ---------------------------------------------------------------------------
    def sample(self) -> None:
        from her2core.sample import write_cases

        c = self.cfg
        st = self._stage("sample slides", f"her2 sample --out {self.out/'slides'} --cases {c.cases} "
                                          f"--mode both --real --seed {c.seed} --size {c.slide_px}")
        slides = self.out / "slides"
        expected = [slides / f"case{i:02d}_{m}" for i in range(c.cases) for m in ("same", "consecutive")]
        expected.append(slides / "cmu1_real")
        done_file = slides / "DONE.json"
        settings = {"cases": c.cases, "seed": c.seed, "size": c.slide_px, "scores": list(c.scores)}
        if done_file.exists() and json.loads(done_file.read_text()) == settings:
            self.case_dirs = expected  # resume: already written with these settings
            self.log("      already written (resuming)")
        else:
            wrote = Progress(lambda _stage, done, total: self.log(f"      wrote case {done} of {total}"))
            self.case_dirs = write_cases(slides, cases=c.cases, seed=c.seed, mode="both",
                                         size=c.slide_px, real=True, scores=c.scores, progress=wrote)
            from her2core.util.atomic import write_json

            write_json(done_file, settings)
        self._done(st, cases=len(self.case_dirs))

    # -- 2. registration ---------------------------------------------------------------------
    def register(self) -> None:
        from her2core.registration.pipeline import register
        from her2core.sample import load_truth

        first = self.case_dirs[0]
        st = self._stage("register + review",
                         f"her2 register {first/'he.ome.tif'} {first/'her2.ome.tif'} "
                         f"--out {self.out/'registration'/first.name}")
        self.log(f"      (likewise for each of the {len(self.case_dirs)} pairs)")
        self.registrations: dict[str, dict] = {}
        for d in self.case_dirs:
            truth = load_truth(d / "truth.json")
            out = self.out / "registration" / d.name
            if (out / "transform.json").exists() and (out / "her2_registered.ome.tif").exists():
                review = json.loads((out / "review.json").read_text()) if (out / "review.json").exists() else {}
            else:
                res = register(d / "he.ome.tif", d / "her2.ome.tif", out, overwrite=True)  # its own, unfinished
                review = res.review or {}
            summ = review.get("summary", {})
            self.registrations[d.name] = {
                "dir": out, "truth": truth, "review": review,
                "median_um": summ.get("median_shift_um"), "p90_um": summ.get("p90_shift_um"),
                "flagged": summ.get("flagged"), "regions": summ.get("regions"),
                "no_match": summ.get("no_match", 0),
            }
            r = self.registrations[d.name]
            self.log(f"      {d.name}: residual median {_f(r['median_um'])} µm, p90 {_f(r['p90_um'])} µm, "
                     f"{r['flagged']}/{r['regions']} measured regions flagged, "
                     f"{r['no_match']} without a reliable cell-level match")
        self._done(st, pairs=len(self.registrations))

    # -- 3. datasets -------------------------------------------------------------------------
    def tile(self) -> None:
        from her2core.tiling import QCConfig, TileConfig, assign_splits, build_dataset, save_splits
        from her2core.tiling.cases import read_cases_csv, write_cases_csv

        c = self.cfg
        synthetic = [d for d in self.case_dirs if d.name != "cmu1_real"]
        scores = {}
        for d in synthetic:
            base = d.name.rsplit("_", 1)[0]
            scores[base] = self.registrations[d.name]["truth"]["her2_score"]
        splits = assign_splits(scores, seed=c.seed)
        splits_file = self.out / "datasets" / "splits.json"
        save_splits(splits_file, splits)
        st = self._stage("tile two datasets (same splits)",
                         f"her2 tile --cases {self.out/'datasets'/'cases_same.csv'} "
                         f"--out {self.out/'datasets'/'same'} --splits {splits_file} --seed {c.seed} "
                         f"--tile-px {c.tile_px} --source-mpp 0.25 --out-px {c.out_px} --out-mpp 0.5")
        self.log("      (likewise cases_consecutive.csv -> consecutive, with "
                 f"{' '.join(_CONSECUTIVE_QC_FLAGS)})")
        self.datasets = {}
        for mode in ("same", "consecutive"):
            qc = QCConfig() if mode == "same" else QCConfig(**_CONSECUTIVE_QC)
            cfg = TileConfig(tile_px=c.tile_px, source_mpp=0.25, out_px=c.out_px, out_mpp=0.5,
                             seed=c.seed, qc=qc)
            rows = []
            for d in synthetic:
                base, m = d.name.rsplit("_", 1)
                if m == mode:
                    reg = self.registrations[d.name]["dir"]
                    rows.append({"case": base, "he": d / "he.ome.tif", "her2_score": scores[base],
                                 "her2_registered": reg / "her2_registered.ome.tif", "mode": mode})
            # The same cases CSV a user would give `her2 tile --cases`, read by the same reader.
            cases = read_cases_csv(write_cases_csv(self.out / "datasets" / f"cases_{mode}.csv", rows))
            root = self.out / "datasets" / mode
            summary = build_dataset(cases, root, cfg, splits=splits)
            self.datasets[mode] = {"root": root, "summary": summary}
            self.log(f"      {mode}: {json.dumps(_counts(summary))}")
        self.splits = splits
        self._done(st, splits=splits)

    # -- 4. training -------------------------------------------------------------------------
    def train(self) -> None:
        from her2core.training import TrainConfig, train

        c = self.cfg
        st = self._stage("train", f"her2 train --model pyramid_pix2pix --data {self.out/'datasets'/'same'} "
                                  f"--preset tiny --max-steps {c.gan_steps} --seed {c.seed} --crop 64 "
                                  f"--checkpoint-every {max(50, c.gan_steps // 4)} "
                                  f"--out {self.out/'runs'/'p2p_same'}")
        self.log(f"      (likewise {c.gan_seeds - 1} more pix2pix seed(s) and {c.dm_model} on each dataset)")
        self.runs = {}
        # Two GAN seeds and one diffusion model per dataset: the mixed-effects model needs more
        # than one model per dataset to tell the dataset effect from model-to-model variation.
        plan = []
        for ds in ("same", "consecutive"):
            plan.append((f"p2p_{ds}", "pyramid_pix2pix", ds, c.gan_steps, c.seed))
            for k in range(1, c.gan_seeds):
                plan.append((f"p2p_seed{k}_{ds}", "pyramid_pix2pix", ds, c.gan_steps, c.seed + k))
            plan.append((f"{c.dm_model}_{ds}", c.dm_model, ds, c.dm_steps, c.seed))
        for name, model, ds, steps, seed in plan:
            run_dir = self.out / "runs" / name
            t0 = time.perf_counter()
            if not (run_dir / "run.json").exists() or not _run_finished(run_dir, steps):
                # Random 64 px crops keep CPU steps short; translation runs on whole tiles.
                with tqdm_bars("step") as progress:
                    train(model, self.datasets[ds]["root"], run_dir, preset="tiny",
                          train_config=TrainConfig(max_steps=steps, seed=seed, crop=64,
                                                   checkpoint_every=max(50, steps // 4)),
                          resume=(run_dir / "run.json").exists(), progress=progress)
            self.runs[name] = {"dir": run_dir, "model": model, "dataset": ds, "steps": steps,
                               "seconds": time.perf_counter() - t0}
            self.log(f"      {name}: {steps} steps in {self.runs[name]['seconds']:.0f} s")
        self._done(st, runs={k: {kk: str(vv) for kk, vv in v.items()} for k, v in self.runs.items()})

    # -- 5. slide translation ----------------------------------------------------------------
    def translate(self) -> None:
        from her2core.inference.options import InferenceOptions
        from her2core.inference.slide import translate_slide
        from her2core.slide import open_slide
        from her2core.util.progress import tqdm_bars

        c = self.cfg
        test_cases = sorted(k for k, v in self.splits.items() if v == "test")
        held_out = self.out / "slides" / f"{test_cases[0]}_same"
        real = self.out / "slides" / "cmu1_real"
        run_dir = self.runs["p2p_same"]["dir"]
        plans = []
        for label, case_dir, side in (("held-out synthetic", held_out, c.synthetic_region_px),
                                      ("real H&E (CMU-1)", real, c.real_region_px)):
            with open_slide(case_dir / "he.ome.tif") as s:
                w, h = s.dimensions
            side = min(side, w, h)
            region = ((w - side) // 2, (h - side) // 2, side, side)
            plans.append((label, case_dir, region, self.out / "virtual" / f"{case_dir.name}_virtual.ome.tif"))
        st = self._stage("translate slide regions", "  &&  ".join(
            f"her2 translate --run {run_dir} --slide {case_dir/'he.ome.tif'} "
            f"--region {','.join(map(str, region))} --seed {c.seed} --out {out} --overwrite"
            for _, case_dir, region, out in plans))
        self.virtual = {}
        for label, case_dir, region, out in plans:
            with tqdm_bars("tile") as bars:
                translate_slide(run_dir, case_dir / "he.ome.tif", out, InferenceOptions(seed=c.seed),
                                region=region, overwrite=True, progress=bars)
            self.virtual[label] = {"case": case_dir, "region": region, "path": out}
        self._done(st, virtual={k: str(v["path"]) for k, v in self.virtual.items()})

    # -- 6. evaluation + comparison ----------------------------------------------------------
    def evaluate(self) -> None:
        from her2core.evaluation import compare
        from her2core.evaluation.evaluate import EvalSettings, evaluate_run

        st = self._stage("evaluate + compare",
                         f"her2 evaluate --run {self.out/'runs'/'p2p_same'} --data {self.out/'datasets'/'same'} "
                         f"--split test --model p2p_same --dataset same --mpp 0.5 --kid-subset-size 50 "
                         f"--out {self.out/'eval'/'p2p_same__on_same'}  &&  "
                         f"her2 compare {self.out/'eval'}/*__on_same --out {self.out/'compare'}")
        self.log("      (likewise every run on both test sets; the comparison uses the aligned tiles)")
        self.evals = {}
        for name, run in self.runs.items():
            for test_ds in ("same", "consecutive"):
                out = self.out / "eval" / f"{name}__on_{test_ds}"
                settings = EvalSettings(model=name, dataset=run["dataset"], mpp=0.5,
                                        set_metrics=test_ds == "same" and name in self.cfg.set_metric_runs,
                                        kid_subset_size=50, kid_subsets=100)
                steps = self.cfg.dm_sample_steps if run["model"] == self.cfg.dm_model else None
                # overwrite: a run trained further since an earlier demo replaces its old tiles
                metrics = evaluate_run(run["dir"], self.datasets[test_ds]["root"], "test", out, settings,
                                       log=lambda m: None, steps=steps, overwrite=True)
                self.evals[(name, test_ds)] = {"dir": out, "set": metrics}
        # The comparison uses the aligned (same-section) test tiles for every model: the
        # consecutive-section targets are themselves misaligned, so they would blur the verdict.
        main = [self.evals[(n, "same")]["dir"] for n in self.runs]
        self.comparison = compare(main, self.out / "compare")
        self._done(st)

    def check_finding(self) -> dict:
        """The study's key finding, in miniature: same-section training beats consecutive in SSIM."""
        import pandas as pd

        a = pd.read_csv(self.evals[("p2p_same", "same")]["dir"] / "per_image.csv")
        b = pd.read_csv(self.evals[("p2p_consecutive", "same")]["dir"] / "per_image.csv")
        merged = a.merge(b, on="image", suffixes=("_same", "_consecutive"))
        diff = merged["ssim_same"] - merged["ssim_consecutive"]
        from scipy.stats import wilcoxon

        p_paired = float(wilcoxon(diff).pvalue) if len(diff) > 5 and np.any(diff != 0) else float("nan")
        effect = _dataset_effect(self.out / "compare" / "mixed_effects.csv")
        finding = {
            "n_test_tiles": len(merged),
            "ssim_same_trained": float(merged["ssim_same"].mean()),
            "ssim_consecutive_trained": float(merged["ssim_consecutive"].mean()),
            "ssim_difference": float(diff.mean()),
            "wins_same": int((diff > 0).sum()),
            "paired_wilcoxon_p": p_paired,
            "mixed_effects_dataset_term": effect,
        }
        self.finding = finding
        return finding

    # -- 7. report ---------------------------------------------------------------------------
    def report(self) -> Path:
        from her2core.demo_report import build_demo_report

        st = self._stage("report", f"her2 report {self.out} --out {self.out/'report.html'}")
        self.write_summary()
        path = build_demo_report(self.out, self.out / "report.html")
        self._done(st, report=str(path))
        return path

    def write_summary(self, seconds: float | None = None) -> Path:
        """demo_summary.json: everything the report shows, paths relative to the demo folder, so
        `her2 report DEMO_FOLDER` rebuilds the page from the folder alone."""
        from her2core.util.atomic import write_json

        def rel(p) -> str:
            p = Path(p)
            return str(p.relative_to(self.out)) if p.is_relative_to(self.out) else str(p)

        state = {
            "format": SUMMARY_FORMAT, "config": asdict(self.cfg), "finding": self.finding,
            "seconds": seconds,
            "stages": [{"name": s.name, "command": s.command, "seconds": s.seconds} for s in self.stages],
            "registrations": {k: {"dir": rel(r["dir"]), "truth": r["truth"], "median_um": r["median_um"],
                                  "p90_um": r["p90_um"], "flagged": r["flagged"],
                                  "no_match": r["no_match"]} for k, r in self.registrations.items()},
            "virtual": {k: {"case": rel(v["case"]), "region": list(v["region"]), "path": rel(v["path"])}
                        for k, v in self.virtual.items()},
            "runs": {k: {"dir": rel(r["dir"]), "model": r["model"], "dataset": r["dataset"],
                         "steps": r["steps"]} for k, r in self.runs.items()},
            "datasets": {k: {"root": rel(d["root"])} for k, d in self.datasets.items()},
            "evals": [{"run": name, "test_set": ds, "dir": rel(e["dir"]), "set": e["set"]}
                      for (name, ds), e in sorted(self.evals.items())],
            "compare": rel(self.out / "compare"),
        }
        write_json(self.out / SUMMARY_NAME, state)
        return self.out / SUMMARY_NAME

    def run(self) -> Path:
        t0 = time.perf_counter()
        self.sample()
        self.register()
        self.tile()
        self.train()
        self.translate()
        self.evaluate()
        self.check_finding()
        path = self.report()
        self.write_summary(seconds=time.perf_counter() - t0)
        return path


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _counts(summary: dict) -> dict:
    for key in ("kept_per_split", "per_split", "splits", "kept"):
        if key in summary:
            return summary[key]
    return {k: v for k, v in summary.items() if isinstance(v, (int, float))}


def _run_finished(run_dir: Path, steps: int) -> bool:
    """True when the run's newest checkpoint has reached `steps` (the demo then skips training)."""
    from her2core.errors import UserError
    from her2core.training.checkpoint import find

    try:
        _, record = find(run_dir / "checkpoints")
    except (UserError, OSError, ValueError, KeyError):
        return False
    return int(record.get("step", -1)) >= steps


def _dataset_effect(csv_path: Path) -> dict | None:
    import pandas as pd

    if not csv_path.exists():
        return None
    df = pd.read_csv(csv_path)
    rows = df[(df["metric"] == "ssim") & df["term"].astype(str).str.contains("dataset")
              & ~df["term"].astype(str).str.contains(":")]
    if rows.empty:
        return None
    r = rows.iloc[0].to_dict()
    return {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in r.items()}


def run_demo(out, *, quick: bool = False, seed: int = 0, log=print) -> Path:
    cfg = DemoConfig.quick() if quick else DemoConfig()
    cfg.seed = seed
    demo = Demo(Path(out), cfg, log=log)
    path = demo.run()
    f = demo.finding
    log("\nKey finding (HER2match, in miniature): Pyramid pix2pix trained on same-section pairs vs "
        "consecutive-section pairs, on the same aligned test tiles:")
    log(f"  SSIM {f['ssim_same_trained']:.3f} vs {f['ssim_consecutive_trained']:.3f} "
        f"(difference {f['ssim_difference']:+.3f}, same-section better on {f['wins_same']}/{f['n_test_tiles']} "
        f"tiles, paired Wilcoxon p = {f['paired_wilcoxon_p']:.2g})")
    eff = f["mixed_effects_dataset_term"]
    if eff:
        from her2core.evaluation.mixed import term_line

        log("  " + term_line(getattr(demo, "comparison", None), eff))
    if not f["ssim_difference"] > 0:
        raise DemoFindingFailed(
            f"same-section training did NOT beat consecutive-section training in SSIM "
            f"({f['ssim_same_trained']:.4f} vs {f['ssim_consecutive_trained']:.4f}); see {path}")
    log(f"\nReport: {path}")
    log("Open the slides in napari:  napari " + str(Path(out) / "slides" / "case00_same") +
        "   (or File > Open Folder; the plugin opens H&E, HER2 and virtual HER2 as aligned layers)")
    log("Open them in QuPath:        her2 qupath project --out " + str(Path(out) / "qupath") +
        " --image " + str(Path(out) / "slides" / "case00_same" / "he.ome.tif") +
        " --registered " + str(Path(out) / "registration" / "case00_same" / "transform.json"))
    return path


class DemoFindingFailed(UserError):
    """The demo's assertion of the study's direction did not hold."""

    exit_code = 1
