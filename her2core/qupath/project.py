"""QuPath 0.6 projects written without QuPath: project.qpproj, classes, sidecar annotations.

Why plain JSON: QuPath's project file is JSON that QuPath reads lazily, so her2 can add the
H&E slide, the registered real HER2 (an ``affine`` server entry wrapping the HER2 slide —
no resampled copy needed) and the virtual HER2 of a region (an ``affine`` scale-and-shift
entry wrapping the region slide) without a JVM. Every entry carries its server metadata;
entries shown in the H&E frame carry the H&E's (size, levels, µm/px), so QuPath shows them
calibrated and unclipped (see `her2core.qupath.server`). Annotations cannot be written
into ``data/<entryID>/data.qpdata`` (Java serialization); they go to a sidecar GeoJSON per
image, imported by the Groovy script this module writes into the project's ``scripts/``.

Layout written inside the project folder::

    project.qpproj                  the image list (existing entries are never dropped)
    classifiers/classes.json        the class list, merged with what is there
    her2/annotations/<entryID>.geojson   sidecar GeoJSON per image, level-0 (x, y) of that entry
    scripts/her2_import_annotations.groovy  QuPath: Automate > Project scripts; or
                                   QuPath script -p project.qpproj -s scripts/her2_import_annotations.groovy
    project.qpproj.her2-backup-<time>   copy of the previous project file, before every change
                                   (likewise for a replaced sidecar or class list)

`add_images` is a transaction: every input is checked before anything is written, every
changed file is staged beside its target, the files it replaces are backed up (verified,
never 0 bytes), then the staged files are renamed into place, project.qpproj last. The
project folder is locked meanwhile (`her2core.util.outputs`), so concurrent runs queue up
and none loses an entry.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from her2core.errors import UserError
from her2core.qupath.geojson import (
    Feature,
    features_text,
    list_to_packed_rgb,
    packed_rgb_to_list,
    read_features,
    write_features,
)
from her2core.qupath.server import (
    frame_metadata,
    qupath_reader,
    region_placement,
    slide_metadata,
)
from her2core.util.atomic import write_json, write_text
from her2core.util.outputs import UNWRITABLE, locked, unwritable

QUPATH_VERSION = "0.6.0"
PROJECT_FILE = "project.qpproj"
CLASSES_FILE = Path("classifiers") / "classes.json"
SIDECAR_DIR = Path("her2") / "annotations"
IMPORT_SCRIPT = Path("scripts") / "her2_import_annotations.groovy"
# Entry metadata keys (QuPath shows them in the project's image list; scripts read them).
META_ROLE = "her2.role"
META_IMAGE_TYPE = "her2.image_type"
META_SIDECAR = "her2.sidecar"
META_PAIR = "her2.pair"
LOCK_WAIT_S = 120.0  # a concurrent `qupath project` waits this long for the one before it
IMAGE_TYPES = ("BRIGHTFIELD_H_E", "BRIGHTFIELD_H_DAB", "BRIGHTFIELD_OTHER", "FLUORESCENCE", "OTHER")


@dataclass
class ImageRequest:
    """One image to put into a project.

    `transform_xy` (3×3, HER2 level-0 (x, y) -> H&E level-0 (x, y)) turns the entry into an
    ``affine`` server wrapping `path`: QuPath then shows the HER2 slide in the H&E slide's
    pixel grid. `frame` (the H&E slide) gives that grid's size and µm/px, written into the
    entry; with `frame` and no `transform_xy`, a her2 region slide (virtual HER2 of an ROI)
    is placed by its recorded origin and scale (`server.region_placement`). `rois` are
    level-0 (x, y) features of the *entry* (for an affine entry: H&E space) and go into the
    entry's sidecar GeoJSON.
    """

    path: Path
    name: str | None = None
    image_type: str = "BRIGHTFIELD_H_E"
    role: str = "image"
    transform_xy: np.ndarray | None = None
    rois: Sequence[Feature] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    pair_with: int | None = None   # index (in the same request list) of the partner image
    frame: Path | None = None      # the slide whose level-0 grid this entry is shown in


@dataclass
class ProjectResult:
    project_dir: Path
    entries: list[dict]            # the entries added or updated, in request order
    backup: Path | None            # the previous project.qpproj copy (None for a new project)
    sidecars: dict[int, Path]      # entryID -> sidecar GeoJSON written
    import_script: Path
    groovy_lines: dict[int, str]   # entryID -> one Groovy line importing its sidecar


# ----------------------------------------------------------------------------- URIs and builders


def path_to_uri(path: str | Path) -> str:
    """Absolute file URI the way Java's File.toURI writes it (``file:/abs/path``)."""
    p = Path(path).expanduser().resolve()
    return "file:" + urllib.request.pathname2url(str(p))


def uri_to_path(uri: str) -> Path:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise UserError(f"{uri}: not a local file URI; her2 reads local slides only")
    return Path(urllib.request.url2pathname(parsed.path))


def uri_builder(path: str | Path, *, metadata: dict | None = None) -> dict:
    """serverBuilder of ``builderType`` ``uri`` (QuPath's DefaultImageServerBuilder).

    The reader is the one QuPath would pick (`server.qupath_reader`; none named for
    OME-TIFF, so QuPath ranks its readers); `metadata` is the server metadata QuPath uses
    instead of building the server.
    """
    provider, args = qupath_reader(path)
    out: dict = {"builderType": "uri"}
    if provider is not None:
        out["providerClassName"] = provider
    out["uri"] = path_to_uri(path)
    out["args"] = list(args)
    if metadata is not None:
        out["metadata"] = copy.deepcopy(metadata)
    return out


def affine_builder(wrapped: dict, matrix_xy, *, metadata: dict | None = None) -> dict:
    """serverBuilder of ``builderType`` ``affine`` wrapping another builder.

    QuPath's AffineTransformImageServer shows wrapped pixel (x, y) at ``T @ (x, y, 1)`` — the
    same direction as the registration (HER2 -> H&E). The transform is stored as Java's
    ``AffineTransform`` fields by name (QuPath's GsonTools AffineTransformProxy):
    m00 m01 m02 / m10 m11 m12 are the rows of the 2×3 matrix.
    """
    m = _as_affine(matrix_xy, "transform")
    out = {
        "builderType": "affine",
        "builder": copy.deepcopy(wrapped),
        "transform": {"m00": m[0, 0], "m10": m[1, 0], "m01": m[0, 1],
                      "m11": m[1, 1], "m02": m[0, 2], "m12": m[1, 2]},
    }
    if metadata is not None:
        out["metadata"] = copy.deepcopy(metadata)
    return out


def builder_matrix(builder: dict) -> np.ndarray:
    """3×3 (x, y) matrix of an ``affine`` serverBuilder (identity for ``uri``); nested affines compose."""
    kind = builder.get("builderType")
    if kind == "affine":
        t = builder.get("transform")
        if isinstance(t, dict):
            m = np.array([[t["m00"], t["m01"], t["m02"]], [t["m10"], t["m11"], t["m12"]], [0, 0, 1]],
                         dtype=float)
        elif isinstance(t, list) and len(t) == 6:  # java getMatrix() order, if ever written as an array
            m = np.array([[t[0], t[2], t[4]], [t[1], t[3], t[5]], [0, 0, 1]], dtype=float)
        else:
            raise UserError(f"affine serverBuilder has an unreadable transform: {t!r}")
        return m @ builder_matrix(builder.get("builder") or {})
    return np.eye(3)


def builder_uri(builder: dict) -> str | None:
    """The file URI at the bottom of a (possibly wrapped) serverBuilder."""
    if "uri" in builder:
        return builder["uri"]
    inner = builder.get("builder") or builder.get("server")
    return builder_uri(inner) if isinstance(inner, dict) else None


def _as_affine(matrix, what: str) -> np.ndarray:
    m = np.asarray(matrix, dtype=float)
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    if m.shape != (3, 3) or not np.all(np.isfinite(m)) or not np.allclose(m[2], [0, 0, 1]):
        raise UserError(f"{what}: expected a finite 3×3 affine (last row 0 0 1), got {m.tolist()}")
    if abs(np.linalg.det(m[:2, :2])) < 1e-12:
        raise UserError(f"{what}: the affine is not invertible; check the registration")
    return m


# ----------------------------------------------------------------------------- registration file

_MATRIX_KEYS = ("matrix", "matrix_xy", "affine", "transform", "her2_to_he", "M")
_HER2_KEYS = ("her2_path", "her2", "her2_slide", "moving", "moving_slide", "moving_path")
_HE_KEYS = ("he_path", "he", "he_slide", "fixed", "fixed_slide", "fixed_path")


@dataclass
class Registration:
    matrix_xy: np.ndarray       # HER2 level-0 (x, y) -> H&E level-0 (x, y)
    her2_slide: Path | None
    he_slide: Path | None
    source: Path
    has_field: bool = False     # a local displacement field refines the affine (QuPath shows only the affine)


def load_registration(path: str | Path) -> Registration:
    """Read a registration transform.json (`her2 register`): the 3×3 matrix and slide paths.

    Accepts the matrix under any of the keys ``matrix``, ``matrix_xy``, ``affine``,
    ``transform``, ``her2_to_he`` (3×3 or 2×3, rows), or a bare 3×3 list; slide paths at the
    top level or under ``info`` (``her2_path``/``he_path``, as `her2 register` writes them).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: transform file not found; run `her2 register` first") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable transform.json ({exc})") from None
    raw = data
    if isinstance(data, dict):
        raw = next((data[k] for k in _MATRIX_KEYS if k in data), None)
        if isinstance(raw, dict):
            raw = next((raw[k] for k in _MATRIX_KEYS if k in raw), None)
    if raw is None:
        raise UserError(f"{path}: no 3×3 matrix found (looked for keys {', '.join(_MATRIX_KEYS)})")
    try:
        m = _as_affine(raw, str(path))
    except (TypeError, ValueError):
        raise UserError(f"{path}: the transform matrix is not numeric") from None

    def slide(keys):
        if not isinstance(data, dict):
            return None
        info = data.get("info") if isinstance(data.get("info"), dict) else {}
        for where in (data, info):
            for k in keys:
                v = where.get(k)
                if isinstance(v, dict):
                    v = v.get("path")
                if isinstance(v, str) and v:
                    p = Path(v)
                    return p if p.is_absolute() else (path.parent / p)
        return None

    has_field = isinstance(data, dict) and bool(data.get("field"))
    return Registration(m, slide(_HER2_KEYS), slide(_HE_KEYS), path, has_field)


# ----------------------------------------------------------------------------- project files


def new_project(project_dir: str | Path) -> dict:
    now = _now_ms()
    return {"version": QUPATH_VERSION, "createTimestamp": now, "modifyTimestamp": now,
            "uri": path_to_uri(Path(project_dir) / PROJECT_FILE), "lastID": 0, "images": []}


def project_file(project: str | Path) -> Path:
    p = Path(project)
    return p if p.suffix == ".qpproj" else p / PROJECT_FILE


def load_project(project: str | Path) -> dict:
    """The parsed project.qpproj of a project folder (or the file itself)."""
    f = project_file(project)
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{f}: no QuPath project here; create one with `her2 qupath project --out DIR`") \
            from None
    except (OSError, json.JSONDecodeError) as exc:
        backups = latest_backups(f)
        fix = (f"restore it from {backups[0]}" if backups else
               "her2 made no backup of it; restore it from your own copy")
        raise UserError(f"{f}: not a readable QuPath project file ({exc}); {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images", []), list):
        raise UserError(f"{f}: not a QuPath project (no 'images' list)")
    data.setdefault("images", [])
    return data


def entry_id(entry: dict) -> int:
    return int(entry["entryID"])


def entry_path(entry: dict) -> Path | None:
    uri = builder_uri(entry.get("serverBuilder") or {})
    return uri_to_path(uri) if uri else None


def find_entry(project: dict, key: str | int) -> dict:
    """An entry by entryID, image name, or slide file name; UserError listing the choices."""
    for e in project["images"]:
        if str(e.get("entryID")) == str(key) or e.get("imageName") == key:
            return e
    for e in project["images"]:
        p = entry_path(e)
        if p is not None and p.name == str(key):
            return e
    names = ", ".join(f"{e.get('entryID')}={e.get('imageName')!r}" for e in project["images"])
    raise UserError(f"no image {key!r} in the project; choose one of: {names or '(none)'}")


def sidecar_path(project_dir: str | Path, entry: dict | int) -> Path:
    eid = entry if isinstance(entry, int) else entry_id(entry)
    return Path(project_dir) / SIDECAR_DIR / f"{eid}.geojson"


def groovy_import_line(project_dir: str | Path, entry: dict | int) -> str:
    """One Groovy line that imports an entry's sidecar (run it with that image open)."""
    eid = entry if isinstance(entry, int) else entry_id(entry)
    parts = ", ".join(f"'{p}'" for p in (*SIDECAR_DIR.parts, f"{eid}.geojson"))
    return f"importObjectsFromFile(buildFilePath(PROJECT_BASE_DIR, {parts}))"


def save_project(project_dir: str | Path, data: dict, *, previous: dict | None = None) -> Path | None:
    """Write project.qpproj atomically after backing up the current one.

    Refuses (RuntimeError: a bug, not a user error) to write a project that lost an entry of
    `previous`. Returns the backup path (None when there was no project file yet).
    """
    project_dir = Path(project_dir)
    f = project_dir / PROJECT_FILE
    _project_text(f, data, previous)  # the lost-entry check
    with locked(project_dir, "her2 qupath", wait_s=LOCK_WAIT_S):
        return _swap({f: _project_text(f, data, None).encode("utf-8")}).get(f)


def _backup(f: Path) -> Path | None:
    """A verified copy of `f` beside it (never a 0-byte or short one: a full disk is one line)."""
    if not f.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    b = f.with_name(f"{f.name}.her2-backup-{stamp}")
    n = 1
    while b.exists():
        b = f.with_name(f"{f.name}.her2-backup-{stamp}-{n}")
        n += 1
    part = b.with_name(f".{b.name}.part")
    try:
        shutil.copy2(f, part)
        if part.stat().st_size != f.stat().st_size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.replace(part, b)
    except OSError as exc:
        part.unlink(missing_ok=True)
        if exc.errno in UNWRITABLE:
            raise unwritable(b, exc) from None
        raise
    return b


def latest_backups(f: Path) -> list[Path]:
    """The backups `_backup` made of `f`, newest first (only complete, non-empty ones)."""
    found = [p for p in f.parent.glob(f"{f.name}.her2-backup-*") if p.is_file() and p.stat().st_size]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


def read_classes(project_dir: str | Path) -> list[dict]:
    """classifiers/classes.json as [{'name', 'color': [r, g, b]}] (empty when absent)."""
    f = Path(project_dir) / CLASSES_FILE
    if not f.exists():
        return []
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{f}: unreadable QuPath class list ({exc})") from None
    out = []
    for c in data.get("pathClasses", []):
        color = c.get("color")
        out.append({"name": c.get("name"),
                    "color": packed_rgb_to_list(color) if isinstance(color, int) else color})
    return out


def write_classes(project_dir: str | Path, classes: Sequence[dict]) -> Path:
    """Merge classes ({'name', 'color': [r, g, b]}) into classifiers/classes.json (backed up)."""
    f = Path(project_dir) / CLASSES_FILE
    raw = _merged_classes(f, classes)
    if raw is not None:
        _backup(f)
        write_json(f, raw)
    return f


def _merged_classes(f: Path, classes: Sequence[dict]) -> dict | None:
    """The class list file with `classes` added; None when it is there and needs no change."""
    raw: dict = {"pathClasses": []}
    if f.exists():
        try:
            raw = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{f}: unreadable QuPath class list ({exc})") from None
        raw.setdefault("pathClasses", [])
    known = {c.get("name") for c in raw["pathClasses"]}
    added = False
    for c in classes:
        if c.get("name") and c["name"] not in known:
            raw["pathClasses"].append({"name": c["name"],
                                       "color": list_to_packed_rgb(c.get("color") or [128, 128, 128])})
            known.add(c["name"])
            added = True
    return raw if added or not f.exists() else None


def _classes_of(features: Sequence[Feature]) -> list[dict]:
    seen: dict[str, dict] = {}
    for f in features:
        c = f.classification
        if c and c.get("name") and c["name"] not in seen:
            seen[c["name"]] = {"name": c["name"], "color": c.get("color")}
    return list(seen.values())


def _builder_key(builder: dict) -> str:
    """Identity of an image source (file, series, transform), to avoid duplicates.

    Ignores what only changes how it is opened: server metadata, the reader, ``--no-crop``
    and ``--series 0`` (entries QuPath or an older her2 wrote match the ones written now).
    """
    def strip(b):
        b = {k: v for k, v in b.items() if k not in ("metadata", "providerClassName")}
        if isinstance(b.get("args"), list):
            args = [str(a) for a in b["args"] if a != "--no-crop"]
            if args[:2] == ["--series", "0"]:
                args = args[2:]
            b["args"] = args
        if isinstance(b.get("builder"), dict):
            b["builder"] = strip(b["builder"])
        if isinstance(b.get("transform"), dict):
            b["transform"] = {k: round(float(v), 9) for k, v in b["transform"].items()}
        return b
    return json.dumps(strip(builder), sort_keys=True)


def add_images(project_dir: str | Path, images: Sequence[ImageRequest], *,
               classes: Sequence[dict] = ()) -> ProjectResult:
    """Create or extend a QuPath project with `images`; write sidecars, classes and the import script.

    An image whose source (uri + transform) is already in the project keeps its entry (its
    sidecar is replaced when new ROIs are given). Existing entries are never removed; the
    files replaced are backed up first. data.qpdata is never written. One transaction (see
    the module's docstring): a bad input changes nothing.
    """
    project_dir = Path(project_dir)
    if project_dir.suffix == ".qpproj":
        project_dir = project_dir.parent
    if project_dir.exists() and not project_dir.is_dir():
        raise UserError(f"{project_dir}: exists and is not a folder; choose a project folder")
    with locked(project_dir, "her2 qupath project", wait_s=LOCK_WAIT_S):
        return _add_images(project_dir, images, classes)


def _add_images(project_dir: Path, images: Sequence[ImageRequest], classes: Sequence[dict]) -> ProjectResult:
    f = project_dir / PROJECT_FILE
    if f.exists():
        data = load_project(project_dir)
        previous = copy.deepcopy(data)
    else:
        busy = project_dir.exists() and any(not p.name.startswith(".") for p in project_dir.iterdir())
        if busy and not (project_dir / SIDECAR_DIR).exists() and not (project_dir / "classifiers").exists():
            raise UserError(f"{project_dir}: folder is not empty and has no {PROJECT_FILE}; "
                            "choose an empty or new folder for the QuPath project")
        data = new_project(project_dir)
        previous = None

    # every input first: nothing is written when one of them is bad
    builders = []
    for req in images:
        src = Path(req.path)
        if not src.exists():
            raise UserError(f"{src}: slide not found; give an existing image file")
        if req.image_type not in IMAGE_TYPES:
            raise UserError(f"{src}: image type {req.image_type!r} unknown; use one of {IMAGE_TYPES}")
        if req.pair_with is not None and not 0 <= req.pair_with < len(images):
            raise UserError(f"{req.path}: pair_with={req.pair_with} is not an image of this request")
        builders.append(entry_builder(src, transform_xy=req.transform_xy, frame=req.frame))

    by_key = {_builder_key(e.get("serverBuilder", {})): e for e in data["images"]}
    known_ids = {entry_id(e) for e in data["images"]}
    next_id = max([int(data.get("lastID", 0))] + list(known_ids)) + 1
    touched: list[dict] = []
    staged: dict[Path, bytes] = {}
    orphans: list[Path] = []
    all_classes = list(classes)
    for req, builder in zip(images, builders):
        src = Path(req.path)
        key = _builder_key(builder)
        entry = by_key.get(key)
        if entry is None:
            entry = {"serverBuilder": builder, "entryID": next_id,
                     "randomizedName": str(uuid.uuid4()),
                     "imageName": req.name or _default_name(src, req.transform_xy is not None),
                     "metadata": {}}
            next_id += 1
            data["images"].append(entry)
            by_key[key] = entry
            # a sidecar left under a new entry's ID by a killed run is not this image's
            orphans.append(sidecar_path(project_dir, entry))
        else:
            if META_ROLE in (entry.get("metadata") or {}):
                entry["serverBuilder"] = builder  # an entry her2 wrote: current reader, metadata
            if req.name:
                entry["imageName"] = req.name
        md = entry.setdefault("metadata", {})
        md.update({str(k): str(v) for k, v in req.metadata.items()})
        md[META_ROLE] = req.role
        md[META_IMAGE_TYPE] = req.image_type
        if req.description is not None:
            entry["description"] = req.description
        if req.rois is not None:
            feats = list(req.rois)
            sc = sidecar_path(project_dir, entry)
            staged[sc] = features_text([_mark_sidecar(ft) for ft in feats]).encode("utf-8")
            md[META_SIDECAR] = sc.relative_to(project_dir).as_posix()
            all_classes.extend(_classes_of(feats))
        touched.append(entry)

    for req, entry in zip(images, touched):  # link pairs both ways (export_tiles.groovy reads it)
        if req.pair_with is not None:
            other = touched[req.pair_with]
            entry["metadata"][META_PAIR] = str(entry_id(other))
            other.setdefault("metadata", {})[META_PAIR] = str(entry_id(entry))

    classes_raw = _merged_classes(project_dir / CLASSES_FILE, all_classes)
    if classes_raw is not None:
        staged[project_dir / CLASSES_FILE] = (json.dumps(classes_raw, indent=2, sort_keys=True) + "\n").encode()
    script = project_dir / IMPORT_SCRIPT
    if not script.exists() or script.read_text(encoding="utf-8") != _IMPORT_SCRIPT:
        staged[script] = _IMPORT_SCRIPT.encode("utf-8")
    staged[f] = _project_text(f, data, previous).encode("utf-8")  # last: it commits the rest
    orphans = [p for p in orphans if p not in staged]
    backups = _swap(staged, orphans)
    sidecars = {entry_id(e): sidecar_path(project_dir, e) for e in touched
                if sidecar_path(project_dir, e) in staged}
    lines = {entry_id(e): groovy_import_line(project_dir, e) for e in touched
             if (project_dir / SIDECAR_DIR / f"{entry_id(e)}.geojson").exists()}
    return ProjectResult(project_dir, touched, backups.get(f), sidecars, script, lines)


def _project_text(f: Path, data: dict, previous: dict | None) -> str:
    """project.qpproj's new text; a RuntimeError (a bug) if it would lose an entry of `previous`."""
    if previous is not None:
        lost = {entry_id(e) for e in previous.get("images", [])} - {entry_id(e) for e in data["images"]}
        if lost:
            raise RuntimeError(f"refusing to write {f}: entries {sorted(lost)} would be lost")
    data["modifyTimestamp"] = _now_ms()
    data["lastID"] = max([int(data.get("lastID", 0))] + [entry_id(e) for e in data["images"]])
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _swap(staged: dict[Path, bytes], remove: Sequence[Path] = ()) -> dict[Path, Path]:
    """Write every staged file beside its target, back up what changes, then rename them into
    place in order (the last one commits); returns target -> backup. Unchanged files are left
    alone; a full disk or read-only folder fails before any target changed."""
    todo = {t: b for t, b in staged.items() if not (t.is_file() and t.read_bytes() == b)}
    parts: dict[Path, Path] = {}
    try:
        for target, data in todo.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            part = parts[target] = target.with_name(f".{target.name}.her2-txn-{os.getpid()}")
            with open(part, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        backups = {t: b for t in todo if (b := _backup(t)) is not None}
        for p in remove:
            p.unlink(missing_ok=True)
        for target, part in parts.items():
            os.replace(part, target)
        return backups
    except OSError as exc:
        if exc.errno in UNWRITABLE:
            raise unwritable(next(iter(todo), "project"), exc) from None
        raise
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)


def entry_builder(path: str | Path, *, transform_xy=None, frame: str | Path | None = None) -> dict:
    """The serverBuilder of one slide: plain ``uri``, or ``affine`` in `frame`'s level-0 grid.

    An affine entry gets `frame`'s server metadata (width, height, levels, µm/px): QuPath
    applies it over the AffineTransformImageServer's own, which would otherwise be the
    transformed bounding box from (0, 0) and, for a sheared matrix, no pixel size.
    """
    path = Path(path)
    inner = uri_builder(path, metadata=slide_metadata(path))
    if transform_xy is None and frame is not None:
        transform_xy = region_placement(path, frame)
        if np.allclose(transform_xy, np.eye(3), rtol=0, atol=1e-9):
            transform_xy = None  # already in the frame's grid (e.g. her2_registered.ome.tif)
    if transform_xy is None:
        return inner
    if frame is None:
        raise UserError(f"{path}: an entry in another slide's frame needs that slide "
                        "(the H&E) to take its size and microns per pixel from")
    name = f"{path.name} in {Path(frame).name}"
    return affine_builder(inner, transform_xy, metadata=frame_metadata(frame, name=name,
                                                                       like=path))


def _default_name(src: Path, registered: bool) -> str:
    return f"{src.name} (registered)" if registered else src.name


def _mark_sidecar(f: Feature) -> Feature:
    """Tag features so the import script can replace, not duplicate, them on a re-run."""
    g = copy.copy(f)
    g.metadata = {**f.metadata, META_SIDECAR: "1"}
    return g


def write_sidecar(project_dir: str | Path, entry: dict, features: Sequence[Feature]) -> Path:
    """Replace an entry's sidecar GeoJSON (used by `her2 qupath import`); classes merged too."""
    sc = sidecar_path(project_dir, entry)
    with locked(Path(project_dir), "her2 qupath import", wait_s=LOCK_WAIT_S):
        write_features(sc, [_mark_sidecar(f) for f in features])
        write_classes(project_dir, _classes_of(features))
        write_import_script(project_dir)
    return sc


def read_sidecar(project_dir: str | Path, entry: dict) -> list[Feature] | None:
    sc = sidecar_path(project_dir, entry)
    return read_features(sc) if sc.exists() else None


# ----------------------------------------------------------------------------- Groovy import script

_IMPORT_SCRIPT = """\
/**
 * her2: import the sidecar annotations her2 wrote for each image of this project.
 * Written by `her2 qupath project|import`; safe to re-run (replaces what it imported before).
 *
 * GUI:          Automate > Project scripts > her2_import_annotations, then
 *               Run > Run for project (or Run for the open image).
 * Command line: QuPath script -p PROJECT/project.qpproj -s PROJECT/scripts/her2_import_annotations.groovy
 *               (-s / --save keeps the imported objects; without it nothing is saved)
 * Reads         PROJECT/her2/annotations/<entryID>.geojson  (level-0 (x, y) pixels of that image)
 * Writes        PROJECT/her2/status/import/<entryID>.json   ({"ok": true|false, ...}) so a batch
 *               run can be checked: `her2 qupath check --project PROJECT --step import`.
 */
import qupath.lib.images.ImageData
import qupath.lib.io.PathIO

def entry = getProjectEntry()
def eid = entry.getID()
def statusDir = new File(buildFilePath(PROJECT_BASE_DIR, 'her2', 'status', 'import'))
statusDir.mkdirs()
def statusFile = new File(statusDir, eid + '.json')
def writeStatus = { boolean ok, String message, int n ->
    statusFile.text = groovy.json.JsonOutput.toJson([ok: ok, entryID: eid, image: entry.getImageName(),
                                                     objects: n, message: message]) + '\\n'
}

try {
    // Image type recorded by her2 (QuPath 0.6 keeps it in data.qpdata, which her2 cannot write)
    def wanted = entry.getMetadataValue('her2.image_type')
    def imageData = getCurrentImageData()
    if (wanted && imageData.getImageType() == ImageData.ImageType.UNSET)
        setImageType(wanted)

    def f = new File(buildFilePath(PROJECT_BASE_DIR, 'her2', 'annotations', eid + '.geojson'))
    if (!f.exists()) {
        writeStatus(true, 'no sidecar for this image', 0)
        return
    }
    // Remove what an earlier run imported (tagged with metadata her2.sidecar = 1)
    def old = getAllObjects().findAll { o ->
        try { return o.getMetadata()?.get('her2.sidecar') == '1' } catch (ignored) { return false }
    }
    if (!old.isEmpty())
        removeObjects(old, true)
    def objects = PathIO.readObjects(f)
    addObjects(objects)
    fireHierarchyUpdate()
    writeStatus(true, 'imported ' + f.getName(), objects.size())
    println "her2: imported ${objects.size()} objects into ${entry.getImageName()}"
} catch (Throwable t) {
    writeStatus(false, String.valueOf(t), 0)
    throw t
}
"""


def write_import_script(project_dir: str | Path) -> Path:
    """The project script that imports every sidecar (QuPath lists project scripts in Automate)."""
    p = Path(project_dir) / IMPORT_SCRIPT
    if not p.exists() or p.read_text(encoding="utf-8") != _IMPORT_SCRIPT:
        write_text(p, _IMPORT_SCRIPT)
    return p


def import_script_text() -> str:
    return _IMPORT_SCRIPT


# ----------------------------------------------------------------------------- status files


def read_status(project_dir: str | Path, step: str) -> dict[int, dict]:
    """entryID -> status dict written by the her2 Groovy scripts for `step`."""
    d = Path(project_dir) / "her2" / "status" / step
    out: dict[int, dict] = {}
    if not d.is_dir():
        return out
    for f in sorted(d.glob("*.json")):
        try:
            s = json.loads(f.read_text(encoding="utf-8"))
            out[int(f.stem)] = s
        except (ValueError, OSError) as exc:
            out[int(f.stem) if f.stem.isdigit() else -1] = {"ok": False, "message": f"unreadable: {exc}"}
    return out
