"""`her2 qupath project` as a transaction (issue #18): a failing run changes nothing, concurrent
runs lose no entry, a full disk leaves no 0-byte backup, a killed run's sidecar is not inherited
by the next image, and the corrupt-project message names a backup that exists."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from her2core import cli
from her2core.errors import UserError
from her2core.qupath.geojson import read_features
from her2core.qupath.project import ImageRequest, add_images, load_project
from her2core.slide import write_pyramid

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures" / "qupath"
ROIS = FIX / "qupath_v06_collection.geojson"


def _slides(root: Path, n: int) -> list[Path]:
    rgb = np.full((96, 128, 3), 235, np.uint8)
    rgb[20:70, 30:100] = (180, 90, 160)
    out = []
    for i in range(n):
        p = root / "slides" / f"s{i}.ome.tif"
        p.parent.mkdir(parents=True, exist_ok=True)
        out.append(write_pyramid(p, rgb, mpp=0.5, tile=64, min_size=64))
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _other_rois(tmp_path: Path) -> Path:
    g = json.loads(ROIS.read_text())
    for f in g["features"]:
        f["properties"]["name"] = "changed"
    p = tmp_path / "other.geojson"
    p.write_text(json.dumps(g))
    return p


def test_a_failing_run_changes_nothing(tmp_path, capsys):
    he, = _slides(tmp_path, 1)
    proj = tmp_path / "proj"
    assert cli.main(["qupath", "project", "--out", str(proj), "--image", str(he), "--rois", str(ROIS)]) == 0
    before = _files(proj)
    capsys.readouterr()
    # new ROIs for the H&E and a --virtual that does not exist: refused before any write
    rc = cli.main(["qupath", "project", "--out", str(proj), "--image", str(he), "--rois",
                   str(_other_rois(tmp_path)), "--virtual", str(tmp_path / "missing.ome.tif")])
    err = capsys.readouterr().err
    assert rc == 2 and "missing.ome.tif" in err and len(err.strip().splitlines()) == 1
    assert _files(proj) == before  # the sidecar her2/annotations/1.geojson included


def test_killed_runs_sidecar_is_not_inherited_by_the_next_image(tmp_path):
    a, b = _slides(tmp_path, 2)
    proj = tmp_path / "proj"
    add_images(proj, [ImageRequest(a)])
    orphan = proj / "her2" / "annotations" / "2.geojson"  # as a run killed after its sidecar left it
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_text(ROIS.read_text())
    res = add_images(proj, [ImageRequest(b)])
    assert res.entries[0]["entryID"] == 2 and not orphan.exists() and 2 not in res.groovy_lines


def test_concurrent_runs_lose_no_entry(tmp_path):
    slides = _slides(tmp_path, 6)
    proj = tmp_path / "proj"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for rnd in range(2):  # two rounds of three processes at once (the second extends a project)
        group = slides[3 * rnd:3 * rnd + 3]
        procs = [subprocess.Popen([sys.executable, "-m", "her2core", "qupath", "project", "--out", str(proj),
                                   "--image", str(s)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for s in group]
        for p in procs:
            assert p.wait(timeout=120) == 0, p.stderr.read()
    data = load_project(proj)
    names = sorted(Path(e["serverBuilder"]["uri"]).name for e in data["images"])
    assert names == sorted(s.name for s in slides)
    assert sorted(e["entryID"] for e in data["images"]) == list(range(1, 7)) and data["lastID"] == 6
    assert not list(proj.rglob("*.her2-txn-*")) and not (tmp_path / ".proj.lock").exists()


def test_a_short_backup_is_refused_and_removed(tmp_path, monkeypatch):
    a, b = _slides(tmp_path, 2)
    proj = tmp_path / "proj"
    add_images(proj, [ImageRequest(a)])
    before = _files(proj)

    def short_copy(src, dst, **kw):
        Path(dst).write_bytes(b"")  # what a full disk left: a 0-byte "backup"

    monkeypatch.setattr(shutil, "copy2", short_copy)
    with pytest.raises(UserError, match="No space left on device"):
        add_images(proj, [ImageRequest(b)])
    assert _files(proj) == before  # no backup file at all, project unchanged


def test_full_disk_leaves_the_project_and_no_zero_byte_backup(tmp_path):
    a, b = _slides(tmp_path, 2)
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=False,
                       capture_output=True)
    if r.returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root); test_a_short_backup covers it")
    try:
        proj = mnt / "proj"
        add_images(proj, [ImageRequest(a, rois=read_features(ROIS))])
        before = _files(proj)
        with open(mnt / "filler", "wb", buffering=0) as fh:  # fill the disk to the last byte
            for block in (4096, 1):
                try:
                    while True:
                        fh.write(b"\1" * block)
                except OSError:
                    pass
        with pytest.raises(UserError, match="No space left on device"):
            add_images(proj, [ImageRequest(b)])
        assert _files(proj) == before
        assert all(p.stat().st_size > 0 for p in proj.rglob("*her2-backup*"))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_corrupt_project_message_names_a_backup_that_exists(tmp_path):
    a, b = _slides(tmp_path, 2)
    proj = tmp_path / "proj"
    add_images(proj, [ImageRequest(a)])
    add_images(proj, [ImageRequest(b)])  # backs up the one-entry project
    (proj / "project.qpproj").write_text("{ torn")
    with pytest.raises(UserError) as e:
        load_project(proj)
    named = re.search(r"restore it from (\S+)$", str(e.value))
    assert named and Path(named.group(1)).is_file()
    assert len(json.loads(Path(named.group(1)).read_text())["images"]) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "project.qpproj").write_text("{ torn")
    with pytest.raises(UserError, match="her2 made no backup of it"):
        load_project(empty)
