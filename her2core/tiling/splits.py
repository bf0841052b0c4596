"""Train/val/test splits by case, stratified by HER2 score, reproducible by seed or from a file.

Why by case: tiles of one patient in two splits leak. Why stratified: HER2match keeps
every score (0, 1+, 2+, 3+) in every split, so per-score metrics exist on val and test.
The assignment depends only on the case ids, their scores and the seed (not on tiles),
so the same-section and the consecutive-section datasets of the same cases get the same
splits; `save_splits` / `load_splits` pin them explicitly (`her2 tile --splits FILE`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.util.atomic import write_json
from her2core.util.safe_io import loads_json, read_text

SPLITS = ("train", "val", "test")


def score_label(score) -> str:
    s = str(score).strip()
    return s if s.endswith("+") or s == "0" else (f"{s}+" if s in {"1", "2", "3"} else s)


def assign_splits(case_scores: dict[str, object], *, seed: int = 0,
                  fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> dict[str, str]:
    """Case -> split; each score's cases are shuffled by seed and spread so train, val and test all get one."""
    by_score: dict[str, list[str]] = {}
    for case, score in case_scores.items():
        by_score.setdefault(score_label(score), []).append(str(case))
    short = {s: len(c) for s, c in by_score.items() if len(c) < 3}
    if short:
        names = ", ".join(f"HER2 {s} ({n} case{'s' if n != 1 else ''})" for s, n in sorted(short.items()))
        raise UserError(f"cannot split by case with every HER2 score in train, val and test: {names} "
                        "need at least 3 cases each; add cases or give fixed splits with --splits FILE")
    f = np.asarray(fractions, float)
    if f.shape != (3,) or (f < 0).any() or f.sum() <= 0:
        raise UserError(f"split fractions must be three non-negative numbers, got {fractions}")
    f = f / f.sum()
    out: dict[str, str] = {}
    for s in sorted(by_score):
        cases = sorted(by_score[s])
        key = [int(seed), sum(ord(ch) for ch in s)]
        order = [cases[i] for i in np.random.default_rng(key).permutation(len(cases))]
        n = len(order)
        n_val = max(1, round(f[1] * n))
        n_test = max(1, round(f[2] * n))
        if n - n_val - n_test < 1:
            n_val, n_test = 1, 1
        for rank, case in enumerate(order):
            out[case] = "test" if rank < n_test else ("val" if rank < n_test + n_val else "train")
    return out


def save_splits(path: str | Path, splits: dict[str, str]) -> None:
    write_json(path, {"splits": dict(sorted(splits.items()))})


def load_splits(path: str | Path) -> dict[str, str]:
    """Read a splits file: JSON {"splits": {case: split}} (or a bare mapping), or CSV `case,split`."""
    path = Path(path)
    text = read_text(path, "splits file")
    if path.suffix.lower() == ".csv":
        import csv
        import io

        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows or not {"case", "split"} <= set(rows[0]):
            raise UserError(f"{path}: a splits CSV needs the columns case,split")
        data = {r["case"]: r["split"].strip() for r in rows}
    else:
        data = loads_json(text, str(path))
        data = data.get("splits", data) if isinstance(data, dict) else None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected {{\"splits\": {{case: split}}}}")
    bad = sorted({v for v in data.values() if v not in SPLITS})
    if bad:
        raise UserError(f"{path}: unknown split name(s) {', '.join(map(str, bad))}; use train, val, test")
    return {str(k): str(v) for k, v in data.items()}
