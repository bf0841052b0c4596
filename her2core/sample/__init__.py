"""Embedded example data: synthetic and real-H&E-based H&E/HER2 slide pairs and tile datasets.

    from her2core.sample import write_tile_dataset, write_cases, sample_pair
    from her2core.sample.truth import load_truth, her2_to_he_xy, he_to_her2_xy
"""

from her2core.sample.pairs import sample_pair
from her2core.sample.slides import real_case, synthetic_case, write_cases
from her2core.sample.tiles import write_tile_dataset
from her2core.sample.truth import he_to_her2_xy, her2_to_he_xy, load_truth

__all__ = ["he_to_her2_xy", "her2_to_he_xy", "load_truth", "real_case", "sample_pair", "synthetic_case",
           "write_cases", "write_tile_dataset"]
