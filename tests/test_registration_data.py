"""Shared embedded test data for the registration and tiling tests (no tests here).

One synthetic case (HER2 2+) rendered as a same-section and a consecutive-section pair
with artefacts, 2048 px at 0.25 µm/px, generated once per test session under pytest's
base temp folder, plus the same-section registration (reused by the tiling tests).
"""

from __future__ import annotations

from pathlib import Path

SIZE = 2048


def sample_dir(base: Path) -> Path:
    from her2core.sample.slides import write_cases

    out = Path(base) / "her2_sample_reg"
    marker = out / ".done"
    if not marker.exists():
        write_cases(out, cases=1, seed=3, mode="both", size=SIZE, artefacts=True, scores=(2,))
        marker.write_text("ok\n")
    return out


def registered_same(base: Path):
    """(case dir, RegistrationResult-like paths) of the same-section case, registered once."""
    from her2core.registration import register

    case = sample_dir(base) / "case00_same"
    reg = case / "reg"
    if not (reg / ".done").exists():
        register(case / "he.ome.tif", case / "her2.ome.tif", reg, run_review=True)
        (reg / ".done").write_text("ok\n")
    return case, reg
