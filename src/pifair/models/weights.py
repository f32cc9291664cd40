"""A user's weights into a built architecture: a state dict or a whole pickled module.

Files written by plain PyTorch (``torch.save(model.state_dict(), f)`` or ``torch.save(model,
f)``) and the usual checkpoint dicts (``{"state_dict": ...}``, ``{"model": ...}``, keys prefixed
``module.`` by DataParallel) load; every missing, unexpected or wrongly shaped key is refused
by name before anything is written.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, CorruptFileError

__all__ = ["read_state_dict", "load_user_weights", "file_sha256"]

_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(
    path: str | os.PathLike, *, code_dir: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, whatever way plain PyTorch wrote them.

    A state dict loads with ``weights_only=True``; a whole pickled module needs full unpickling
    (``weights_only=False``), which runs the file's code: pifair does that only for a file the
    user named as their own weights. Its classes are imported by the module name they had when
    saved (``mynet.Net``); ``code_dir`` (the folder of the user's model file) is searched too.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"weights file {file} does not exist")
    try:
        obj: Any = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        extra = [str(code_dir)] if code_dir is not None else []
        sys.path[:0] = extra
        try:
            obj = torch.load(file, map_location="cpu", weights_only=False)
        except ModuleNotFoundError as err:
            raise ConfigError(
                f"{file} is a pickled module whose class lives in module {err.name!r}, which "
                "cannot be imported here; save its weights instead: "
                "torch.save(model.state_dict(), FILE)"
            ) from None
        except Exception as err:
            raise CorruptFileError(
                f"cannot read {file} as PyTorch weights: {type(err).__name__}: {err}"
            ) from None
        finally:
            del sys.path[: len(extra)]
    except Exception as err:
        raise CorruptFileError(
            f"cannot read {file} as PyTorch weights: {type(err).__name__}: {err}"
        ) from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    while isinstance(obj, dict) and not _is_state_dict(obj):
        nested = next((obj[k] for k in _NESTED_KEYS if k in obj), None)
        if nested is None:
            break
        obj = nested.state_dict() if isinstance(nested, nn.Module) else nested
    if not (isinstance(obj, dict) and _is_state_dict(obj)):
        raise ConfigError(
            f"{file} holds {type(obj).__name__}, not a state dict or a module; save weights with "
            "torch.save(model.state_dict(), FILE)"
        )
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def load_user_weights(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``model`` exactly, or refuse naming every mismatched key."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    shapes = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(want[k].shape)})"
        for k in set(want) & set(state)
        if state[k].shape != want[k].shape
    )
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            problems.append(f"{len(keys)} {label}: {shown}")
    if problems:
        raise ConfigError(
            f"the weights in {source} do not fit {type(model).__name__}: "
            + "; ".join(problems)
            + ". Give the architecture the weights were trained with (--arch) and the data set "
            "they were trained on (--data sets the classes and input channels)"
        )
    model.load_state_dict(state, strict=True)
