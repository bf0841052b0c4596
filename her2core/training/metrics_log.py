"""Metrics log: JSON lines as the record, CSV (union of columns) as a convenience copy."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from her2core.util.atomic import write_text


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool):
        self.jsonl, self.csv = run_dir / "log.jsonl", run_dir / "log.csv"
        self.enabled = enabled

    def truncate(self, done_steps: int) -> None:
        """On resume from step N (N steps done): forget rows of later steps, which the run redoes."""
        if not self.enabled or not self.jsonl.exists():
            return
        keep = [json.dumps(r, sort_keys=True) for r in self.rows() if r.get("step", 0) <= done_steps]
        write_text(self.jsonl, "".join(ln + "\n" for ln in keep))

    def forget(self, step: int, key: str) -> None:
        """Drop the rows of `step` that hold `key` (a finished run resumed logs its final
        validation again; the earlier row must not stay twice)."""
        if not self.enabled or not self.jsonl.exists():
            return
        keep = [json.dumps(r, sort_keys=True) for r in self.rows() if not (r.get("step") == step and key in r)]
        write_text(self.jsonl, "".join(ln + "\n" for ln in keep))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.jsonl.open("a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")

    def rows(self) -> list[dict]:
        """The logged rows; a line torn by a kill mid-write (or otherwise unreadable) is dropped,
        so it never blocks a resume (the resumed run logs that step again)."""
        if not self.jsonl.exists():
            return []
        rows = []
        for ln in self.jsonl.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(ln)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def write_csv(self) -> None:
        if not self.enabled:
            return
        rows = self.rows()
        cols = ["step"] + sorted({k for r in rows for k in r} - {"step"})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text(self.csv, buf.getvalue())
