"""How QuPath 0.6.0 reads a project entry, re-derived rule by rule from its source.

QuPath cannot run here, so the tests compute from an entry's JSON what QuPath would do with
it. Every rule cites the QuPath file and lines (tag v0.6.0 of github.com/qupath/qupath);
paths are below ``qupath-core/src/main/java/qupath/lib/images/servers/`` unless given in full.
Nothing here is her2 code: it is the test oracle, written from the Java, not from her2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BIOFORMATS = "qupath.lib.images.servers.bioformats.BioFormatsServerBuilder"
OPENSLIDE = "qupath.lib.images.servers.openslide.OpenslideServerBuilder"
MICROMETER = "µm"  # qupath/lib/common/GeneralTools.java L654 SYMBOL_MICROMETER


def readers_tried(builder: dict, path: str) -> list[str]:
    """The readers QuPath tries, in order, for a ``uri`` serverBuilder.

    * A named ``providerClassName``: only that reader is tried, and the entry fails when it
      cannot open the file (ImageServerBuilder.java L361-386, DefaultImageServerBuilder
      .buildOriginal).
    * None: every installed reader is asked for its support level, readers are sorted by it
      and tried in turn until one opens the file (ImageServerBuilder.java L373-374 ->
      ImageServers.java L315-333 buildServer, L352-406 getAllImageSupports,
      ImageServerProvider.java L306-319 UriImageSupportComparator).
    Support levels for a local RGB slide: Bio-Formats 5 for ``.ome.tif``/OME-XML TIFF, 3 for
    another TIFF or a file a Bio-Formats reader claims, 1 otherwise
    (qupath-extension-bioformats/.../BioFormatsServerBuilder.java L76-77, L131-173);
    OpenSlide 3.5 for a vendor file with one largest RGB image, 2.5 when the count is
    unknown (non-TIFF files such as .mrxs), 0 when OpenSlide detects no vendor
    (qupath-extension-openslide/.../OpenslideServerBuilder.java L78-111).
    """
    provider = builder.get("providerClassName")
    if provider:
        return [provider]
    name = path.lower()
    tiff = name.endswith((".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif", ".qptiff"))
    bf = 5.0 if name.endswith((".ome.tif", ".ome.tiff")) else (3.0 if tiff else 1.0)
    openslide_vendor = name.endswith((".svs", ".ndpi", ".scn", ".bif", ".mrxs", ".vms", ".vmu",
                                      ".svslide", ".tif", ".tiff"))
    os_level = 0.0 if not openslide_vendor else (3.5 if tiff else 2.5)
    ranked = sorted([(bf, BIOFORMATS), (os_level, OPENSLIDE)], key=lambda t: -t[0])
    return [cls for level, cls in ranked if level > 0]


@dataclass
class ServerView:
    """What QuPath's server of an entry shows: size, pixel size, and where pixels come from."""

    width: int
    height: int
    pixel_width_um: float       # NaN when uncalibrated (PixelCalibration.java L213-217)
    pixel_height_um: float
    entry_to_file: np.ndarray   # 3×3: entry level-0 (x, y) -> (x, y) in the file's level 0
    file: Path

    @property
    def averaged_pixel_size_microns(self) -> float:
        """PixelCalibration.getAveragedPixelSizeMicrons (PixelCalibration.java L195-197)."""
        return (self.pixel_width_um + self.pixel_height_um) / 2.0

    def file_pixel(self, xy: np.ndarray) -> np.ndarray:
        """File level-0 pixel (col, row) drawn at entry points (x, y); -1 outside the server.

        AffineTransformImageServer.readRegion (L190-262) draws the wrapped image through the
        transform with Graphics2D (nearest neighbour for 8-bit RGB, L226-233), so the pixel
        shown at an entry point p is the file pixel containing T^-1 p; only entry pixels
        within [0, width) x [0, height) exist at all.
        """
        xy = np.atleast_2d(np.asarray(xy, float))
        src = (self.entry_to_file[:2, :2] @ xy.T).T + self.entry_to_file[:2, 2]
        out = np.floor(src).astype(int)
        outside = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= self.width) | (xy[:, 1] >= self.height)
        out[outside] = -1
        return out


def _calibration(md: dict) -> tuple[float, float]:
    cal = md.get("pixelCalibration") or {}
    out = []
    for key in ("pixelWidth", "pixelHeight"):
        q = cal.get(key) or {"value": 1.0, "unit": "px"}
        out.append(float(q["value"]) if q.get("unit") == MICROMETER else math.nan)
    return out[0], out[1]


def _java_is_general(a: np.ndarray) -> bool:
    """(AffineTransform.getType() & TYPE_GENERAL_TRANSFORM) != 0, java.awt.geom.AffineTransform
    calculateType: shear and scale both present with non-orthogonal columns."""
    m00, m01, m10, m11 = a[0, 0], a[0, 1], a[1, 0], a[1, 1]
    if m01 == 0 and m10 == 0:
        return False
    if m00 == 0 and m11 == 0:
        return False
    return m00 * m01 + m10 * m11 != 0


def updated_calibration(px_w: float, px_h: float, t: np.ndarray) -> tuple[float, float]:
    """AffineTransformImageServer.updatePixelCalibration (L139-181) for a µm calibration."""
    if np.allclose(t, np.eye(3), rtol=0, atol=0) or math.isnan(px_w):
        return px_w, px_h
    inv = np.linalg.inv(t)
    if _java_is_general(inv):
        return math.nan, math.nan           # L154-157: default calibration (pixels)
    x_scale = math.hypot(inv[0, 0], inv[1, 0])   # L160-164: deltaTransform of (1,0), (0,1)
    y_scale = math.hypot(inv[0, 1], inv[1, 1])
    if inv[0, 0] == 0 and inv[1, 1] == 0:        # L170-174: quadrant rotation swaps w, h
        x_scale, y_scale = px_h * y_scale / px_w, px_w * x_scale / px_h
    elif (inv[0, 1] != 0 or inv[1, 0] != 0) and px_w != px_h:
        return math.nan, math.nan           # L175-178
    return px_w * x_scale, px_h * y_scale   # L180 createScaledInstance


def server_view(builder: dict, *, open_file=None) -> ServerView:
    """The server QuPath builds from a serverBuilder (``uri`` or ``affine`` over ``uri``).

    Metadata in a builder replaces the server's own: AbstractServerBuilder.build
    (ImageServerBuilder.java L188-196) calls setMetadata, which accepts any metadata with the
    same pixel type and channel/z/t counts (AbstractImageServer.java L272-286,
    ImageServerMetadata.java L800-818); width, height and pixel size are then read from it
    (AbstractImageServer.java L242-248). Without metadata a ``uri`` server reports the file's
    own size and pixel size (`open_file(path)` -> (width, height, mpp or None)), and an
    ``affine`` server the transformed bounding box anchored at (0, 0) — its x/y offset is
    never used when reading (AffineTransformImageServer.java L67-81, L100-103, L218-224) —
    with the pixel calibration of updatePixelCalibration (L106-111).
    """
    from her2core.qupath.project import uri_to_path

    kind = builder.get("builderType")
    md = builder.get("metadata")
    if kind == "uri":
        path = uri_to_path(builder["uri"])
        if md is not None:
            pw, ph = _calibration(md)
            return ServerView(int(md["width"]), int(md["height"]), pw, ph, np.eye(3), path)
        w, h, mpp = open_file(path)
        cal = math.nan if mpp is None else float(mpp)
        return ServerView(int(w), int(h), cal, cal, np.eye(3), path)
    if kind != "affine":
        raise ValueError(f"builderType {kind!r} is not modelled")
    inner = server_view(builder["builder"], open_file=open_file)
    tj = builder["transform"]  # GsonTools.java L618-640 AffineTransformProxy: fields by name
    t = np.array([[tj["m00"], tj["m01"], tj["m02"]], [tj["m10"], tj["m11"], tj["m12"]], [0, 0, 1]],
                 float)
    to_file = inner.entry_to_file @ np.linalg.inv(t)
    if md is not None:
        pw, ph = _calibration(md)
        return ServerView(int(md["width"]), int(md["height"]), pw, ph, to_file, inner.file)
    corners = np.array([[0, 0], [inner.width, 0], [0, inner.height], [inner.width, inner.height]],
                       float)
    tc = (t[:2, :2] @ corners.T).T + t[:2, 2]
    bw = tc[:, 0].max() - tc[:, 0].min()
    bh = tc[:, 1].max() - tc[:, 1].min()
    pw, ph = updated_calibration(inner.pixel_width_um, inner.pixel_height_um, t)
    return ServerView(math.ceil(bw), math.ceil(bh), pw, ph, to_file, inner.file)


def level_downsample_java(full_w: int, full_h: int, w: int, h: int) -> float:
    """ImageResolutionLevel.Builder.estimateDownsample (ImageServerMetadata.java L1124-1168),
    used by both QuPath readers for every level (BioFormats/OpenslideImageServer.java L216-218
    ``addLevel(w, h)``). Java's Math.round is half-up."""
    def jround(v):
        return math.floor(v + 0.5)

    dx, dy = full_w / w, full_h / h
    avg = (dx + dy) / 2.0
    pow2 = math.pow(2, jround(math.log10(avg) / math.log10(2)))
    if abs(full_h / pow2 - h) < 2 and abs(full_w / pow2 - w) < 2:
        return pow2
    if abs(full_w / jround(dx) - w) <= 1:
        dx = jround(dx)
    if abs(full_h / jround(dy) - h) <= 1:
        dy = jround(dy)
    if dx == dy:
        return float(dx)
    if dx == pow2 or dy == pow2:
        return pow2
    return (dx + dy) / 2.0
