"""her2core: the computing backend of napari-her2stain (no Qt, no napari).

Virtual HER2 immunohistochemistry from H&E: slide I/O, registration, tiling,
the six HER2match frameworks on one training engine, tiled slide inference,
evaluation and the mixed-effects comparison. Import submodules explicitly;
this package imports nothing heavy at import time.
"""

__version__ = "0.1.0"

from her2core.errors import UserError

__all__ = ["UserError", "__version__"]
