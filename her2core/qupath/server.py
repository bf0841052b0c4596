"""What a QuPath 0.6 project entry needs to open a slide: reader, server metadata, placement.

Why here and not in QuPath: her2 writes project.qpproj without a JVM, so it must write what
QuPath would otherwise compute when it builds a server:

* the reader (``providerClassName``): none for OME-TIFF and generic TIFF, so QuPath ranks its
  readers itself (``ImageServers.buildServer``: Bio-Formats claims OME-TIFF at support 5);
  QuPath's OpenSlide reader for the vendor formats OpenSlide reads (it claims RGB slides at
  3.5, above Bio-Formats' 3), with ``--no-crop`` so QuPath's level 0 is OpenSlide's full
  level 0 — the frame her2 and napari use — even for ``.mrxs`` slides with a bounding box;
* the server ``metadata`` (size, levels, µm/px, pixel type, RGB channels) in the form Gson
  writes ``ImageServerMetadata``: QuPath uses it instead of building a server to list an
  entry, and ``AbstractServerBuilder.build`` applies it over what the server computed;
* for an entry shown in another slide's frame (registered HER2, virtual HER2 of a region),
  the ``affine`` matrix plus the frame's metadata: the frame's width, height and µm/px.
  QuPath's AffineTransformImageServer alone sizes itself to the transformed bounding box
  anchored at (0, 0) (clipping content when the translation is positive) and drops the
  pixel size whenever the matrix has shear; metadata written here overrides both.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from her2core.errors import UserError

OPENSLIDE = "qupath.lib.images.servers.openslide.OpenslideServerBuilder"
#: Formats QuPath 0.6 opens with OpenSlide (its support level beats Bio-Formats' for them).
OPENSLIDE_SUFFIXES = (".mrxs", ".ndpi", ".svs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
MICROMETER = "µm"   # QuPath's GeneralTools.SYMBOL_MICROMETER
RGB_CHANNELS = (("Red", (255, 0, 0)), ("Green", (0, 255, 0)), ("Blue", (0, 0, 255)))
DEFAULT_TILE = 256


def qupath_reader(path: str | Path) -> tuple[str | None, list[str]]:
    """(providerClassName or None, args) of the uri serverBuilder for `path`.

    None lets QuPath choose (it tries every reader in order of claimed support and falls
    back to the next when one fails); OpenSlide formats name QuPath's OpenSlide reader so
    that ``--no-crop`` (which only it understands) keeps the full level-0 frame.
    """
    name = Path(path).name.lower()
    if name.endswith(OPENSLIDE_SUFFIXES):
        return OPENSLIDE, ["--no-crop"]
    return None, []


def reader_description(path: str | Path) -> str:
    """Which QuPath reader opens `path` (for messages and the README table)."""
    provider, _ = qupath_reader(path)
    if provider == OPENSLIDE:
        return "OpenSlide (--no-crop)"
    name = Path(path).name.lower()
    if name.endswith((".ome.tif", ".ome.tiff")):
        return "QuPath's choice: Bio-Formats (OME-TIFF)"
    return "QuPath's choice"


def java_round(x: float) -> int:
    """Java's Math.round for the values used here (half up, not half to even)."""
    return math.floor(x + 0.5)


def level_downsample(full_w: int, full_h: int, w: int, h: int) -> float:
    """The downsample QuPath assigns a pyramid level (ImageResolutionLevel.estimateDownsample)."""
    dx, dy = full_w / w, full_h / h
    avg = (dx + dy) / 2.0
    pow2 = 2.0 ** java_round(math.log10(avg) / math.log10(2))
    if abs(full_h / pow2 - h) < 2 and abs(full_w / pow2 - w) < 2:
        return pow2
    if abs(full_w / java_round(dx) - w) <= 1:
        dx = float(java_round(dx))
    if abs(full_h / java_round(dy) - h) <= 1:
        dy = float(java_round(dy))
    if dx == dy:
        return dx
    if dx == pow2 or dy == pow2:
        return pow2
    return (dx + dy) / 2.0


def _packed_rgb(rgb) -> int:
    r, g, b = rgb
    v = (0xFF << 24) | (r << 16) | (g << 8) | b
    return v - (1 << 32)


def metadata_json(name: str, level_sizes: list[tuple[int, int]], mpp: float | None, *,
                  tile: int = DEFAULT_TILE, downsamples: list[float] | None = None,
                  channels: int = 3) -> dict:
    """ImageServerMetadata as QuPath's Gson writes it, for an RGB uint8 slide (or, `channels`
    1, a one-channel uint8 image such as a her2 confidence map: not RGB, one white channel).

    `level_sizes` are (width, height) per level, level 0 first; `downsamples` default to
    QuPath's own estimate from those sizes. `mpp` None: pixel units (uncalibrated).
    """
    w0, h0 = (int(v) for v in level_sizes[0])
    if downsamples is None:
        downsamples = [1.0] + [level_downsample(w0, h0, int(w), int(h)) for w, h in level_sizes[1:]]
    levels, last = [], 0.0
    for (w, h), d in zip(level_sizes, downsamples):
        if d <= last:  # QuPath drops levels out of order (ImageResolutionLevel.Builder.build)
            break
        levels.append({"downsample": float(d), "width": int(w), "height": int(h)})
        last = d
    if mpp is not None:
        size = {"value": float(mpp), "unit": MICROMETER}
    else:
        size = {"value": 1.0, "unit": "px"}
    return {
        "name": str(name), "width": w0, "height": h0, "sizeZ": 1, "sizeT": 1,
        "channelType": "DEFAULT", "isRGB": channels == 3, "pixelType": "UINT8",
        "levels": levels,
        "channels": ([{"name": n, "color": _packed_rgb(c)} for n, c in RGB_CHANNELS]
                     if channels == 3 else [{"name": "Channel 1",
                                             "color": _packed_rgb((255, 255, 255))}]),
        "pixelCalibration": {"pixelWidth": dict(size), "pixelHeight": dict(size),
                             "zSpacing": {"value": 1.0, "unit": "z-slice"},
                             "timeUnit": "SECONDS", "timepoints": []},
        "preferredTileWidth": int(tile), "preferredTileHeight": int(tile),
    }


def _open(path: Path):
    from her2core.slide import open_slide

    if not Path(path).exists():
        raise UserError(f"{path}: slide not found; give an existing image file")
    return open_slide(path)


def _tile_size(slide) -> int:
    try:
        chunks = slide.level_array(0).chunks
        return int(chunks[1]) if int(chunks[1]) >= 16 else DEFAULT_TILE
    except Exception:  # noqa: BLE001 - a backend without chunked arrays: QuPath's default
        return DEFAULT_TILE


def slide_metadata(path: str | Path, *, name: str | None = None) -> dict:
    """Server metadata of a slide as QuPath's reader reports it (size, levels, µm/px)."""
    with _open(Path(path)) as s:
        return metadata_json(name or Path(path).name, [tuple(d) for d in s.level_dimensions],
                             s.mpp, tile=_tile_size(s), channels=_channels(s))


def _channels(slide) -> int:
    """1 for a one-channel slide (a her2 confidence map), else 3 (shown as RGB)."""
    try:
        return 1 if slide.level_array(0).ndim == 2 else 3
    except Exception:  # noqa: BLE001 - a backend without arrays: RGB (vendor slides are)
        return 3


def frame_metadata(frame: str | Path, *, name: str, like: str | Path | None = None) -> dict:
    """Metadata of an entry shown in `frame`'s level-0 grid: the frame's size, levels, µm/px
    (and the channels of `like`, the slide shown there, when given)."""
    md = slide_metadata(frame, name=name)
    if like is not None:
        md.update({k: v for k, v in slide_metadata(like).items() if k in ("isRGB", "channels")})
    return md


def region_placement(region_slide: str | Path, frame: str | Path) -> np.ndarray:
    """3×3 (x, y) matrix from a her2 region slide's pixels to its source slide's level 0.

    `her2 translate --roi/--region` writes the region's level-0 origin and the source's
    µm/px (``origin_xy``, ``slide_mpp``); output pixel (c, r) covers source
    [x0 + c·f, x0 + (c+1)·f) × [y0 + r·f, …) with f = mpp / source mpp, i.e. the matrix
    [[f, 0, x0], [0, f, y0]]. A slide without an origin and at the frame's µm/px is the
    identity (already in the frame's grid, e.g. her2_registered.ome.tif).
    """
    with _open(Path(region_slide)) as v, _open(Path(frame)) as he:
        v_mpp = v.require_mpp()
        recorded = v.properties.get("slide_mpp")
        # an H&E without µm/px was translated with --mpp, which the region slide records
        he_mpp = he.mpp if he.mpp is not None else (float(recorded) if recorded else he.require_mpp())
        src_mpp = float(recorded or he_mpp)
        if abs(src_mpp - he_mpp) > 1e-6 * he_mpp:
            raise UserError(f"{region_slide}: was cut from a slide at {src_mpp:g} µm/px but "
                            f"{Path(frame).name} has {he_mpp:g} µm/px; give the H&E it came from")
        ox, oy = (float(c) for c in v.origin_xy)
        f = v_mpp / he_mpp
    return np.array([[f, 0.0, ox], [0.0, f, oy], [0.0, 0.0, 1.0]])
