"""The demo chain end to end at a tiny size: every stage runs and the report is complete.

This is the integration test of sample -> register -> tile -> train -> translate ->
evaluate -> compare -> report; `make demo` runs the same code with larger budgets.
"""

import pytest

pytestmark = pytest.mark.slow


def test_demo_chain_writes_complete_report_and_finding(tmp_path):
    from her2core.demo import Demo, DemoConfig

    cfg = DemoConfig(cases=6, scores=(1, 3), slide_px=2048, gan_steps=300, gan_seeds=1, dm_steps=40,
                     dm_sample_steps=1, real_region_px=256, synthetic_region_px=512, set_metric_runs=())
    printed: list[str] = []
    demo = Demo(tmp_path / "demo", cfg, log=printed.append)
    report = demo.run()
    html = report.read_text()
    for title in ("Key finding", "Registration review", "Virtual HER2 slides", "Evaluation of p2p_same",
                  "All runs on both test sets", "How this was made"):
        assert title in html, title
    assert html.count("data:image/png;base64,") >= 10  # previews, example tiles, slides, figures
    # same-section registrations are tight, consecutive ones are not
    same = [r for n, r in demo.registrations.items() if n.endswith("_same")]
    cons = [r for n, r in demo.registrations.items() if n.endswith("_consecutive")]
    assert max(r["median_um"] for r in same) < 2.0
    # consecutive sections: the review finds no cell-level match, or a larger residual
    for r in cons:
        assert (r["no_match"] > 0 and r["median_um"] is None) or (r["median_um"] or 0) > 2.0, r
    # the study's direction, on the same aligned test tiles
    f = demo.finding
    assert f["n_test_tiles"] > 20
    assert f["ssim_same_trained"] > f["ssim_consecutive_trained"]
    assert (tmp_path / "demo" / "compare" / "mixed_effects.csv").exists()
    assert (tmp_path / "demo" / "demo_summary.json").exists()
    # every command the demo prints is one the real `her2` parser takes
    from test_readme_commands import her2_argv

    from her2core.cli import build_parser

    shown = [c.strip() for m in printed for ln in m.splitlines() if ln.strip().startswith("$ ")
             for c in ln.strip()[2:].split("&&")]
    assert len(shown) >= 8
    for command in shown:
        build_parser().parse_args(her2_argv(command))
    # the report is built from the folder alone: `her2 report DEMO` rebuilds it, even moved
    import shutil

    from her2core.cli import main as her2

    moved = tmp_path / "moved"
    shutil.move(tmp_path / "demo", moved)
    assert her2(["report", str(moved), "--out", str(tmp_path / "again.html")]) == 0
    again = (tmp_path / "again.html").read_text()
    assert "Key finding" in again and "Registration review" in again and "(missing)" not in again
    assert again.count("data:image/png;base64,") >= 10
