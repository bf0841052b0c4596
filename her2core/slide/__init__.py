"""Slide I/O: open whole-slide images lazily and write pyramidal OME-TIFF in a stream.

    from her2core.slide import open_slide, write_pyramid
    with open_slide("he.ome.tif") as s:
        s.mpp, s.dimensions, s.read_region((x, y), level, (w, h))
"""

from her2core.slide.reader import Slide, open_slide
from her2core.slide.writer import write_pyramid

__all__ = ["Slide", "open_slide", "write_pyramid"]
