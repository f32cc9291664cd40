"""Data sets (images, tables), group labels, imbalance protocols and loaders."""

from ._base import Dataset, Split, hold_out_validation
from ._registry import list_datasets, load_dataset
from .imbalance import parse_keep, subsample_classes
from .loaders import ResidentLoader, make_dataloader, random_crop_flip

__all__ = [
    "Dataset",
    "ResidentLoader",
    "Split",
    "hold_out_validation",
    "list_datasets",
    "load_dataset",
    "make_dataloader",
    "parse_keep",
    "random_crop_flip",
    "subsample_classes",
]
