"""Optional paquo backend: talk to a real QuPath installation through paquo (JPype).

Why optional: paquo starts a JVM from QuPath's own runtime *at import* and fails when no
QuPath is installed, so nothing here is imported at module load. `qupath_available()`
finds QuPath exactly as paquo does (its settings: PAQUO_QUPATH_DIR, search dirs, conda)
without starting a JVM. Everything else in her2 works through files (`project`, `geojson`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from her2core.errors import UserError
from her2core.qupath.geojson import Feature, parse_features

# our image-type names -> paquo's QuPathImageType member names (the same words)
_IMAGE_TYPES = ("BRIGHTFIELD_H_E", "BRIGHTFIELD_H_DAB", "BRIGHTFIELD_OTHER", "FLUORESCENCE", "OTHER", "UNSET")


def class_names(classification: dict | None) -> list[str]:
    """The name chain of a (possibly derived) class: 'Tumor: Positive' -> ['Tumor', 'Positive'].

    QuPath splits a class string on ':' and strips each part (PathClass.fromString, v0.6.0
    L561-564); paquo wants the chain as parents because it refuses ':' in one name.
    """
    if not classification:
        return []
    names = classification.get("names")
    if isinstance(names, list) and names:
        return [str(n).strip() for n in names]
    name = classification.get("name")
    return [p.strip() for p in str(name).split(":")] if name else []


def qupath_available() -> tuple[bool, str]:
    """(found, reason): is there a QuPath paquo would use? Never starts the JVM."""
    try:
        from paquo._config import settings, to_kwargs
        from paquo.jpype_backend import find_qupath
    except ImportError as exc:
        return False, f"paquo is not installed ({exc}); pip install paquo"
    try:
        info = find_qupath(**to_kwargs(settings))
    except ValueError as exc:  # paquo: "no valid qupath installation found"
        return False, f"{exc} (set PAQUO_QUPATH_DIR or install QuPath 0.6: python -m paquo get_qupath)"
    except Exception as exc:  # noqa: BLE001 - malformed paquo settings must not crash her2
        return False, f"paquo could not look for QuPath: {exc}"
    return True, f"QuPath at {info.app_dir}"


def _paquo():
    ok, reason = qupath_available()
    if not ok:
        raise UserError(f"the paquo backend needs QuPath: {reason}")
    import paquo.classes
    import paquo.images
    import paquo.projects
    return paquo


class PaquoBackend:
    """A QuPath project opened through paquo: add images, add and read annotations.

    Use as a context manager (saves on exit, as paquo does)::

        with PaquoBackend("proj", mode="a") as qp:
            e = qp.add_image("he.ome.tif", "BRIGHTFIELD_H_E")
            qp.add_features(e, features)
    """

    def __init__(self, project_dir: str | Path, mode: str = "a"):
        paquo = _paquo()
        self._paquo = paquo
        self.project = paquo.projects.QuPathProject(Path(project_dir), mode=mode)

    def __enter__(self) -> PaquoBackend:  # noqa: PYI034
        self.project.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.project.__exit__(*exc)

    def add_image(self, path: str | Path, image_type: str = "BRIGHTFIELD_H_E", *,
                  allow_duplicates: bool = False):
        if image_type not in _IMAGE_TYPES:
            raise UserError(f"{path}: image type {image_type!r} unknown; use one of {_IMAGE_TYPES}")
        it = getattr(self._paquo.images.QuPathImageType, image_type)
        return self.project.add_image(Path(path), image_type=it, allow_duplicates=allow_duplicates)

    def image(self, key: str | int):
        for e in self.project.images:
            if e.image_name == key or str(getattr(e, "entry_id", "")) == str(key):
                return e
        names = ", ".join(e.image_name for e in self.project.images)
        raise UserError(f"no image {key!r} in {self.project.path}; choose one of: {names}")

    def path_class(self, classification: dict | None):
        """paquo class for a classification; derived classes ('Tumor: Positive') as a parent chain."""
        QuPathPathClass = self._paquo.classes.QuPathPathClass
        pc = None
        names = class_names(classification)
        for i, name in enumerate(names):
            last = i == len(names) - 1
            rgb = (classification.get("color") if last else None) or None
            color = None if rgb is None else "#{:02x}{:02x}{:02x}".format(*[int(v) for v in rgb[:3]])
            pc = QuPathPathClass(name, parent=pc, color=color)
        return pc

    def set_classes(self, classes: Sequence[dict]) -> None:
        """Add classes ({'name', 'color': [r, g, b]}, derived ones too) to the project's class list."""
        have = {c.id: c for c in self.project.path_classes}
        for c in classes:
            pc = self.path_class(c)
            if pc is not None and pc.id not in have:
                have[pc.id] = pc
        self.project.path_classes = list(have.values())

    def add_features(self, entry, features: Sequence[Feature]) -> int:
        """Add objects (geometry, class, name, measurements) to an image; returns the count.

        Annotations, detections, tiles and cells (with their nucleus) keep their kind.
        """
        self.set_classes([f.classification for f in features if f.classification])
        h = entry.hierarchy
        n = 0
        with h.no_autoflush():
            for f in features:
                pc = self.path_class(f.classification)
                kw = {"roi": f.geometry, "path_class": pc, "measurements": dict(f.measurements)}
                if f.object_type == "cell" and f.nucleus is not None:
                    obj = h.add_cell(nucleus_roi=f.nucleus, **kw)
                elif f.object_type == "tile":
                    obj = h.add_tile(**kw)
                elif f.object_type in ("detection", "cell"):
                    obj = h.add_detection(**kw)
                else:
                    obj = h.add_annotation(**kw)
                if f.name:
                    obj.name = f.name
                n += 1
        return n

    def read_features(self, entry) -> list[Feature]:
        """Annotations and detections (cells and tiles included) of an image as Features.

        paquo's ``hierarchy.to_geojson()`` holds annotations only, so each object is
        serialised by QuPath's own Gson (``to_geojson`` per object).
        """
        h = entry.hierarchy
        objs = [o.to_geojson() for o in h.annotations] + [o.to_geojson() for o in h.detections]
        return parse_features(objs, source=str(entry.image_name))
