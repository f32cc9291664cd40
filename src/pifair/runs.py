"""Run folders: config.yaml (re-runs the command), metrics.json, log, plots, atomic checkpoints.

Every pifair command writes one. ``Run.create`` starts a new folder; ``Run.resume`` reopens a
killed one after checking that the given config matches the saved one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from .atomic import atomic_torch_save, atomic_write_json, atomic_write_yaml
from .errors import ResumeMismatchError

__all__ = ["Run", "CHECKPOINT", "MODEL", "CONFIG", "METRICS"]

CONFIG, METRICS, CHECKPOINT, MODEL, LOG = (
    "config.yaml",
    "metrics.json",
    "checkpoint.pt",
    "model.pt",
    "log.txt",
)
# Config keys that say where or how to run, not what: they may differ on resume.
_RUNTIME_KEYS = frozenset({"resume", "out", "device", "progress", "workers"})


class Run:
    """A run folder and its files."""

    def __init__(self, path: str | os.PathLike, config: dict[str, Any]) -> None:
        self.path = Path(path)
        self.config = dict(config)
        self.path.mkdir(parents=True, exist_ok=True)
        self.log = _file_logger(self.path / LOG)

    # ---- creating and reopening -------------------------------------------------------------
    @classmethod
    def create(
        cls,
        command: str,
        config: dict[str, Any],
        *,
        out: str | os.PathLike | None = None,
        root: str | os.PathLike = "runs",
    ) -> Run:
        """A new run folder (``out``, or ``root/COMMAND-TIMESTAMP``) with its config written."""
        path = Path(out) if out else _fresh_path(Path(root), command)
        if (path / CHECKPOINT).exists() or (path / METRICS).exists():
            raise FileExistsError(
                f"run folder {path} already holds a run; pass --resume {path} to continue it or choose another --out"
            )
        run = cls(path, {"command": command, **config})
        atomic_write_yaml(path / CONFIG, run.config)
        run.log.info("run %s: %s", path, json.dumps(run.config, default=str))
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        """An existing run folder, read-only use (eval, report, --from)."""
        path = Path(path)
        if not (path / CONFIG).exists():
            raise FileNotFoundError(
                f"{path} is not a pifair run folder (no {CONFIG}); give the folder a pifair command wrote"
            )
        with open(path / CONFIG) as f:
            return cls(path, yaml.safe_load(f) or {})

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike,
        config: dict[str, Any] | None = None,
        *,
        normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> Run:
        """Reopen a run to continue it. ``config`` (when given) must match the saved one.

        ``normalize`` maps the saved config through its dataclass first, so settings added
        since the run was written compare equal to their defaults.
        """
        run = cls.open(path)
        if config is not None:
            saved = normalize(run.config) if normalize else run.config
            diffs = {
                k: (saved.get(k), v)
                for k, v in {"command": saved.get("command"), **config}.items()
                if k not in _RUNTIME_KEYS and saved.get(k) != v
            }
            if diffs:
                lines = ", ".join(f"{k}: saved {a!r} vs given {b!r}" for k, (a, b) in diffs.items())
                raise ResumeMismatchError(
                    f"cannot resume {path}: its config differs ({lines}). Resume with the saved "
                    f"settings (drop the differing options) or start a new run with --out."
                )
        run.log.info("resuming %s", path)
        return run

    # ---- files ------------------------------------------------------------------------------
    @property
    def metrics(self) -> dict[str, Any]:
        p = self.path / METRICS
        return json.loads(p.read_text()) if p.exists() else {}

    def update_metrics(self, **values: Any) -> dict[str, Any]:
        """Merge ``values`` into metrics.json (written atomically) and return the whole dict."""
        metrics = self.metrics | values
        atomic_write_json(self.path / METRICS, metrics)
        return metrics

    def write_json(self, name: str, obj: Any) -> Path:
        atomic_write_json(self.path / name, obj)
        return self.path / name

    def save_checkpoint(self, state: dict[str, Any], name: str = CHECKPOINT) -> None:
        """Write a checkpoint atomically: a crash mid-write leaves the previous one intact."""
        atomic_torch_save(state, self.path / name)

    def load_checkpoint(
        self, name: str = CHECKPOINT, map_location: str | torch.device = "cpu"
    ) -> dict[str, Any] | None:
        p = self.path / name
        return torch.load(p, map_location=map_location, weights_only=False) if p.exists() else None

    def file(self, name: str) -> Path:
        return self.path / name


def _fresh_path(root: Path, command: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, i = root / f"{command}-{stamp}", 1
    while path.exists():
        i += 1
        path = root / f"{command}-{stamp}-{i}"
    return path


def _file_logger(path: Path) -> logging.Logger:
    logger = logging.getLogger(f"pifair.run.{path.resolve()}")
    if not logger.handlers:
        logger.setLevel(logging.INFO)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = True
    return logger
