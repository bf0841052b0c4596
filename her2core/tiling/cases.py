"""The cases CSV of `her2 tile`: one slide pair per row.

Columns (header required; paths relative to the CSV's folder):

    case             unique case id (used in tile names and splits)
    he               H&E slide
    her2_registered  HER2 slide already resampled onto the H&E grid (`her2 register` output)
      -- or --
    her2, transform  the original HER2 slide and the transform.json that maps it (tiles are
                     warped on the fly; no registered slide needed)
    her2_score       0, 1+, 2+ or 3+ (1, 2, 3 accepted)
    rois             optional QuPath GeoJSON of ROIs on the H&E slide (empty = whole tissue)
    mode             optional free text copied to the manifest (e.g. same / consecutive)
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from her2core.errors import UserError
from her2core.tiling.splits import score_label

_SCORES = {"0", "1+", "2+", "3+"}


@dataclass
class Case:
    case: str
    he: Path
    her2_score: str
    her2_registered: Path | None = None
    her2: Path | None = None
    transform: Path | None = None
    rois: Path | None = None
    mode: str = ""

    def check(self, where: str) -> Case:
        if not self.case or any(c in self.case for c in "/\\ "):
            raise UserError(f"{where}: case id {self.case!r} must be non-empty, without spaces or slashes")
        self.her2_score = score_label(self.her2_score)
        if self.her2_score not in _SCORES:
            raise UserError(f"{where}: her2_score {self.her2_score!r} must be one of 0, 1+, 2+, 3+")
        if self.her2_registered is None and (self.her2 is None or self.transform is None):
            raise UserError(f"{where}: case {self.case} needs her2_registered, or her2 and transform")
        for p in (self.he, self.her2_registered, self.her2, self.transform, self.rois):
            if p is not None and not Path(p).exists():
                raise UserError(f"{where}: case {self.case}: file not found: {p}")
        return self


def read_cases_csv(path: str | Path) -> list[Case]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: cases CSV not found") from None
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise UserError(f"{path}: no cases (a header row and one row per case are needed)")
    missing = {"case", "he", "her2_score"} - set(rows[0])
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}; see `her2 tile --help`")
    base = path.parent

    def p(v):
        v = (v or "").strip()
        return (base / v) if v else None

    cases, seen = [], set()
    for i, r in enumerate(rows, start=2):
        c = Case(case=(r.get("case") or "").strip(), he=p(r.get("he")), her2_score=(r.get("her2_score") or "").strip(),
                 her2_registered=p(r.get("her2_registered")), her2=p(r.get("her2")),
                 transform=p(r.get("transform")), rois=p(r.get("rois")), mode=(r.get("mode") or "").strip())
        if c.he is None:
            raise UserError(f"{path}:{i}: column he is empty")
        c.check(f"{path}:{i}")
        if c.case in seen:
            raise UserError(f"{path}:{i}: case {c.case} appears twice")
        seen.add(c.case)
        cases.append(c)
    return cases
