"""The UCI Adult table: one-hot categorical and standardised numeric features, ``sex``/``race``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataNotFoundError
from .paths import find_file, search_roots

__all__ = ["load_adult_frames", "encode_adult", "ADULT_GROUP_COLUMNS"]

ADULT_COLUMNS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
]
ADULT_GROUP_COLUMNS = ("sex", "race")
_NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]


def _read(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(
        path,
        sep=r",\s*",
        engine="python",
        header=None,
        names=ADULT_COLUMNS,
        na_values="?",
        comment="|",
        dtype=str,
    )
    # Both files may start with a header line of column names, and adult.test with a '|1x3' line.
    frame = frame[frame["age"].str.strip().str.isdigit().fillna(False)]
    frame["income"] = frame["income"].str.strip().str.rstrip(".")
    return frame.reset_index(drop=True)


def load_adult_frames(
    data_dir: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) frames of ``adult.data`` and ``adult.test`` from ``data_dir`` or the
    search roots."""
    candidates = []
    for root in search_roots(data_dir):
        candidates += [root / "adult.data", root / "adult" / "adult.data"]
    found = find_file(candidates)
    if found is None or not (found.parent / "adult.test").exists():
        raise DataNotFoundError(
            "Adult not found: looked for adult.data and adult.test in "
            f"{[str(c.parent) for c in candidates]}. Pass --data-dir DIR holding both UCI files."
        )
    return _read(found), _read(found.parent / "adult.test")


def encode_adult(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, np.ndarray | list[str]]:
    """Features fitted on train: numeric columns standardised, categoricals one-hot (a missing
    value is its own category). Labels: income > 50K. Group columns kept as codes."""
    cats = [c for c in ADULT_COLUMNS[:-1] if c not in _NUMERIC]
    num_train = train[_NUMERIC].astype(float)
    mean, std = num_train.mean(), num_train.std().replace(0, 1)
    both = pd.concat([train[cats], test[cats]]).fillna("missing")
    onehot = pd.get_dummies(both, columns=cats, dtype=np.float32)
    out: dict[str, np.ndarray | list[str]] = {"feature_names": _NUMERIC + list(onehot.columns)}
    for split, frame, rows in (
        ("train", train, slice(0, len(train))),
        ("test", test, slice(len(train), None)),
    ):
        numeric = ((frame[_NUMERIC].astype(float) - mean) / std).to_numpy(np.float32)
        out[f"{split}_x"] = np.concatenate(
            [numeric, onehot.iloc[rows].to_numpy(np.float32)], axis=1
        )
        out[f"{split}_y"] = (frame["income"] == ">50K").to_numpy(np.int64)
    for col in ADULT_GROUP_COLUMNS:
        names = sorted(pd.concat([train[col], test[col]]).fillna("missing").unique())
        out[f"{col}_names"] = names
        for split, frame in (("train", train), ("test", test)):
            out[f"{split}_{col}"] = (
                frame[col]
                .fillna("missing")
                .map({n: i for i, n in enumerate(names)})
                .to_numpy(np.int64)
            )
    return out
