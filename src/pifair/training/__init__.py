"""Training: configuration, the loop (fit / evaluate / predict) and ``pifair train``."""

from .config import DataConfig, TrainConfig
from .loop import LoopSettings, autocast_for, evaluate, fit, predict, resolve_device
from .train import dataset_for_run, load_from_run, train

__all__ = [
    "DataConfig",
    "LoopSettings",
    "TrainConfig",
    "autocast_for",
    "dataset_for_run",
    "evaluate",
    "fit",
    "load_from_run",
    "predict",
    "resolve_device",
    "train",
]
