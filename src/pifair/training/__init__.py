"""Training: configuration, the loop (fit / evaluate / predict), distillation and per-group
metrics. Library code: models and data in, results out; run folders are ``pifair.workflows``."""

from .config import DataConfig, TrainConfig
from .distill import DistillationLoss, kd_loss
from .group_metrics import GroupReport, GroupRow, group_report
from .loop import (
    CheckpointStore,
    LoopSettings,
    autocast_for,
    evaluate,
    fit,
    predict,
    resolve_device,
)

__all__ = [
    "CheckpointStore",
    "DataConfig",
    "DistillationLoss",
    "GroupReport",
    "GroupRow",
    "LoopSettings",
    "TrainConfig",
    "autocast_for",
    "evaluate",
    "fit",
    "group_report",
    "kd_loss",
    "predict",
    "resolve_device",
]
