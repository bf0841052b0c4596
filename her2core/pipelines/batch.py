"""Virtual HER2 for many slides from a CSV of cases: per-slide folders, resumable, torchrun-shared.

CASES.csv is the cases CSV of `her2 tile` (`her2core.tiling.cases`); here only `he` is required:
    he               H&E slide to translate
    rois             QuPath GeoJSON of the ROIs to translate (optional; default the whole slide)
    her2_registered  the real HER2 slide on the H&E grid (optional; gives metrics.json)
    case             case id, the output folder's name (optional; default the slide's file stem)

Per case, OUT/<case>/ receives
    virtual_her2.ome.tif  pyramidal OME-TIFF at the model's working mpp, origin = region origin
    rois.geojson          the ROIs used (or the translated rectangle when no ROI was given)
    metrics.json          when `her2` is given: evaluation metrics on ROI tiles (see `metrics`)
    DONE                  written last; records the model's weights fingerprint and the
                          settings; a case whose DONE matches is skipped on re-run, one made
                          by another model or settings is refused unless `overwrite`
OUT is locked while a batch writes it (`her2core.util.outputs`; by rank 0 under torchrun).
A case with a problem the user can fix (slide without mpp, ROI outside the slide, ...)
is reported on one line and skipped; the others go on (the command then exits 2).

Under `torchrun --nproc-per-node N` every rank runs this same function: the
ranks agree on the pending cases, translate the tile rows of each slide
together (row k on rank k mod N, see `slide.Team`), and the case's leader rank
(case index mod N) blends, writes and scores it while the others go on to the
next slide. The outputs are byte-identical to a single process. All ranks must
see OUT on one file system.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from her2core.errors import UserError
from her2core.inference.slide import DEFAULT_OVERLAP, DEFAULT_TILE, Team, translate_slide
from her2core.tiling.cases import Case, read_cases_csv
from her2core.util.atomic import write_json

VIRTUAL_NAME = "virtual_her2.ome.tif"
ROIS_NAME = "rois.geojson"
METRICS_NAME = "metrics.json"
DONE_NAME = "DONE"


def read_cases(csv_path: str | Path) -> list[Case]:
    """The cases CSV of `her2 tile` (see `her2core.tiling.cases`); only `he` is required here."""
    return read_cases_csv(csv_path, paired=False)


def distributed_team() -> tuple[Team, Any]:
    """A Team over torchrun's ranks (gloo barriers), or a single-process Team; plus a cleanup."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Team(), lambda: None
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=timedelta(hours=12))
        created = True
    group = dist.new_group(backend="gloo", timeout=timedelta(hours=12))
    team = Team(dist.get_rank(), dist.get_world_size(), lambda: dist.barrier(group=group))

    def cleanup():
        if created and dist.is_initialized():
            dist.barrier(group=group)
            dist.destroy_process_group()

    return team, cleanup


def run_batch(run, cases_csv: str | Path, out_dir: str | Path, *, steps: int | None = None,
              batch_size: int = 8, seed: int = 0, work_mpp: float | None = None,
              tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, metric_tile: int = 256,
              device=None, precision: str = "auto", progress: bool = True,
              team: Team | None = None, overwrite: bool = False) -> list[dict]:
    """Translate (and score) every case of `cases_csv` into `out_dir`; returns one summary per case.

    `team`: default from torchrun's environment (a single process otherwise). `overwrite`:
    redo the cases whose DONE was written by another model or other settings.
    """
    import contextlib

    from her2core.inference.model import load_translator
    from her2core.util.outputs import locked

    cleanup = lambda: None
    if team is None:
        team, cleanup = distributed_team()
    try:
        cases = read_cases(cases_csv)
        out_dir = Path(out_dir)
        with locked(out_dir, "her2 batch") if team.rank == 0 else contextlib.nullcontext():
            translator = load_translator(run, device=device, steps=steps, precision=precision)
            job = {**{k: v for k, v in translator.describe().items() if k not in ("model", "run")},
                   "seed": int(seed), "batch_size": int(batch_size), "work_mpp": work_mpp,
                   "tile": int(tile), "overlap": int(overlap), "metric_tile": int(metric_tile)}
            pending = _pending(cases, out_dir, job, overwrite)
            summary = [{"case": c.case, "status": "skipped (DONE)"} for c in cases if c not in pending]
            team.barrier()  # every rank has decided on the same pending list before anyone writes
            if team.rank == 0:
                for s in summary:
                    print(f"{s['case']}: done before, skipped")
            if pending:
                summary += _translate_cases(translator, pending, out_dir, job, team, batch_size=batch_size,
                                            seed=seed, work_mpp=work_mpp, tile=tile, overlap=overlap,
                                            metric_tile=metric_tile, progress=progress)
            return summary
    finally:
        cleanup()


def _pending(cases: list[Case], out_dir: Path, job: dict, overwrite: bool) -> list[Case]:
    """The cases to translate: no DONE, or (with `overwrite`) a DONE of another model/settings."""
    import json

    want = json.loads(json.dumps(job, sort_keys=True))
    pending, other = [], []
    for c in cases:
        done = out_dir / c.case / DONE_NAME
        if not done.exists():
            pending.append(c)
            continue
        try:
            was = json.loads(done.read_text()).get("job")
        except (OSError, ValueError, AttributeError):
            was = None
        if was != want:
            other.append(c)
            if overwrite:
                pending.append(c)
    if other and not overwrite:
        names = ", ".join(c.case for c in other[:3]) + (" ..." if len(other) > 3 else "")
        raise UserError(f"{out_dir}: case(s) {names} were translated by another model or other "
                        "settings (their DONE differs); pass --overwrite to redo them or choose "
                        "another --out")
    return [c for c in cases if c in pending]


def _translate_cases(translator, pending: list[Case], out_dir: Path, job: dict, team: Team, *,
                     batch_size: int, seed: int, work_mpp, tile: int, overlap: int,
                     metric_tile: int, progress: bool) -> list[dict]:
    summary = []
    for i, case in enumerate(pending):
        leader = i % team.world
        case_dir = out_dir / case.case
        if team.rank == leader:  # a case being redone is not done until its new DONE
            (case_dir / DONE_NAME).unlink(missing_ok=True)
        try:
            # a bad case (no mpp, ROI off the slide, ...) fails the same way on every rank,
            # before any barrier: it is reported and the batch goes on
            virtual = translate_slide(
                translator, case.he, case_dir / VIRTUAL_NAME, roi=case.rois,
                batch_size=batch_size, seed=seed, work_mpp=work_mpp, tile=tile,
                overlap=overlap, overwrite=True, progress=progress and team.rank == leader,
                team=team, leader=leader)
            if virtual is not None:
                summary.append(_finish_case(case, case_dir, virtual, metric_tile, job))
        except UserError as exc:
            if team.rank == leader:
                print(f"{case.case}: error: {exc}", file=sys.stderr)
                summary.append({"case": case.case, "status": f"error: {exc}"})
    return summary


def _finish_case(case: Case, case_dir: Path, virtual: Path, metric_tile: int, job: dict) -> dict:
    """ROIs used, metrics against the real HER2 (if any), then the DONE marker."""
    from her2core.evaluation.slide_metrics import slide_metrics
    from her2core.qupath.geojson import Feature, read_features, write_features
    from her2core.slide import open_slide

    with open_slide(virtual) as v:
        props = v.properties
    x, y, w, h = props["region_xywh"]
    if case.rois is not None:
        features = read_features(case.rois)
    else:
        from shapely.geometry import box

        features = [Feature(geometry=box(x, y, x + w, y + h), name="translated region")]
    write_features(case_dir / ROIS_NAME, features)
    outputs = [VIRTUAL_NAME, ROIS_NAME]
    result: dict = {"case": case.case, "status": "translated"}
    if case.her2_registered is not None:
        metrics = slide_metrics(virtual, case.her2_registered, case.rois, tile=metric_tile)
        write_json(case_dir / METRICS_NAME, metrics)
        outputs.append(METRICS_NAME)
        result["metrics"] = metrics.get("mean", {})
    write_json(case_dir / DONE_NAME, {"case": case.case, "slide": str(case.he), "job": job,
                                      "outputs": outputs, "region_xywh": [x, y, w, h]})
    print(f"{case.case}: wrote {case_dir}")
    return result
