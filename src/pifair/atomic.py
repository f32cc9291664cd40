"""Atomic file writes: write to a temporary file in the same folder, fsync, rename.

A crash or Ctrl-C mid-write leaves the previous file intact (``os.replace`` is atomic on POSIX).
``load_torch_file`` reads such a file back and names it when it cannot be read.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
import yaml

from .errors import CorruptFileError

__all__ = [
    "atomic_copy",
    "atomic_open",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_yaml",
    "atomic_torch_save",
    "load_torch_file",
]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on clean exit fsync it and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy ``source`` to ``path`` atomically (a reader sees the old file or the whole copy)."""
    with open(source, "rb") as src, atomic_open(path) as dst:
        shutil.copyfileobj(src, dst)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def atomic_torch_save(
    obj: Any, path: str | os.PathLike, *, save: Callable[..., None] = torch.save
) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    with atomic_open(path, "wb") as f:
        save(obj, f)


def load_torch_file(
    path: str | os.PathLike, map_location: Any = "cpu", *, weights_only: bool = False
) -> Any:
    """``torch.load`` of a file pifair wrote; a truncated or foreign file is named in the error."""
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        # PyTorch's advice (load with weights_only=False, which runs the file's code) is not
        # for a file that should hold tensors only: say what the file is not instead
        text = str(err).strip()
        reason = (
            "not tensors and plain data"
            if "Weights only load failed" in text
            else (text.splitlines()[0] if text else "")
        )
        raise CorruptFileError(
            f"{path} cannot be read ({type(err).__name__}: {reason[:200]}); it is truncated or "
            f"not a pifair file: delete it (and resume, or rerun the step that wrote it)"
        ) from err


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
