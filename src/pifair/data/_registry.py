"""Data set registry: ``load_dataset(name, ...)`` and ``list_datasets()``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataNotFoundError, UnknownNameError
from ._base import Dataset, Split, hold_out_validation
from .images import (
    CIFAR10_CLASSES,
    FASHION_CLASSES,
    load_cifar10_arrays,
    load_digits_arrays,
    load_fashion_mnist_arrays,
    spread_index,
    to_tensor,
)
from .imbalance import parse_keep, subsample_classes
from .tabular import ADULT_GROUP_COLUMNS, encode_adult, load_adult_frames

__all__ = ["load_dataset", "list_datasets", "DatasetInfo"]


@dataclass(frozen=True)
class RawData:
    """What a loader returns before splitting: train/test tensors, class names, group columns."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    group_columns: dict[
        str, tuple[list[str], torch.Tensor, torch.Tensor]
    ]  # name -> (names, train, test)
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    augment: str
    source: str


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    loader: Callable[..., RawData]


def _fashion(data_dir, download, limit) -> RawData:
    a = load_fashion_mnist_arrays(data_dir, download=download)
    t = {k: to_tensor(v[spread_index(len(v), limit)]) for k, v in a.items() if k != "source"}
    return RawData(
        t["train_x"],
        t["train_y"],
        t["test_x"],
        t["test_y"],
        FASHION_CLASSES,
        {},
        (0.2860,),
        (0.3530,),
        "none",
        str(a["source"]),
    )


def _cifar10(data_dir, download, limit) -> RawData:
    a = load_cifar10_arrays(data_dir, download=download, limit=limit)
    t = {k: to_tensor(v) for k, v in a.items() if k != "source"}
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    return RawData(
        t["train_x"],
        t["train_y"],
        t["test_x"],
        t["test_y"],
        CIFAR10_CLASSES,
        {},
        mean,
        std,
        "crop-flip",
        str(a["source"]),
    )


def _digits(data_dir, download, limit) -> RawData:
    a = load_digits_arrays(limit)
    t = {k: to_tensor(v) for k, v in a.items()}
    return RawData(
        t["train_x"],
        t["train_y"],
        t["test_x"],
        t["test_y"],
        [str(i) for i in range(10)],
        {},
        (0.305,),
        (0.378,),
        "none",
        "sklearn.datasets.load_digits",
    )


def _adult(data_dir, download, limit) -> RawData:
    e = encode_adult(*load_adult_frames(data_dir))
    t = lambda k: to_tensor(np.asarray(e[k])[spread_index(len(e[k]), limit)])  # noqa: E731
    groups = {
        c: (list(e[f"{c}_names"]), t(f"train_{c}"), t(f"test_{c}")) for c in ADULT_GROUP_COLUMNS
    }
    return RawData(
        t("train_x"),
        t("train_y"),
        t("test_x"),
        t("test_y"),
        ["<=50K", ">50K"],
        groups,
        None,
        None,
        "none",
        "UCI Adult",
    )


_DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo(
            "fashion-mnist", "Fashion-MNIST, 60k+10k 28x28 grayscale, 10 classes", _fashion
        ),
        DatasetInfo(
            "cifar10", "CIFAR-10 (JPEG q75 bundle or torchvision root), 50k+10k 32x32 RGB", _cifar10
        ),
        DatasetInfo("adult", "UCI Adult census income, groups by sex or race", _adult),
        DatasetInfo("digits", "scikit-learn 8x8 digits, 1,797 images (fast tests)", _digits),
    )
}


def list_datasets() -> list[str]:
    """Names of the registered data sets.

    Examples
    --------
    >>> import pifair
    >>> pifair.list_datasets()
    ['adult', 'cifar10', 'digits', 'fashion-mnist']
    """
    return sorted(_DATASETS)


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    keep: str | None = None,
    keep_test: bool = False,
    group_by: str = "class",
    download: bool = False,
    limit: int | None = None,
) -> Dataset:
    """Load data set ``name`` with a seeded validation split held out from train.

    ``keep`` subsamples classes (``"8:0.09"``; :mod:`pifair.data.imbalance`) in train, and in
    test too with ``keep_test``. ``group_by`` is ``"class"`` (default) or a sensitive column
    (``"sex"``, ``"race"`` for Adult). ``limit`` keeps N evenly spaced samples of train and test.

    Examples
    --------
    >>> import pifair
    >>> data = pifair.load_dataset("digits", seed=0)
    >>> data.input_shape, data.num_classes, len(data.train) + len(data.val) + len(data.test)
    ((1, 8, 8), 10, 1797)
    """
    if name not in _DATASETS:
        raise UnknownNameError("dataset", name, list(_DATASETS))
    if limit is not None and limit < 10:
        raise ConfigError(f"limit must be >= 10 samples (or unset for all), got {limit}")
    if data_dir is not None and not Path(data_dir).expanduser().exists() and not download:
        raise DataNotFoundError(
            f"data directory {data_dir} does not exist; pass an existing --data-dir for {name!r} "
            "(or leave it out to use the default places)"
        )
    raw = _DATASETS[name].loader(data_dir, download, limit)
    if group_by == "class":
        group_names = list(raw.classes)
        train = Split(raw.train_x, raw.train_y, raw.train_y.clone())
        test = Split(raw.test_x, raw.test_y, raw.test_y.clone())
    elif group_by in raw.group_columns:
        group_names, g_train, g_test = raw.group_columns[group_by]
        train, test = (
            Split(raw.train_x, raw.train_y, g_train),
            Split(raw.test_x, raw.test_y, g_test),
        )
    else:
        raise ConfigError(
            f"data set {name!r} has no group column {group_by!r}; choose one of "
            f"{['class', *raw.group_columns]}"
        )
    info: dict = {"source": raw.source}
    if keep:
        fractions = parse_keep(keep, len(raw.classes))
        train = subsample_classes(train, fractions, seed)
        if keep_test:
            test = subsample_classes(test, fractions, seed + 1)
        info |= {"keep": keep, "keep_test": keep_test}
    train, val = hold_out_validation(train, val_fraction, seed)
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(
            f"{name} with keep {keep!r} and limit {limit} leaves {len(train)} training and "
            f"{len(test)} test samples; keep a fraction > 0 of some class or raise the limit"
        )
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        classes=list(raw.classes),
        group_names=group_names,
        group_by=group_by,
        mean=raw.mean,
        std=raw.std,
        augment=raw.augment,
        info=info,
    )
