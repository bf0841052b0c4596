"""Dataset readers (her2core.datasets.open_paired): every layout pairs correctly and reads HER2 levels."""

import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from her2core.datasets import detect_layout, open_paired
from her2core.errors import UserError
from her2core.sample import write_tile_dataset
from her2core.stain import hematoxylin_od

BCI_LEVELS = ("0", "1+", "2+", "3+")


@pytest.fixture(scope="module")
def her2match(tmp_path_factory):
    return write_tile_dataset(tmp_path_factory.mktemp("h2m"), cases=4, tile=48, tiles_per_case=3, seed=1)


def _truth(root):
    """name -> (score, he file, ihc file) from the generator's manifest."""
    import csv

    with open(root / "manifest.csv", newline="") as fh:
        return {r["name"]: (int(r["her2_score"]), root / r["he_path"], root / r["ihc_path"], r["split"])
                for r in csv.DictReader(fh)}


def _assert_paired(ds):
    """True pairs share nuclei: the H&E and IHC hematoxylin correlate; a shuffled pair does not."""
    items = [ds[i] for i in range(len(ds))]
    to_rgb = lambda t: ((t.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    h_he = [hematoxylin_od(to_rgb(it["he"])).ravel() for it in items]
    h_ihc = [hematoxylin_od(to_rgb(it["ihc"])).ravel() for it in items]
    with_nuclei = [i for i in range(len(items)) if h_he[i].std() > 0.01]
    assert len(with_nuclei) >= len(items) / 2
    for k, i in enumerate(with_nuclei):
        assert np.corrcoef(h_he[i], h_ihc[i])[0, 1] > 0.95, items[i]["name"]
        j = with_nuclei[(k + 1) % len(with_nuclei)]
        if j != i:
            assert np.corrcoef(h_he[i], h_ihc[j])[0, 1] < 0.6
    return items


def test_her2match_layout_reads_splits_scores_and_tensors(her2match):
    truth = _truth(her2match)
    assert detect_layout(her2match) == "her2match"
    seen = set()
    for split in ("train", "val", "test"):
        ds = open_paired(her2match, split)
        assert len(ds) > 0
        items = _assert_paired(ds)
        for (he, ihc, score), it in zip(ds.pairs, items):
            assert he.stem == ihc.stem == it["name"]
            assert truth[it["name"]][3] == split
            assert score == int(it["her2_score"]) == truth[it["name"]][0]
            assert it["he"].dtype == torch.float32 and it["he"].shape == (3, 48, 48)
            assert it["her2_score"].dtype == torch.int64 and it["her2_score"].ndim == 0
            assert -1.0 <= float(it["he"].min()) and float(it["ihc"].max()) <= 1.0
            seen.add(it["name"])
    assert seen == set(truth)
    assert len(open_paired(her2match, None)) == len(truth)
    batch = next(iter(DataLoader(open_paired(her2match, "train"), batch_size=4)))
    assert batch["he"].shape == (4, 3, 48, 48) and batch["her2_score"].shape == (4,)


def test_manifest_csv_layout(her2match):
    truth = _truth(her2match)
    ds = open_paired(her2match / "manifest.csv", "test")
    assert ds.layout == "manifest"
    assert {p[0].stem for p in ds.pairs} == {n for n, t in truth.items() if t[3] == "test"}
    assert all(truth[p[0].stem][0] == p[2] for p in ds.pairs)


def _make_bci(src, dst):
    """BCI layout: HE/{train,test}/NNNNN_{split}_{level}.png with the level in the name."""
    truth = _truth(src)
    expected = {}
    for k, (name, (score, he, ihc, split)) in enumerate(sorted(truth.items())):
        split = "train" if split == "train" else "test"
        fname = f"{k:05d}_{split}_{BCI_LEVELS[score]}.png"
        for folder, f in (("HE", he), ("IHC", ihc)):
            (dst / folder / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst / folder / split / fname)
        expected[fname[:-4]] = (score, split)
    return expected


def test_bci_layout_parses_her2_level(her2match, tmp_path):
    expected = _make_bci(her2match, tmp_path)
    assert detect_layout(tmp_path) == "bci"
    for split in ("train", "test"):
        ds = open_paired(tmp_path, split)
        _assert_paired(ds)
        names = {p[0].stem for p in ds.pairs}
        assert names == {n for n, (_, s) in expected.items() if s == split}
        assert all(p[2] == expected[p[0].stem][0] for p in ds.pairs)
    with pytest.raises(UserError, match="no split 'val'"):
        open_paired(tmp_path, "val")


@pytest.mark.parametrize("flat", [False, True])
def test_ab_layouts(her2match, tmp_path, flat):
    truth = _truth(her2match)
    for name, (_, he, ihc, split) in truth.items():
        a = tmp_path / (f"{split}A" if flat else f"{split}/A")
        b = tmp_path / (f"{split}B" if flat else f"{split}/B")
        a.mkdir(parents=True, exist_ok=True)
        b.mkdir(parents=True, exist_ok=True)
        shutil.copy(he, a / f"{name}.png")
        shutil.copy(ihc, b / f"{name}.png")
    assert detect_layout(tmp_path) == "ab"
    ds = open_paired(tmp_path, "val")
    _assert_paired(ds)
    assert {p[0].stem for p in ds.pairs} == {n for n, t in truth.items() if t[3] == "val"}
    assert all(p[2] == -1 for p in ds.pairs)  # no manifest: score unknown


def test_include_list_selects_subset(her2match, tmp_path):
    names = sorted(p[0].stem for p in open_paired(her2match, "train").pairs)
    ds = open_paired(her2match, "train", include=names[:2])
    assert sorted(p[0].stem for p in ds.pairs) == names[:2]
    lst = tmp_path / "clean.txt"
    lst.write_text(f"# a BCI-clean style list\n{names[1]}.png\n\n{names[2]}\nnot_in_this_split.png\n")
    assert sorted(p[0].stem for p in open_paired(her2match, "train", include=lst).pairs) == names[1:3]
    with pytest.raises(UserError, match="selects none"):
        open_paired(her2match, "train", include=["nothing_like_this"])


@pytest.fixture
def copy(her2match, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(her2match, dst)
    return dst


def test_unpaired_file_is_named(copy):
    victim = min((copy / "IHC_20x" / "train").glob("*.png"))
    victim.unlink()
    with pytest.raises(UserError, match=f"{victim.stem}.png.*no match"):
        open_paired(copy, "train")


def test_corrupt_file_is_named(copy):
    victim = min((copy / "HE_20x" / "val").glob("*.png"))
    victim.write_bytes(b"not a png at all")
    with pytest.raises(UserError, match=victim.name):
        open_paired(copy, "val")
    # without the up-front check, the item read names it
    ds = open_paired(copy, "val", check=False)
    idx = [p[0] for p in ds.pairs].index(victim)
    with pytest.raises(UserError, match=victim.name):
        ds[idx]


def test_size_mismatch_is_named(copy):
    from PIL import Image

    victim = min((copy / "IHC_20x" / "test").glob("*.png"))
    Image.new("RGB", (16, 16), "white").save(victim)
    with pytest.raises(UserError, match=f"{victim.name}.*same size"):
        open_paired(copy, "test")


def test_missing_root_and_unknown_layout(tmp_path):
    with pytest.raises(UserError, match="not found"):
        open_paired(tmp_path / "nope")
    (tmp_path / "random").mkdir()
    with pytest.raises(UserError, match="unknown dataset layout"):
        open_paired(tmp_path)
    with pytest.raises(UserError, match="layout"):
        open_paired(tmp_path, layout="zip")


def test_manifest_scores_accept_her2_tile_labels():
    """`her2 tile` writes '1+'-style labels; readers turn them into 0-3, empty into -1."""
    from her2core.datasets.layouts import parse_score

    assert [parse_score(v) for v in ("0", "1+", "2+", "3+", 3, "", None)] == [0, 1, 2, 3, 3, -1, -1]
    with pytest.raises(ValueError):
        parse_score("strong")
