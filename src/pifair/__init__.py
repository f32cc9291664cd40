"""pifair: privacy-preserving deep learning that stays accurate, cheap and fair.

The public API; the command line (``pifair --help``) is a thin layer over it.
"""

from .data import Dataset, list_datasets, load_dataset
from .dp import DPConfig, dp_train
from .errors import (
    BudgetError,
    DataNotFoundError,
    MissingExtraError,
    PifairError,
    PrivacyParameterError,
    ResumeMismatchError,
    UnknownNameError,
    UnsupportedLayerError,
)
from .models import create_model, list_models
from .relu import count_relus, parse_budget, replace_activations
from .relu.linearize import linearize
from .relu.poly import PolyAct, polyfit
from .relu.share import share
from .training import TrainConfig, evaluate, train

__version__ = "0.1.0"

__all__ = [
    "BudgetError",
    "DataNotFoundError",
    "Dataset",
    "DPConfig",
    "MissingExtraError",
    "PifairError",
    "PolyAct",
    "PrivacyParameterError",
    "ResumeMismatchError",
    "TrainConfig",
    "UnknownNameError",
    "UnsupportedLayerError",
    "count_relus",
    "create_model",
    "dp_train",
    "evaluate",
    "list_datasets",
    "linearize",
    "list_models",
    "load_dataset",
    "parse_budget",
    "polyfit",
    "replace_activations",
    "share",
    "train",
]
