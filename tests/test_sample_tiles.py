"""The rendered tile dataset (her2core.sample.write_tile_dataset): layout, determinism, learnable signal."""

import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from her2core.errors import UserError
from her2core.sample import write_tile_dataset
from her2core.stain import dab_od, hematoxylin_od


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(root):
    with open(root / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def same_ds(tmp_path_factory):
    return write_tile_dataset(tmp_path_factory.mktemp("same"), cases=4, tile=64, tiles_per_case=6, seed=3)


@pytest.fixture(scope="module")
def consecutive_ds(tmp_path_factory):
    return write_tile_dataset(tmp_path_factory.mktemp("consec"), cases=4, tile=64, tiles_per_case=6, seed=3,
                              mode="consecutive")


def test_layout_and_manifest_split_by_case(same_ds):
    rows = _rows(same_ds)
    assert len(rows) == 4 * 6
    assert {"name", "case", "her2_score", "split", "mpp", "tile"} <= set(rows[0])
    split_of_case = {}
    for r in rows:
        assert split_of_case.setdefault(r["case"], r["split"]) == r["split"], "a case spans two splits"
        he = same_ds / "HE_20x" / r["split"] / f"{r['name']}.png"
        ihc = same_ds / "IHC_20x" / r["split"] / f"{r['name']}.png"
        assert he.is_file() and ihc.is_file()
        assert Image.open(he).size == Image.open(ihc).size == (64, 64)
        assert float(r["mpp"]) == 0.5 and int(r["tile"]) == 64
    assert set(split_of_case.values()) == {"train", "val", "test"}
    assert sorted({int(r["her2_score"]) for r in rows}) == [0, 1, 2, 3]


def test_same_seed_same_bytes_other_seed_differs(same_ds, tmp_path):
    again = write_tile_dataset(tmp_path / "again", cases=4, tile=64, tiles_per_case=6, seed=3)
    assert _digest(again) == _digest(same_ds)
    other = write_tile_dataset(tmp_path / "other", cases=4, tile=64, tiles_per_case=6, seed=4)
    a, b = _digest(other), _digest(same_ds)
    differing = [k for k in a if k.endswith(".png") and a[k] != b.get(k)]
    assert len(differing) > 0.9 * sum(k.endswith(".png") for k in a)


def _pair_stats(root):
    rs, dab = [], {}
    for r in _rows(root):
        he = np.asarray(Image.open(root / r["he_path"]).convert("RGB"))
        ihc = np.asarray(Image.open(root / r["ihc_path"]).convert("RGB"))
        rs.append(np.corrcoef(hematoxylin_od(he).ravel(), hematoxylin_od(ihc).ravel())[0, 1])
        dab.setdefault(int(r["her2_score"]), []).append(float(dab_od(ihc).mean()))
    return np.array(rs), {k: float(np.mean(v)) for k, v in dab.items()}


def test_same_pairs_share_nuclei_consecutive_do_not(same_ds, consecutive_ds):
    r_same, dab_same = _pair_stats(same_ds)
    r_cons, _ = _pair_stats(consecutive_ds)
    # same section: the IHC counterstain is the H&E hematoxylin of the same nuclei (measured r > 0.999)
    assert r_same.min() > 0.95
    # neighbouring section: nuclei re-drawn and shifted (measured median about 0.15)
    assert np.median(r_cons) < 0.5
    # membrane DAB grows with the case HER2 score (what a model has to learn)
    assert dab_same[3] > dab_same[2] > dab_same[0]
    assert dab_same[1] > dab_same[0]


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="at least 3 cases"):
        write_tile_dataset(tmp_path / "x", cases=2, tile=32, tiles_per_case=1)
    with pytest.raises(UserError, match="mode"):
        write_tile_dataset(tmp_path / "x", mode="diagonal")
    with pytest.raises(UserError, match="scores"):
        write_tile_dataset(tmp_path / "x", scores=(4,))
