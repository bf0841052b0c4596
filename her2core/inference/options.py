"""The settings of one inference job, written once: `her2 translate`, `her2 batch` and napari.

    opts = InferenceOptions(steps=20, seed=3, work_mpp=0.5)
    translate_slide(run, "he.ome.tif", "virtual.ome.tif", opts, roi=features)

Why one dataclass: the same dozen settings (sampling, batching, grid, device) travel from every
front end through `translate_slide`, the tile-folder and confidence functions and the batch
pipeline; here they are checked once (one `UserError` line naming the option) and described once
(`to_json`) for provenance records. What a job reads and writes (run, slide, output, ROI, region,
overwrite, progress, ranks) stays in the functions' own arguments: those are the job, these are
how it runs. The command line builds one with `her2core.cli.options.inference_options`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from her2core.errors import UserError
from her2core.util.device import PRECISIONS

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64
DEFAULT_BATCH_SIZE = 8
DEFAULT_PYRAMID_TILE = 256
SEED_MAX = 2**32 - 1
#: how the K predictions of a confidence map are drawn (`confidence.resolve_method`)
CONFIDENCE_METHODS = ("auto", "seeds", "tta", "dropout", "tta+dropout")


@dataclass(frozen=True)
class InferenceOptions:
    """How one inference job runs. Every field has the command line's default.

    steps: sampling steps (diffusion models; None: the run's). scheduler: the diffusion sampler
    (None: the reference's). batch_size: tiles per model call. seed: the job's seed (every batch's
    seed derives from it and the batch's place). slide_mpp: the slide's µm/px where its file does
    not record it. work_mpp: µm/px to translate at (None: the run's). tile, overlap: tile side
    and blending overlap in working pixels. device: "cpu", "cuda:1", ... (None: the best).
    precision: auto | fp32 | bf16 | fp16. pyramid_tile: the output pyramid's tile side.
    workers: the slide pipeline's CPU threads, one pool for reading, blending and encoding
    (None: the cores, up to 8).
    Each field is checked on its own here; `overlap` against `tile` where a slide is planned
    (`region.plan_region`), since tile folders use neither.
    """

    steps: int | None = None
    scheduler: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    slide_mpp: float | None = None
    work_mpp: float | None = None
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    device: str | None = None
    precision: str = "auto"
    pyramid_tile: int = DEFAULT_PYRAMID_TILE
    workers: int | None = None

    def __post_init__(self):
        if self.device is not None and not isinstance(self.device, str):
            object.__setattr__(self, "device", str(self.device))  # a torch.device, kept as text
        _whole("--steps", self.steps, 1, optional=True)
        _whole("--batch-size", self.batch_size, 1)
        _whole("--seed", self.seed, 0, SEED_MAX)
        _whole("--tile", self.tile, 1)
        _whole("--overlap", self.overlap, 0)
        _whole("pyramid_tile", self.pyramid_tile, 16)
        _whole("workers", self.workers, 1, optional=True)
        for name, value in (("--mpp", self.slide_mpp), ("--work-mpp", self.work_mpp)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)
                                          and value > 0):
                raise UserError(f"{name} {value!r}: give microns per pixel, a number > 0")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision}: use {', '.join(PRECISIONS)}")
        if self.scheduler is not None and not (isinstance(self.scheduler, str) and self.scheduler):
            raise UserError(f"--scheduler {self.scheduler!r}: give a sampler name")

    def replace(self, **changes) -> InferenceOptions:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_json(self, *only: str) -> dict:
        """The settings as JSON values (all of them, or the fields named in `only`, in that
        order): provenance records pick the keys they have always had."""
        values = dataclasses.asdict(self)
        unknown = [k for k in only if k not in values]
        if unknown:
            raise KeyError(f"InferenceOptions has no field {unknown[0]!r}")
        return {k: values[k] for k in (only or values)}


def _whole(name: str, value, lo: int, hi: int | None = None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
            hi is not None and value > hi):
        bound = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise UserError(f"{name} {value!r}: must be a whole number {bound}")
