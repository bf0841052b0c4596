"""Microns per pixel from what each format records: TIFF resolution tags, vendor properties.

OpenSlide normalises most vendors to `openslide.mpp-x`/`-y` (from Aperio `MPP`,
Hamamatsu/Leica/generic TIFF resolution tags, MIRAX `MICROMETER_PER_PIXEL_X`,
Ventana `ScanRes`, Philips `DICOM_PIXEL_SPACING`, DICOM `PixelSpacing`); where it
does not (Leica SCN, whose XML gives each image's size in nm and in pixels; a
property it leaves out; a TIFF in inches), the vendor's own key is read here. A value that is missing, zero or not finite is "no microns per pixel".
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

_INCH_UM = 25400.0
_CM_UM = 1e4

#: Plausible level-0 microns per pixel, [low, high]: from an oil-immersion 100x scan (~0.06) to a
#: thumbnail-like overview. Outside it a value is a unit mistake (2.5e-6: metres taken for µm)
#: whose pixel counts would hang registration or ask for petabytes; it is refused, not used.
MPP_RANGE = (0.01, 100.0)


def plausible_mpp(mpp: float) -> bool:
    """Whether `mpp` is a finite level-0 µm/px within MPP_RANGE."""
    return math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def mpp_from_resolution(pixels_per_unit: float, unit) -> float | None:
    """µm/px from a TIFF XResolution and ResolutionUnit (2/'inch', 3/'centimeter').

    Inch resolutions coarser than 50 µm/px are the 72/96 dpi defaults of
    ordinary image writers, not a scan resolution, and count as missing.
    """
    if not pixels_per_unit or not math.isfinite(pixels_per_unit) or pixels_per_unit <= 0:
        return None
    unit = str(unit).strip().lower()
    if unit in ("3", "centimeter", "centimetre", "cm"):
        return _CM_UM / pixels_per_unit
    if unit in ("2", "inch", "in"):
        mpp = _INCH_UM / pixels_per_unit
        return mpp if mpp < 50 else None
    return None


def _positive(value) -> float | None:
    try:
        v = float(str(value).strip().strip('"'))
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _mean_xy(x, y) -> float | None:
    vx, vy = _positive(x), _positive(y)
    if vx and vy:
        return (vx + vy) / 2.0
    return vx or vy


def vendor_mpp(props: dict[str, str], description: str | None = None) -> float | None:
    """Level-0 µm/px from an OpenSlide property map, or None when the slide records none.

    `description`: the first TIFF ImageDescription, which OpenSlide keeps out of the
    properties of a Leica SCN.
    """
    mpp = _mean_xy(props.get("openslide.mpp-x"), props.get("openslide.mpp-y"))
    if mpp and props.get("tiff.ResolutionUnit", "").lower() == "inch" and mpp >= 50:
        return None  # OpenSlide took a 72/96 dpi writer default for a scan resolution
    if mpp:
        return mpp
    for key in ("aperio.MPP", "ventana.ScanRes"):
        if _positive(props.get(key)):
            return _positive(props[key])
    spacing = props.get("philips.DICOM_PIXEL_SPACING")  # '"0.000243" "0.000243"', millimetres
    if spacing:
        vals = [_positive(v) for v in re.findall(r"[0-9.eE+-]+", spacing)]
        vals = [v for v in vals if v]
        if vals:
            return 1000.0 * sum(vals[:2]) / len(vals[:2])
    leica_xml = description or props.get("tiff.ImageDescription")
    if props.get("openslide.vendor") == "leica" and leica_xml:
        mpp = _leica_mpp(leica_xml)
        if mpp:
            return mpp
    if props.get("tiff.XResolution"):
        return mpp_from_resolution(_positive(props["tiff.XResolution"]) or 0.0,
                                   props.get("tiff.ResolutionUnit", ""))
    return None


def _leica_mpp(xml: str) -> float | None:
    """µm/px of the first brightfield main image of a Leica SCN: view width (nm) / pixels."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    ns = {"d": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {"d": ""}
    collection = root.find("d:collection", ns)
    if collection is None:
        return None
    for image in collection.findall("d:image", ns):
        view = image.find("d:view", ns)
        dims = [d for d in image.findall("d:pixels/d:dimension", ns) if d.get("z", "0") == "0"]
        source = image.find("d:scanSettings/d:illuminationSettings/d:illuminationSource", ns)
        if view is None or not dims or source is None or source.text != "brightfield":
            continue
        if (view.get("sizeX"), view.get("offsetX"), view.get("offsetY")) == \
                (collection.get("sizeX"), "0", "0"):
            continue  # the macro image spans the whole collection
        nm = _positive(view.get("sizeX"))
        px = max(_positive(d.get("sizeX")) or 0.0 for d in dims)
        if nm and px:
            return nm / px / 1000.0
    return None
