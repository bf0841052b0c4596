"""Find the H&E/IHC pairs of a tile dataset in the folder layouts users have.

- HER2match: HE_20x/{train,val,test}/NAME.png + IHC_20x/{...}/NAME.png (paired by name);
  HER2 scores from a manifest.csv beside them when present, else from BCI-style names.
- BCI: HE/{train,test}/NNNNN_train_2+.png + IHC/{...} (score parsed from the name).
- A/B folders: train/A + train/B (or trainA + trainB), paired by name.
- manifest CSV (ours, from `her2 sample --tiles` / `her2 tile`): columns name,
  her2_score, split and he_path / ihc_path relative to the CSV.

Every problem (missing folder, unpaired file) is a UserError naming the files.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from her2core.errors import UserError
from her2core.util.safe_io import read_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LAYOUTS = ("her2match", "bci", "ab", "manifest")
_BCI_SCORE = re.compile(r"_([0-3])(\+?)$")
_BCI_NAME = re.compile(r"_(?:train|val|test)_([0-3])(\+?)$")  # the full BCI form, for other layouts

Pair = tuple[Path, Path, int]


def detect_layout(root: Path) -> str:
    """The layout of `root` (a folder or a manifest .csv), or a UserError saying what was expected."""
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "manifest"
        raise UserError(f"{root}: not a dataset folder or a manifest .csv")
    if (root / "HE_20x").is_dir() and (root / "IHC_20x").is_dir():
        return "her2match"
    if (root / "HE").is_dir() and (root / "IHC").is_dir():
        return "bci"
    subdirs = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    if any((p / "A").is_dir() and (p / "B").is_dir() for p in subdirs) or \
            any(p.name.endswith("A") and (root / (p.name[:-1] + "B")).is_dir() for p in subdirs):
        return "ab"
    if (root / "manifest.csv").is_file():
        return "manifest"
    raise UserError(f"{root}: unknown dataset layout; expected HE_20x/+IHC_20x/ (HER2match), HE/+IHC/ (BCI), "
                    "train/A+train/B or trainA+trainB folders, or a manifest.csv")


def bci_score(name: str) -> int:
    """HER2 level from a BCI file name: '00012_train_2+.png' -> 2; -1 when absent."""
    m = _BCI_SCORE.search(Path(name).stem)
    return int(m.group(1)) if m else -1


def bci_name_score(name: str) -> int:
    """HER2 level from a full BCI-style name ('00012_train_2+' -> 2), -1 for any other name."""
    m = _BCI_NAME.search(Path(name).stem)
    return int(m.group(1)) if m else -1


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}


def _pair_folders(he_dir: Path, ihc_dir: Path, score_of) -> list[Pair]:
    for d in (he_dir, ihc_dir):
        if not d.is_dir():
            raise UserError(f"{d}: folder not found; the dataset needs both {he_dir.name} and {ihc_dir.name}")
    he, ihc = _images(he_dir), _images(ihc_dir)
    only_he = sorted(set(he) - set(ihc))
    only_ihc = sorted(set(ihc) - set(he))
    if only_he or only_ihc:
        missing = [f"{he[n]} (no match in {ihc_dir})" for n in only_he[:3]]
        missing += [f"{ihc[n]} (no match in {he_dir})" for n in only_ihc[:3]]
        more = len(only_he) + len(only_ihc) - len(missing)
        raise UserError(f"unpaired files: {'; '.join(missing)}" + (f"; and {more} more" if more > 0 else "")
                        + "; every H&E tile needs an IHC tile of the same name")
    return [(he[n], ihc[n], score_of(n)) for n in sorted(he)]


def _splits_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _check_split(root: Path, split: str, available: list[str]) -> None:
    if split not in available:
        raise UserError(f"{root}: no split {split!r} (available: {', '.join(available) or 'none'})")


def read_manifest(path: Path) -> list[dict]:
    text = read_text(path, "manifest CSV")
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:
        raise UserError(f"{path}: cannot read manifest CSV ({exc})") from None
    if rows and "name" not in rows[0]:
        raise UserError(f"{path}: manifest has no 'name' column")
    return rows


def parse_score(value) -> int:
    """HER2 score from a manifest cell: 0-3, '1+'-style labels as `her2 tile` writes them, or -1 if empty."""
    text = str(value if value is not None else "").strip()
    if text in ("", "-1", "nan"):
        return -1
    score = int(text.rstrip("+"))
    if not 0 <= score <= 3:
        raise ValueError(text)
    return score


def _scores_from_manifest(root: Path) -> dict[str, int]:
    m = root / "manifest.csv"
    if not m.is_file():
        return {}
    return read_scores(m, required=False)


def read_scores(m: Path, required: bool = True) -> dict[str, int]:
    """{name stem: HER2 score} from a CSV with columns name and her2_score (a manifest or a scores file)."""
    m = Path(m)
    if not m.is_file():
        raise UserError(f"{m}: scores CSV not found; give a CSV with columns name,her2_score")
    rows = read_manifest(m)
    if rows and "her2_score" not in rows[0]:
        if not required:
            return {}
        raise UserError(f"{m}: no 'her2_score' column; the scores CSV needs columns name,her2_score")
    out = {}
    for r in rows:
        try:
            out[Path(r["name"]).stem] = parse_score(r.get("her2_score"))
        except ValueError:
            raise UserError(f"{m}: her2_score {r.get('her2_score')!r} of {r['name']} is not a HER2 score (0, 1+, 2+, 3+)") from None
    return out


def list_pairs(root: Path, split: str | None, layout: str) -> list[Pair]:
    """All (he_path, ihc_path, her2_score) of one split (None: every split) of a dataset."""
    if layout == "her2match":
        scores = _scores_from_manifest(root)
        return _split_pairs(root, split, root / "HE_20x", root / "IHC_20x",
                            lambda n: scores.get(n, bci_name_score(n)))
    if layout == "bci":
        return _split_pairs(root, split, root / "HE", root / "IHC", bci_score)
    if layout == "ab":
        scores = _scores_from_manifest(root)
        score_of = lambda n: scores.get(n, bci_score(n))
        nested = sorted(p.name for p in root.iterdir() if (p / "A").is_dir() and (p / "B").is_dir())
        flat = sorted(p.name[:-1] for p in root.iterdir()
                      if p.is_dir() and p.name.endswith("A") and (root / (p.name[:-1] + "B")).is_dir())
        available = sorted(set(nested) | set(flat))
        wanted = available if split is None else [split]
        if split is not None:
            _check_split(root, split, available)
        pairs: list[Pair] = []
        for s in wanted:
            a, b = (root / s / "A", root / s / "B") if s in nested else (root / f"{s}A", root / f"{s}B")
            pairs += _pair_folders(a, b, score_of)
        return pairs
    if layout == "manifest":
        return _manifest_pairs(root if root.is_file() else root / "manifest.csv", split)
    raise UserError(f"layout={layout!r}: use one of {', '.join(LAYOUTS)}")


def _split_pairs(root: Path, split: str | None, he_root: Path, ihc_root: Path, score_of) -> list[Pair]:
    available = sorted(set(_splits_in(he_root)) | set(_splits_in(ihc_root)))
    if split is not None:
        _check_split(root, split, available)
    pairs: list[Pair] = []
    for s in ([split] if split is not None else available):
        pairs += _pair_folders(he_root / s, ihc_root / s, score_of)
    return pairs


def _manifest_pairs(csv_path: Path, split: str | None) -> list[Pair]:
    rows = read_manifest(csv_path)
    base = csv_path.parent
    if rows and not {"he_path", "ihc_path"} <= set(rows[0]):
        raise UserError(f"{csv_path}: manifest needs he_path and ihc_path columns (relative to the CSV)")
    pairs: list[Pair] = []
    splits = sorted({r.get("split", "") for r in rows})
    if split is not None and rows and "split" in rows[0]:
        _check_split(csv_path, split, splits)
    for r in rows:
        if split is not None and r.get("split", split) != split:
            continue
        he, ihc = base / r["he_path"], base / r["ihc_path"]
        for p in (he, ihc):
            if not p.is_file():
                raise UserError(f"{p}: listed in {csv_path} (row {r['name']}) but missing")
        try:
            score = parse_score(r.get("her2_score"))
        except ValueError:
            raise UserError(f"{csv_path}: her2_score {r.get('her2_score')!r} of {r['name']} "
                            "is not a HER2 score (0, 1+, 2+, 3+)") from None
        pairs.append((he, ihc, score))
    return pairs


def read_include(include) -> set[str]:
    """Names (stems) from a list of names or a text file with one name per line ('#' comments)."""
    if include is None:
        return set()
    if isinstance(include, (str, Path)):
        p = Path(include)
        if not p.is_file():
            raise UserError(f"{p}: include list not found")
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    else:
        lines = [str(x) for x in include]
    names = set()
    for ln in lines:
        ln = ln.split("#", 1)[0].strip()
        if ln:
            names.add(Path(ln.replace("\\", "/")).stem if Path(ln).suffix.lower() in IMAGE_SUFFIXES
                      else Path(ln.replace("\\", "/")).name)
    return names
