"""Readers for paired H&E / IHC tile datasets (HER2match, BCI, A/B folders, our manifest CSV).

    from her2core.datasets import open_paired
    ds = open_paired("data/HER2match", split="train")   # torch Dataset of dicts
"""

from her2core.datasets.layouts import LAYOUTS, bci_score, detect_layout, list_pairs
from her2core.datasets.paired import PairedTiles, open_paired

__all__ = ["LAYOUTS", "PairedTiles", "bci_score", "detect_layout", "list_pairs", "open_paired"]
