"""pifair: privacy-preserving deep learning that stays accurate, cheap and fair.

The public API; the command line (``pifair --help``) is a thin layer over the workflows.

* data and models: :func:`load_dataset`, :func:`list_datasets`, :func:`create_model`,
  :func:`list_models`, :func:`load_from_run`;
* ReLU sites of any model: :func:`convert_activations`, :func:`replace_activations`,
  :func:`count_relus`, :func:`parse_budget`;
* training: :func:`train` and :func:`dp_train` (run folders), :func:`evaluate`;
* reductions, each returning a :class:`ReductionResult`: :func:`linearize` (SNL),
  :func:`share` (ReLU sharing), :func:`polyfit` (polynomials for HE); each takes
  ``finetune=FinetuneSettings(objective=...)`` for a fairness-aware fine-tuning (mitigation);
* fairness: :func:`audit` (per-group cost of a reduction);
* private inference: :mod:`pifair.he` (CKKS), :mod:`pifair.mpc` (SPU), :func:`cost` (estimates).
"""

from . import he, mpc
from .data import Dataset, list_datasets, load_dataset
from .dp import DPConfig
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
from .fairness.audit import audit_pair as audit
from .models import create_model, list_models
from .reduce.finetune import FinetuneSettings
from .reduce.linearize import linearize
from .reduce.polyfit import polyfit
from .reduce.result import ReductionResult
from .reduce.share import share
from .reduce.snl import SearchSettings
from .relu import convert_activations, count_relus, parse_budget, replace_activations
from .relu.polynomial import PolyAct
from .secure.cost import model_cost as cost
from .training import TrainConfig, evaluate
from .workflows.dp_train import dp_train
from .workflows.train import load_from_run, train

__version__ = "0.1.0"

__all__ = [
    "BudgetError",
    "DPConfig",
    "DataNotFoundError",
    "Dataset",
    "FinetuneSettings",
    "MissingExtraError",
    "PifairError",
    "PolyAct",
    "PrivacyParameterError",
    "ReductionResult",
    "ResumeMismatchError",
    "SearchSettings",
    "TrainConfig",
    "UnknownNameError",
    "UnsupportedLayerError",
    "audit",
    "convert_activations",
    "cost",
    "count_relus",
    "create_model",
    "dp_train",
    "evaluate",
    "he",
    "linearize",
    "list_datasets",
    "list_models",
    "load_dataset",
    "load_from_run",
    "mpc",
    "parse_budget",
    "polyfit",
    "replace_activations",
    "share",
    "train",
]
