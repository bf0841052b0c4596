"""A person's decision on a registration: `review_decision.json` beside its review.

The napari registration widget writes it when the user accepts a reviewed registration;
`her2 tile --require-review` refuses a case whose registration has no accepted decision, so a
curated dataset holds only pairs someone looked at.
"""

from __future__ import annotations

import json
from pathlib import Path

from her2core.errors import UserError
from her2core.util.atomic import write_json

DECISION_FILE = "review_decision.json"


def write_decision(folder: str | Path, review: dict, *, note: str = "") -> Path:
    """Record that the registration in `folder` (with its review.json summary) was accepted."""
    summary = review.get("summary", {})
    path = Path(folder) / DECISION_FILE
    write_json(path, {"accepted": True, "note": note, "regions": summary.get("regions"),
                      "flagged": summary.get("flagged"),
                      "median_shift_um": summary.get("median_shift_um"),
                      "transform": "transform.json", "registered": "her2_registered.ome.tif"})
    return path


def require_accepted(folder: str | Path, case: str) -> None:
    """A UserError unless `folder` holds an accepted decision for its registration."""
    path = Path(folder) / DECISION_FILE
    if not path.is_file():
        raise UserError(f"{path}: case {case}'s registration was not reviewed; accept it in the "
                        "napari registration widget, or drop --require-review")
    try:
        decision = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: unreadable decision ({exc}); accept the registration again in "
                        "the napari registration widget") from None
    if not (isinstance(decision, dict) and decision.get("accepted") is True):
        raise UserError(f"{path}: case {case}'s registration was not accepted; re-register it or "
                        "drop --require-review")
