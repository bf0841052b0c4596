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
    virtual_her2.confidence.ome.tif, virtual_her2.confidence_rois.json[, .geojson]
                          with `confidence`: the confidence pyramid on the virtual slide's grid
                          and its per-ROI summaries (`inference.confidence_out`)
    DONE                  written last; records the model's weights fingerprint and the
                          settings; a case whose DONE matches is skipped on re-run, one made
                          by another model or settings is refused unless `overwrite`
While a case is under way, `.virtual.json` (its virtual slide is finished) and `.confidence.json`
(its confidence was begun with these settings) let a killed batch resume inside the case.
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
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from her2core.errors import UserError
from her2core.inference.confidence import ConfidenceSettings
from her2core.inference.confidence_out import (
    confidence_files,
    confidence_translator,
    translate_slide_confidence,
)
from her2core.inference.options import InferenceOptions
from her2core.inference.slide import Team, translate_slide
from her2core.tiling.cases import Case, read_cases_csv
from her2core.util.atomic import write_json
from her2core.util.progress import Progress, ensure

VIRTUAL_NAME = "virtual_her2.ome.tif"
ROIS_NAME = "rois.geojson"
METRICS_NAME = "metrics.json"
DONE_NAME = "DONE"
VIRTUAL_MARKER = ".virtual.json"  # stage markers of a case under way (removed with its DONE)
CONFIDENCE_MARKER = ".confidence.json"


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


def run_batch(run, cases_csv: str | Path, out_dir: str | Path,
              options: InferenceOptions | None = None, *, metric_tile: int = 256,
              confidence: ConfidenceSettings | None = None, runs=(),
              progress: Progress | None = None, team: Team | None = None,
              overwrite: bool = False) -> list[dict]:
    """Translate (and score) every case of `cases_csv` into `out_dir`; returns one summary per case.

    `options`: how each slide is translated (`InferenceOptions`). `confidence`: also the
    confidence pyramid beside each virtual slide (`runs`: ensemble members). `progress` hears
    each case's tiles (stages prefixed with the case) and may cancel. `team`: default from
    torchrun's environment (a single process otherwise). `overwrite`: redo the cases whose DONE
    was written by another model or other settings.
    """
    import contextlib

    from her2core.inference.model import load_translator
    from her2core.util.outputs import locked

    o = options or InferenceOptions()
    cleanup = lambda: None
    if team is None:
        team, cleanup = distributed_team()
    try:
        cases = read_cases(cases_csv)
        out_dir = Path(out_dir)
        with locked(out_dir, "her2 batch") if team.rank == 0 else contextlib.nullcontext():
            translator = load_translator(run, device=o.device, steps=o.steps,
                                         precision=o.precision, scheduler=o.scheduler)
            job = {**{k: v for k, v in translator.describe().items() if k not in ("model", "run")},
                   **o.to_json("seed", "batch_size", "work_mpp", "tile", "overlap"),
                   "metric_tile": int(metric_tile)}
            conf_translator = None
            if confidence is not None:
                conf_translator = confidence_translator(translator, o, settings=confidence,
                                                        runs=runs)
                described = conf_translator.describe()
                job["confidence"] = {k: described[k] for k in ("confidence", "ensemble_sha256")}
            pending = _pending(cases, out_dir, job, overwrite)
            summary = [{"case": c.case, "status": "skipped (DONE)"} for c in cases
                       if c.case not in pending]
            team.barrier()  # every rank has decided on the same pending list before anyone writes
            if team.rank == 0:
                for s in summary:
                    print(f"{s['case']}: done before, skipped")
            if pending:
                summary += _translate_cases(translator, conf_translator, pending, out_dir, job,
                                            team, o, metric_tile=metric_tile,
                                            progress=ensure(progress))
            return summary
    finally:
        cleanup()


@dataclass(frozen=True)
class _Pending:
    """A case to (re)do, and which of its stages a killed run already finished for this job."""

    case: Case
    keep_virtual: bool = False  # the virtual slide of this job is there (its stage marker)
    keep_confidence: bool = False  # the confidence stage was begun for these settings: resume it


def _virtual_job(job: dict) -> dict:
    return {k: v for k, v in job.items() if k != "confidence"}


def _read_dict(path: Path) -> dict:
    """A JSON object from `path`, or {} when it is missing or not one (a marker half-written)."""
    import json

    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _drop_confidence(virtual: Path) -> None:
    """A redone virtual slide's old confidence outputs (and carrier) no longer describe it."""
    files = confidence_files(virtual)
    for p in (files.pyramid, files.carrier, files.rois_json, files.rois_geojson):
        p.unlink(missing_ok=True)


def _pending(cases: list[Case], out_dir: Path, job: dict, overwrite: bool) -> dict[str, _Pending]:
    """The cases to translate, by case id, in CSV order: no DONE, or a DONE without the
    confidence now asked for (the virtual slide is kept), or (with `overwrite`) a DONE of another
    model/settings. A DONE with confidence also serves a batch without it. Without a DONE, the
    stage markers of a killed run say what is kept: `.virtual.json` (the finished virtual slide)
    and `.confidence.json` (the confidence stage begun with the same settings: it resumes)."""
    import json

    want = json.loads(json.dumps(job, sort_keys=True))
    want_virtual = _virtual_job(want)
    pending: dict[str, _Pending] = {}
    other = []
    for c in cases:
        case_dir = out_dir / c.case
        if (case_dir / DONE_NAME).exists():
            was = _read_dict(case_dir / DONE_NAME).get("job")
            if was == want or ("confidence" not in want and isinstance(was, dict)
                               and _virtual_job(was) == want):
                continue
            if (isinstance(was, dict) and "confidence" in want and "confidence" not in was
                    and was == want_virtual and (case_dir / VIRTUAL_NAME).exists()):
                pending[c.case] = _Pending(c, keep_virtual=True)
                continue
            other.append(c)
            if overwrite:
                pending[c.case] = _Pending(c)
            continue
        keep_virtual = (_read_dict(case_dir / VIRTUAL_MARKER).get("job") == want_virtual
                        and (case_dir / VIRTUAL_NAME).exists())
        keep_conf = (keep_virtual and "confidence" in want and _read_dict(
            case_dir / CONFIDENCE_MARKER).get("confidence") == want["confidence"])
        pending[c.case] = _Pending(c, keep_virtual, keep_conf)
    if other and not overwrite:
        names = ", ".join(c.case for c in other[:3]) + (" ..." if len(other) > 3 else "")
        raise UserError(f"{out_dir}: case(s) {names} were translated by another model or other "
                        "settings (their DONE differs); pass --overwrite to redo them or choose "
                        "another --out")
    return pending


def _translate_cases(translator, conf_translator, pending: dict[str, _Pending], out_dir: Path,
                     job: dict, team: Team, options: InferenceOptions, *, metric_tile: int,
                     progress: Progress) -> list[dict]:
    summary = []
    for i, p in enumerate(pending.values()):
        case, leader = p.case, i % team.world
        case_dir = out_dir / case.case
        virtual_path = case_dir / VIRTUAL_NAME
        is_leader = team.rank == leader
        if is_leader:  # a case being redone is not done until its new DONE
            if p.keep_virtual:  # (its old DONE vouched for the virtual slide: now the marker does)
                write_json(case_dir / VIRTUAL_MARKER, {"job": _virtual_job(job)})
            else:
                (case_dir / VIRTUAL_MARKER).unlink(missing_ok=True)
                _drop_confidence(virtual_path)
            (case_dir / DONE_NAME).unlink(missing_ok=True)
        # only the case's leader shows its bars (the other ranks' tiles are counted there)
        listener = progress.within(case.case) if is_leader else Progress(
            should_stop=lambda: progress.cancelled)
        try:
            # a bad case (no mpp, ROI off the slide, ...) fails the same way on every rank,
            # before any barrier: it is reported and the batch goes on
            if p.keep_virtual:
                virtual = virtual_path if is_leader else None
            else:
                virtual = translate_slide(translator, case.he, virtual_path, options,
                                          roi=case.rois, overwrite=True, progress=listener,
                                          team=team, leader=leader)
                if virtual is not None:
                    write_json(case_dir / VIRTUAL_MARKER, {"job": _virtual_job(job)})
            if conf_translator is not None:
                if is_leader and not p.keep_confidence:
                    write_json(case_dir / CONFIDENCE_MARKER, {"confidence": job["confidence"]})
                translate_slide_confidence(conf_translator, case.he, virtual_path, options,
                                           roi=case.rois, overwrite=not p.keep_confidence,
                                           progress=listener, team=team, leader=leader)
            if virtual is not None:
                summary.append(_finish_case(case, case_dir, virtual, metric_tile, job))
        except UserError as exc:
            if is_leader:
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
    if "confidence" in job:
        files = confidence_files(virtual)
        outputs += [files.pyramid.name, files.rois_json.name]
        if case.rois is not None:
            outputs.append(files.rois_geojson.name)
    result: dict = {"case": case.case, "status": "translated"}
    if case.her2_registered is not None:
        metrics = slide_metrics(virtual, case.her2_registered, case.rois, tile=metric_tile)
        write_json(case_dir / METRICS_NAME, metrics)
        outputs.append(METRICS_NAME)
        result["metrics"] = metrics.get("mean", {})
    write_json(case_dir / DONE_NAME, {"case": case.case, "slide": str(case.he), "job": job,
                                      "outputs": outputs, "region_xywh": [x, y, w, h]})
    for marker in (VIRTUAL_MARKER, CONFIDENCE_MARKER):  # DONE says it all now
        (case_dir / marker).unlink(missing_ok=True)
    print(f"{case.case}: wrote {case_dir}")
    return result
