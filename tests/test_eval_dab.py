"""DAB metrics: a perfect virtual tile scores perfectly; one without DAB scores HER2 0."""

import numpy as np
import pytest
from skimage import data

from her2core.evaluation.pathology import (
    cohen_kappa,
    dab_metrics,
    grid_means,
    her2_proxy,
    remove_dab,
)


def _cases():
    yield "skimage_ihc", data.immunohistochemistry()[:384, :384], 0.5
    sample = pytest.importorskip("her2core.sample")
    for score in (2, 3):
        _, ihc, mpp = sample.sample_pair("synthetic", 0, size=256, her2_score=score)
        yield f"synthetic_{score}", ihc, mpp


@pytest.mark.parametrize("k", range(3))
def test_perfect_and_dab_removed(k):
    name, real, mpp = list(_cases())[k]
    same = dab_metrics(real, real, mpp)
    assert same["dab_od_mae"] == 0.0 and same["iod_ratio"] == 1.0
    assert same["dab_grid_r"] == pytest.approx(1.0, abs=1e-12)
    assert same["dab_pos_frac_virtual"] == same["dab_pos_frac_real"] > 0.02
    assert same["her2_proxy_virtual"] == same["her2_proxy_real"] >= 2, name

    gone = dab_metrics(remove_dab(real), real, mpp)
    assert gone["her2_proxy_virtual"] == 0
    assert gone["dab_pos_frac_virtual"] < 0.01
    assert gone["iod_ratio"] < 0.2
    # error: at least half the real tile's mean DAB OD (i.e. the signal is missing)
    from her2core.stain import dab_od
    assert gone["dab_od_mae"] > 0.5 * float(dab_od(real).mean())


def test_proxy_follows_synthetic_score():
    sample = pytest.importorskip("her2core.sample")
    scores = [her2_proxy(sample.sample_pair("synthetic", 0, size=256, her2_score=s)[1], 0.5)
              for s in range(4)]
    assert scores == sorted(scores) and scores[0] == 0 and scores[-1] == 3


def test_grid_is_cell_scale_and_kappa():
    od = np.arange(100.0).reshape(10, 10)
    g = grid_means(od, 5)  # 10 um cells at 2 um/px
    assert g.shape == (2, 2) and g[0, 0] == pytest.approx(od[:5, :5].mean())
    assert cohen_kappa([0, 1, 2, 3], [0, 1, 2, 3]) == 1.0
    assert cohen_kappa([0, 1, 2, 3], [3, 2, 1, 0], weights="quadratic") == pytest.approx(-1.0)
    assert cohen_kappa([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0)
