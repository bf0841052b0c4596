"""`her2 compare`'s fit against R's lme4 + lmerTest (via Rscript) on the same tables.

Acceptance of issue 16: fixed effects within 1e-6 relative, standard errors within 0.5 %,
Satterthwaite p values within 0.05 in log10, variance components within 1 %.
"""

import numpy as np
import pandas as pd
import pytest

from her2core.evaluation import compare
from her2core.evaluation.mixed import load_tables
from her2core.evaluation.rlme4 import fit_lme4, unavailable

WHY = unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"lme4/lmerTest reference: {WHY}")


def _study_tables(root, seed, *, frameworks=("dm", "gan"), datasets=("consecutive", "same"),
                  per_cell=3, n_tiles=60, missing=0.0, sd_model=0.02):
    """Models of each framework trained on each dataset, scored on the same test tiles."""
    rng = np.random.default_rng(seed)
    tile_effect = rng.normal(0, 0.05, n_tiles)
    dirs = []
    for fw in frameworks:
        for ds in datasets:
            for k in range(per_cell):
                name = f"{fw}{k}"
                keep = rng.random(n_tiles) >= missing
                y = (0.5 + 0.04 * (fw == "gan") + 0.02 * (ds == "same")
                     - 0.015 * (fw == "gan") * (ds == "same") + rng.normal(0, sd_model)
                     + tile_effect + rng.normal(0, 0.02, n_tiles))[keep]
                d = root / f"{name}_{ds}"
                d.mkdir(parents=True)
                pd.DataFrame({"image": [f"t{i:03d}" for i in np.flatnonzero(keep)], "model": name,
                              "framework": fw, "dataset": ds, "test_set": "her2match/test",
                              "ssim": y, "psnr": 20 + 8 * y}).to_csv(d / "per_image.csv", index=False)
                dirs.append(d)
    return dirs


def _r_name(term: str) -> str:
    """patsy's 'framework[T.gan]:dataset[T.same]' as R's 'frameworkgan:datasetsame'."""
    return "(Intercept)" if term == "Intercept" else term.replace("[T.", "").replace("]", "")


def _against_lme4(tmp_path, dirs, metric="ssim", tight=False):
    s = compare(dirs, tmp_path / "cmp", metrics=(metric,), figures=False)
    ours = pd.read_csv(tmp_path / "cmp" / "mixed_effects.csv")
    comps = pd.read_csv(tmp_path / "cmp" / "random_effects.csv").set_index("component")
    fit = s["fits"][metric]
    rhs = fit["formula"].split("~")[1].split("+ (1|")[0].strip()
    df = load_tables(dirs).rename(columns={"model": "model_name", "model_id": "model",
                                           "image_id": "image_tile", })
    df["image"] = df["image_tile"]
    random = list(fit["levels"])
    formula = f"{metric} ~ {rhs}" + "".join(f" + (1|{k})" for k in random)
    levels = {f: sorted(df[f].unique()) for f in ("framework", "dataset") if f in rhs}
    levels |= {k: sorted(df[k].unique()) for k in random}
    # R's update(. ~ . - term) keeps an aliased interaction that we dropped: compare full rank
    full_rank = not any("rank deficient" in n for n in s["notes"])
    lrt_terms = [t["term"] for t in fit["likelihood_ratio_tests"]] if full_rank else []
    ref = fit_lme4(df, formula, levels, tight=tight, lrt_terms=lrt_terms)
    assert len(ref["lrt"]) == len(lrt_terms) == (len(fit["likelihood_ratio_tests"]) if full_rank
                                                 else 0)
    for ours_lrt, r in zip(fit["likelihood_ratio_tests"], ref["lrt"]):
        assert ours_lrt["term"] == r["term"] and ours_lrt["df"] == r["df"]
        assert abs(ours_lrt["chisq"] - r["chisq"]) < 1e-4 * max(1.0, r["chisq"]), r
        assert abs(np.log10(ours_lrt["p_value"]) - np.log10(r["p_value"])) < 0.05, r
    assert [_r_name(t) for t in ours.term] == ref["terms"]
    return s, fit, ours, comps, ref


def _assert_equal_to_lme4(ours, comps, ref):
    est_r, se_r = np.array(ref["estimate"]), np.array(ref["std_error"])
    est_err = np.abs(ours.estimate.to_numpy() - est_r) / np.abs(est_r)
    assert est_err.max() < 1e-6, est_err
    se_err = np.abs(ours.std_error.to_numpy() / se_r - 1)
    assert se_err.max() < 0.005, se_err
    assert np.allclose(ours.df.to_numpy(), ref["df"], rtol=0.01)
    logp = np.abs(np.log10(ours.p_value.to_numpy()) - np.log10(np.array(ref["p_value"])))
    assert logp.max() < 0.05, logp
    total = sum(ref["variances"].values())
    for comp, v in ref["variances"].items():
        if v > 1e-10 * total:
            assert abs(comps.loc[comp, "variance"] / v - 1) < 0.01, comp
        else:  # lme4 on the boundary: ours there too
            assert comps.loc[comp, "variance"] < 1e-8 * total, comp


def test_balanced_crossed_equals_lme4(tmp_path):
    dirs = _study_tables(tmp_path / "evals", seed=0)
    _, fit, ours, comps, ref = _against_lme4(tmp_path, dirs)
    assert fit["formula"] == "ssim ~ framework * dataset + (1|model) + (1|image)"
    assert fit["levels"] == {"model": 12, "image": 60}  # one image per tile, crossed
    _assert_equal_to_lme4(ours, comps, ref)
    # few models: the framework effect's denominator df is ~8 (12 models - 4 cells), not ~700
    assert 7 < ours.set_index("term").loc["framework[T.gan]", "df"] < 9
    assert fit["reml_criterion"] <= ref["reml_criterion"] + 1e-6
    assert abs(fit["reml_criterion"] - ref["reml_criterion"]) < 1e-4


def test_unbalanced_missing_tiles_equals_lme4(tmp_path):
    dirs = _study_tables(tmp_path / "evals", seed=1, missing=0.25)
    _, fit, ours, comps, ref = _against_lme4(tmp_path, dirs, metric="psnr")
    assert fit["n"] < 12 * 60
    _assert_equal_to_lme4(ours, comps, ref)


def test_one_framework_equals_lme4(tmp_path):
    dirs = _study_tables(tmp_path / "evals", seed=2, frameworks=("gan",), missing=0.1)
    _, fit, ours, comps, ref = _against_lme4(tmp_path, dirs)
    assert fit["formula"] == "ssim ~ dataset + (1|model) + (1|image)"
    _assert_equal_to_lme4(ours, comps, ref)


def test_one_dataset_equals_lme4(tmp_path):
    dirs = _study_tables(tmp_path / "evals", seed=3, datasets=("same",), per_cell=4)
    _, fit, ours, comps, ref = _against_lme4(tmp_path, dirs)
    assert fit["formula"] == "ssim ~ framework + (1|model) + (1|image)"
    _assert_equal_to_lme4(ours, comps, ref)


def test_boundary_fit_zero_model_variance_equals_lme4(tmp_path):
    dirs = _study_tables(tmp_path / "evals", seed=5, sd_model=0.0, missing=0.1)
    s, fit, ours, comps, ref = _against_lme4(tmp_path, dirs)
    assert ref["singular"], "fixture no longer gives lme4 a boundary fit: pick another seed"
    assert fit["boundary"] and comps.loc["model", "variance"] == 0.0
    assert any("boundary (singular) fit" in n for n in s["notes"])
    _assert_equal_to_lme4(ours, comps, ref)


def test_missing_cell_drops_the_aliased_column_as_lme4(tmp_path):
    dirs = [d for d in _study_tables(tmp_path / "evals", seed=6)
            if not (d.name.startswith("gan") and d.name.endswith("_consecutive"))]
    s, _, ours, comps, ref = _against_lme4(tmp_path, dirs)
    assert list(ours.term) == ["Intercept", "framework[T.gan]", "dataset[T.same]"]
    assert any("rank deficient" in n for n in s["notes"])
    assert any("rank deficient" in m for m in ref["messages"])
    _assert_equal_to_lme4(ours, comps, ref)


def test_three_training_datasets_unbalanced_equal_lme4s_optimum(tmp_path):
    """Against lme4 run to its optimum (bobyqa rhoend 1e-12): the same point to ~1e-9.

    On this table lme4's default stopping rule ends 1.1e-6 relative away on the smallest
    coefficient, and its REML criterion ends above ours: the difference is lme4's.
    """
    dirs = _study_tables(tmp_path / "evals", seed=11, datasets=("bci", "consecutive", "same"),
                         missing=0.3)
    _, fit, ours, comps, ref = _against_lme4(tmp_path, dirs, tight=True)
    assert len(ours) == 6  # 2 dataset columns, 2 interaction columns
    est_err = np.abs(ours.estimate.to_numpy() / np.array(ref["estimate"]) - 1)
    assert est_err.max() < 1e-8, est_err
    assert abs(fit["reml_criterion"] - ref["reml_criterion"]) < 1e-8
    _assert_equal_to_lme4(ours, comps, ref)
