"""Saving and loading models with their architecture and activation sites.

A saved model is a dict: the registry name and options that rebuild the dense architecture,
each site's spec (so reduced models come back with their sites), and the state dict. Nothing
is pickled but tensors and plain values, so files load with ``weights_only=True``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_torch_save, load_torch_file
from ..errors import CorruptFileError
from ..relu.sites import ActivationSite, iter_sites, site_from_spec, swap_sites
from ._registry import create_model

__all__ = ["save_model", "save_model_like", "load_model", "model_record", "model_from_record"]

FORMAT = "pifair-model/1"


def model_record(
    model: nn.Module,
    *,
    name: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A dict that :func:`model_from_record` turns back into ``model``."""
    return {
        "format": FORMAT,
        "model": name,
        "options": dict(options or {}),
        "num_classes": int(num_classes),
        "input_shape": [int(s) for s in input_shape],
        "sites": {n: s.spec() for n, s in iter_sites(model)},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def model_from_record(record: dict[str, Any]) -> nn.Module:
    if record.get("format") != FORMAT:
        raise CorruptFileError(
            f"not a pifair model file (format {record.get('format')!r}, expected {FORMAT!r})"
        )
    model = create_model(
        record["model"],
        num_classes=record["num_classes"],
        input_shape=tuple(record["input_shape"]),
        **record["options"],
    )
    sites = record["sites"]

    def rebuild(name: str, module: nn.Module) -> ActivationSite | None:
        return site_from_spec(sites[name]) if name in sites else None

    swap_sites(model, rebuild)
    model.load_state_dict(record["state_dict"])
    return model


def save_model(path: str | os.PathLike, model: nn.Module, **meta: Any) -> None:
    """Write :func:`model_record` atomically to ``path``."""
    atomic_torch_save(model_record(model, **meta), path)


def save_model_like(
    path: str | os.PathLike, model: nn.Module, parent_record: dict[str, Any]
) -> None:
    """Save a reduced ``model`` with the architecture record of the model it came from."""
    save_model(
        path,
        model,
        name=parent_record["model"],
        num_classes=parent_record["num_classes"],
        input_shape=tuple(parent_record["input_shape"]),
        options=parent_record["options"],
    )


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The model saved at ``path`` and its record (without the state dict)."""
    record = load_torch_file(path, map_location, weights_only=True)
    model = model_from_record(record)
    return model, {k: v for k, v in record.items() if k != "state_dict"}
