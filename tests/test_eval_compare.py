"""`her2 compare`: the mixed model recovers planted effects; single-level factors are dropped."""

import numpy as np
import pandas as pd
import pytest

from her2core import cli
from her2core.evaluation import compare

TRUE = {"Intercept": 0.50, "framework[T.gan]": 0.05, "dataset[T.her2match]": 0.10,
        "framework[T.gan]:dataset[T.her2match]": -0.03}


def _simulate(root, seed=0, datasets=("bci", "her2match"), n_img=50, test_set=True):
    """8 models (4 GAN, 4 DM) trained on each dataset, all scored on the same test tiles."""
    rng = np.random.default_rng(seed)
    models = {f"gan{i}": "gan" for i in range(4)} | {f"dm{i}": "dm" for i in range(4)}
    i_eff = rng.normal(0, 0.05, n_img)
    dirs = []
    for ds in datasets:
        m_eff = {m: rng.normal(0, 0.02) for m in models}
        for m, fw in models.items():
            g, h = fw == "gan", ds == "her2match"
            y = (TRUE["Intercept"] + TRUE["framework[T.gan]"] * g + TRUE["dataset[T.her2match]"] * h
                 + TRUE["framework[T.gan]:dataset[T.her2match]"] * g * h + m_eff[m] + i_eff
                 + rng.normal(0, 0.02, n_img))
            d = root / f"{m}_{ds}"
            d.mkdir(parents=True)
            table = pd.DataFrame({"image": [f"t{i:03d}" for i in range(n_img)], "model": m,
                                  "framework": fw, "dataset": ds, "ssim": y, "psnr": 20 + 10 * y})
            if test_set:
                table["test_set"] = "her2match/test"
            table.to_csv(d / "per_image.csv", index=False)
            dirs.append(d)
    return dirs


def test_recovers_planted_fixed_effects(tmp_path):
    dirs = _simulate(tmp_path / "evals")
    s = compare(dirs, tmp_path / "cmp")
    fe = pd.read_csv(tmp_path / "cmp" / "mixed_effects.csv")
    assert set(fe.columns) == {"metric", "term", "estimate", "std_error", "df", "t_value", "p_value",
                            "ci_low", "ci_high"}
    ssim = fe[fe.metric == "ssim"].set_index("term")
    assert set(ssim.index) == set(TRUE)
    for term, true in TRUE.items():
        est, se = ssim.loc[term, "estimate"], ssim.loc[term, "std_error"]
        assert abs(est - true) < 2 * se, term
    re = pd.read_csv(tmp_path / "cmp" / "random_effects.csv")
    img_var = re[(re.metric == "ssim") & (re.component == "image")].variance.item()
    assert 0.0015 < img_var < 0.004  # true 0.0025
    assert s["fits"]["ssim"]["levels"] == {"model": 16, "image": 50}  # tiles crossed, not nested
    assert abs(re[re.metric == "ssim"].share.sum() - 1) < 1e-9
    assert {"distribution_ssim", "distribution_psnr", "coefficients"} <= set(s["figures"])
    assert (tmp_path / "cmp" / "coefficients.png").stat().st_size > 1000
    # the HTML report of a comparison embeds its figures and tables
    from her2core.evaluation.report import build_report

    text = build_report(tmp_path / "cmp", tmp_path / "cmp.html").read_text()
    assert text.count("data:image/png;base64,") == len(s["figures"])
    assert "framework[T.gan]" in text and "(1|model)" in text and "Satterthwaite" in text
    # the paper's significance mark: * on the rows with p <= 0.001, and only there
    n_sig = int((fe.p_value <= 0.001).sum())
    assert 0 < n_sig < len(fe) and text.count('<td class="t">*</td>') == n_sig
    lrt = s["fits"]["ssim"]["likelihood_ratio_tests"]  # only the interaction: marginality
    assert [t["term"] for t in lrt] == ["framework:dataset"] and "Likelihood-ratio" in text


def test_report_builder_api(tmp_path):
    """The small API the demo extends: sections of text, tables, figures, image grids."""
    from her2core.util.html_report import Report

    rep = Report("demo")
    sec = rep.section("Registration review")
    sec.text("residual shift 0.4 um").table([{"region": "r1", "shift_um": 0.4}])
    rgb = np.zeros((40, 40, 3), np.uint8)
    sec.image_grid([[rgb, rgb]], columns=["H&E", "HER2"], captions=["tile 1"])
    html = rep.write(tmp_path / "r.html").read_text()
    assert "<h2>Registration review</h2>" in html and "shift_um" in html and "tile 1" in html
    assert html.count("data:image/png;base64,") == 2


def test_old_table_without_test_set_loads_with_a_note(tmp_path):
    dirs = _simulate(tmp_path / "evals", n_img=20, test_set=False)
    s = compare(dirs, tmp_path / "cmp", metrics=("ssim",), figures=False)
    assert any("no test_set column" in n and "same tile" in n for n in s["notes"])
    assert s["fits"]["ssim"]["levels"]["image"] == 20


def test_one_dataset_drops_term_and_says_so(tmp_path, capsys):
    dirs = _simulate(tmp_path / "evals", datasets=("bci",), n_img=20)
    rc = cli.main(["compare", *map(str, dirs), "--out", str(tmp_path / "cmp"), "--no-figures"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "'dataset' has one level" in out and "term dropped" in out
    assert "framework[T.gan]" in out and "Satterthwaite" in out and " t(" in out
    fe = pd.read_csv(tmp_path / "cmp" / "mixed_effects.csv")
    assert set(fe[fe.metric == "ssim"].term) == {"Intercept", "framework[T.gan]"}


def test_nan_in_table_is_one_line_exit_2(tmp_path, capsys):
    dirs = _simulate(tmp_path / "evals", datasets=("bci",), n_img=5)
    f = dirs[0] / "per_image.csv"
    df = pd.read_csv(f)
    df.loc[2, "ssim"] = np.nan
    df.to_csv(f, index=False)
    assert cli.main(["compare", *map(str, dirs), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(f) in err and "t002" in err


@pytest.mark.parametrize("seed", [1])
def test_second_seed_recovers_too(tmp_path, seed):
    dirs = _simulate(tmp_path / "evals", seed=seed, n_img=30)
    compare(dirs, tmp_path / "cmp", metrics=("ssim",), figures=False)
    fe = pd.read_csv(tmp_path / "cmp" / "mixed_effects.csv").set_index("term")
    for term, true in TRUE.items():
        assert abs(fe.loc[term, "estimate"] - true) < 2 * fe.loc[term, "std_error"], term


def test_demo_key_finding_line_reports_satterthwaite_with_images_crossed(tmp_path):
    from her2core.demo import _dataset_effect
    from her2core.evaluation.mixed import term_line

    s = compare(_simulate(tmp_path / "evals", n_img=30), tmp_path / "cmp", metrics=("ssim",),
                figures=False)
    eff = _dataset_effect(tmp_path / "cmp" / "mixed_effects.csv")
    line = term_line(s, eff)
    row = pd.read_csv(tmp_path / "cmp" / "mixed_effects.csv").set_index("term").loc[eff["term"]]
    assert "(1|image)" in line and "images crossed (30 test tiles x 16 models)" in line
    assert f"Satterthwaite t({row.df:.1f}) = {row.t_value:.2f}, p = {row.p_value:.2g}" in line
    assert 10 < row.df < 14  # 16 models - 4 cells: the denominator df of a model-level effect


def test_training_dataset_comes_from_the_run(tmp_path):
    import json

    from her2core.evaluation.evaluate import _training_dataset

    (tmp_path / "run.json").write_text(json.dumps({"data": {"root": "/data/her2match_same"}}))
    assert _training_dataset(tmp_path) == "her2match_same"
    assert _training_dataset(tmp_path / "nothing") == ""


def test_one_row_per_model_is_not_a_random_effect(tmp_path):
    """lme4 refuses a grouping factor with a level per row; we drop it and say so."""
    dirs = _simulate(tmp_path / "evals", n_img=1)
    s = compare(dirs, tmp_path / "cmp", metrics=("ssim",), figures=False)
    assert "one row per 'model'" in " ".join(s["notes"])
    assert s["fits"]["ssim"]["formula"] == "ssim ~ framework * dataset"
