"""The one cases CSV of `her2 tile` and `her2 batch`: one slide (pair) per row.

Columns (header required, any order, case-insensitive; paths relative to the CSV's folder):

    case             case id (tile names, splits, batch output folders); default: the H&E file stem
    he               H&E slide (required)
    her2_registered  HER2 slide already resampled onto the H&E grid (`her2 register` output)
      -- or --
    her2, transform  the original HER2 slide and the transform.json that maps it (tiles are
                     warped on the fly; no registered slide needed)
    her2_score       0, 1+, 2+ or 3+ (1, 2, 3 accepted)
    rois             optional QuPath GeoJSON of ROIs on the H&E slide (empty = whole tissue / slide)
    mode             optional free text copied to the manifest (e.g. same / consecutive)

`her2 tile` needs case, he, her2_score and a HER2 slide for every row; `her2 batch` needs only
`he` (a registered HER2, when given, yields metrics). Files written by `her2 batch` before this
schema (`slide`, `roi`, `her2` = registered HER2) are still read, with a note.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from her2core.errors import UserError
from her2core.tiling.splits import score_label
from her2core.util.atomic import write_text
from her2core.util.safe_io import read_text

_SCORES = {"0", "1+", "2+", "3+"}
_PATH_COLUMNS = ("he", "her2_registered", "her2", "transform", "rois")
# the columns of `her2 batch` before the one schema -> their names now
_OLD_BATCH_COLUMNS = {"slide": "he", "roi": "rois", "her2": "her2_registered", "case_id": "case"}


@dataclass
class Case:
    case: str
    he: Path
    her2_score: str = ""
    her2_registered: Path | None = None
    her2: Path | None = None
    transform: Path | None = None
    rois: Path | None = None
    mode: str = ""

    def check(self, where: str, *, paired: bool = True) -> Case:
        """Validate in place; `paired` (tiling) also needs a HER2 slide and a score."""
        if not self.case or any(c in self.case for c in "/\\ ") or self.case in (".", ".."):
            raise UserError(f"{where}: case id {self.case!r} must be non-empty, without spaces or slashes")
        if paired or self.her2_score:
            self.her2_score = score_label(self.her2_score)
            if self.her2_score not in _SCORES:
                raise UserError(f"{where}: her2_score {self.her2_score!r} must be one of 0, 1+, 2+, 3+")
        if paired and self.her2_registered is None and (self.her2 is None or self.transform is None):
            raise UserError(f"{where}: case {self.case} needs her2_registered, or her2 and transform")
        for name in _PATH_COLUMNS:
            p = getattr(self, name)
            if p is not None and not Path(p).exists():
                raise UserError(f"{where}: case {self.case}: {name} file not found: {p}")
        return self


def read_cases_csv(path: str | Path, *, paired: bool = True) -> list[Case]:
    """Parse a cases CSV; every problem is one UserError naming the file and line.

    `paired=True` for `her2 tile` (HER2 slide and score per row), False for `her2 batch`.
    """
    path = Path(path)
    text = read_text(path, "cases CSV")
    try:
        lines = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise UserError(f"{path}: not a readable CSV ({exc}); save the cases CSV as UTF-8 "
                        "comma-separated text") from None
    if not lines or not any(c.strip() for c in lines[0]):
        raise UserError(f"{path}: the cases CSV is empty (no header row); see "
                        f"`her2 {'tile' if paired else 'batch'} --help`")
    header = [c.strip().lower() for c in lines[0]]
    rename = {}
    if "he" not in header and "slide" in header:
        rename = _OLD_BATCH_COLUMNS
        print(f"note: {path}: read with the old `her2 batch` columns (slide, roi, her2 = registered "
              "HER2); the columns are now he, rois, her2_registered", file=sys.stderr)
    header = [rename.get(c, c) for c in header]
    required = {"case", "he", "her2_score"} if paired else {"he"}
    missing = required - set(header)
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                        f"see `her2 {'tile' if paired else 'batch'} --help`")
    base = path.parent

    def resolve(v: str) -> Path | None:
        if not v:
            return None
        p = Path(v).expanduser()
        return p if p.is_absolute() else base / p

    cases: list[Case] = []
    seen: dict[str, int] = {}
    for line, values in enumerate(lines[1:], start=2):
        if len(values) > len(header):
            raise UserError(f"{path}:{line}: {len(values)} cells for {len(header)} columns; "
                            "quote paths that contain commas")
        row = {h: v.strip() for h, v in zip(header, values)}
        if not any(row.values()):
            continue  # blank line
        where = f"{path}:{line}"
        if not row.get("he"):
            raise UserError(f"{where}: column he is empty")
        he = resolve(row["he"])
        c = Case(case=row.get("case") or he.name.split(".")[0], he=he,
                 her2_score=row.get("her2_score", ""), mode=row.get("mode", ""),
                 **{k: resolve(row.get(k, "")) for k in _PATH_COLUMNS if k != "he"})
        c.check(where, paired=paired)
        if c.case in seen:
            raise UserError(f"{where}: case {c.case} repeats line {seen[c.case]}; case ids must be unique")
        seen[c.case] = line
        cases.append(c)
    if not cases:
        raise UserError(f"{path}: no cases (a header row and one row per case are needed)")
    return cases


def write_cases_csv(path: str | Path, cases: list[dict]) -> Path:
    """Write rows (dicts with Case field names) as a cases CSV, paths relative to its folder."""
    path = Path(path)
    cols = [f.name for f in fields(Case) if any(r.get(f.name) not in (None, "") for r in cases)]

    def cell(v) -> str:
        if isinstance(v, Path):
            return Path(os.path.relpath(v.resolve(), path.parent.resolve())).as_posix()
        return "" if v is None else str(v)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in cases:
        w.writerow([cell(r.get(c)) for c in cols])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, buf.getvalue())
    return path
