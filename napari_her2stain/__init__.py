"""napari-her2stain: the napari plugin (thin widgets; all computation in her2core)."""

__version__ = "0.1.0"
