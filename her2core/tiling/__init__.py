"""Tiling: tissue mask, tiles inside tissue ∩ ROIs, QC, case-stratified splits, dataset writer.

    from her2core.tiling import TileConfig, build_dataset, read_cases_csv
    summary = build_dataset(read_cases_csv("cases.csv"), "dataset/", TileConfig())
"""

from her2core.slide.tissue import TissueConfig, TissueMask, detect_tissue
from her2core.tiling.cases import Case, read_cases_csv
from her2core.tiling.dataset import COLUMNS, TileConfig, build_dataset, candidate_tiles, tile_case
from her2core.tiling.qc import QCConfig, tile_qc
from her2core.tiling.splits import assign_splits, load_splits, save_splits

__all__ = ["COLUMNS", "Case", "QCConfig", "TileConfig", "TissueConfig", "TissueMask", "assign_splits",
           "build_dataset", "candidate_tiles", "detect_tissue", "load_splits", "read_cases_csv",
           "save_splits", "tile_case", "tile_qc"]
