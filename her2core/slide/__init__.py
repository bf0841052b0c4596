"""Slide I/O: open whole-slide images lazily and write pyramidal OME-TIFF in a stream.

    from her2core.slide import open_slide, write_pyramid
    with open_slide("he.svs") as s:      # OME-TIFF, SVS, MRXS, NDPI, SCN, BIF, DICOM, ...
        s.mpp, s.dimensions, s.read_region((x, y), level, (w, h))

One reader API (her2core.slide.base.Slide), two backends: tifffile/zarr for
OME-TIFF and plain TIFF, OpenSlide for vendor formats (her2core.slide.formats).
"""

from her2core.slide.base import Slide
from her2core.slide.formats import SLIDE_SUFFIXES, choose_backend, has_slide_suffix
from her2core.slide.reader import open_slide
from her2core.slide.writer import write_pyramid

__all__ = ["SLIDE_SUFFIXES", "Slide", "choose_backend", "has_slide_suffix", "open_slide",
           "write_pyramid"]
