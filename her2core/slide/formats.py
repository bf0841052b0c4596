"""Which backend reads a slide: by suffix where it is unambiguous, by content where it is not.

- OME-TIFF (by content, whatever the suffix) -> tifffile: her2core's own outputs,
  SubIFD pyramids and the her2core map annotation (origin, source µm/px) that
  OpenSlide does not read.
- .mrxs .ndpi .scn .bif .vms .vmu .svslide .dcm -> OpenSlide (only it reads them).
- .svs -> OpenSlide (Aperio; a damaged one gets OpenSlide's clear refusal).
- .tif, .tiff and anything else: OpenSlide when it recognises a vendor
  flavour (Aperio, Philips, Ventana, Trestle, Leica, Hamamatsu, DICOM), or a
  generic pyramidal TIFF whose levels tifffile does not see as one pyramid
  (top-level IFDs); tifffile otherwise (strip TIFF, plain TIFF, SubIFD pyramids).
"""

from __future__ import annotations

from pathlib import Path

#: Suffixes only OpenSlide reads (DICOM WSI: one .dcm file of the series' folder).
OPENSLIDE_SUFFIXES = (".mrxs", ".ndpi", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm")
#: TIFF-family suffixes; which backend reads them is decided by content.
TIFF_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.btf", ".tif", ".tiff", ".svs", ".qptiff",
                 ".btf", ".tf2", ".tf8")
#: Every slide suffix her2core opens.
SLIDE_SUFFIXES = TIFF_SUFFIXES + OPENSLIDE_SUFFIXES

BACKENDS = ("tifffile", "openslide")


def has_slide_suffix(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(SLIDE_SUFFIXES)


def is_slide_path(path: str | Path) -> bool:
    """A slide suffix, and for .dcm a DICOM whole-slide image (not any DICOM file)."""
    path = Path(path)
    if not has_slide_suffix(path):
        return False
    if path.name.lower().endswith(".dcm"):
        return _openslide_facts(path)[0] == "dicom"
    return True


def choose_backend(path: str | Path) -> str:
    """"tifffile" or "openslide" for `path` (which must exist)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(OPENSLIDE_SUFFIXES):
        return "openslide"
    tiff = _tiff_facts(path)
    if tiff is not None and tiff["ome"]:
        return "tifffile"
    if name.endswith(".svs"):
        return "openslide"
    vendor, os_levels = _openslide_facts(path)
    if vendor is None:
        return "tifffile"  # not a slide OpenSlide knows: tifffile reads it or says why not
    if vendor != "generic-tiff":
        return "openslide"
    if tiff is None or os_levels > tiff["levels"]:
        return "openslide"
    return "tifffile"


def _tiff_facts(path: Path) -> dict | None:
    import tifffile

    from her2core.slide.tiff_backend import quiet_tifffile

    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as t:
            return {"ome": bool(t.is_ome), "levels": len(t.series[0].levels)}
    except Exception:  # noqa: BLE001 - not a TIFF tifffile parses
        return None


def _openslide_facts(path: Path) -> tuple[str | None, int]:
    """(OpenSlide's vendor name or None, its level count)."""
    try:
        import openslide
    except (ImportError, OSError):
        return None, 0
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        return None, 0
    if vendor is None:
        return None, 0
    if vendor != "generic-tiff":
        return vendor, 0
    try:
        with openslide.OpenSlide(str(path)) as s:
            return vendor, s.level_count
    except openslide.OpenSlideError:
        return None, 0
