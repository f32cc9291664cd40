"""Run folders: config.yaml (re-runs the command), metrics.json, log, plots, atomic checkpoints.

Every pifair command writes one. ``Run.create`` starts a new folder; ``Run.resume`` reopens a
killed one after checking that the given config matches the saved one. Both take the folder's
lock (``fcntl.flock`` on ``.lock``, released by the kernel when the process ends, even on
SIGKILL), so a second process cannot write the same folder at the same time.
A derived run names its parent run (``from``) by absolute path and by a path relative to
itself, so it is found from any working directory and after a tree of runs is moved.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from .atomic import atomic_torch_save, atomic_write_json, atomic_write_yaml, load_torch_file
from .errors import (
    ConfigError,
    CorruptFileError,
    NotARunError,
    PifairError,
    ResumeMismatchError,
    RunExistsError,
    RunFolderError,
    RunLockedError,
)

__all__ = [
    "Run",
    "CHECKPOINT",
    "MODEL",
    "CONFIG",
    "METRICS",
    "find_parent",
    "read_config",
    "release_locks",
    "removing_refused_runs",
]

CONFIG, METRICS, CHECKPOINT, MODEL, LOG = (
    "config.yaml",
    "metrics.json",
    "checkpoint.pt",
    "model.pt",
    "log.txt",
)
# Config keys that say where or how to run, not what: they may differ on resume.
_RUNTIME_KEYS = frozenset({"resume", "out", "device", "progress", "workers"})
LOCK = ".lock"
# flock'ed lock files this process holds, by folder: a process may reopen its own run folder
_HELD_LOCKS: dict[str, int] = {}
# run folders Run.create made in this process, each with the folders made for it (itself and
# missing parents): a refusal removes those that hold nothing yet (removing_refused_runs)
_CREATED: list[tuple[Path, list[Path]]] = []
_SCAFFOLD = (CONFIG, LOG, LOCK)  # what Run.create writes; the lock is removed last


# one name per meaning: what older runs wrote under another name (a reduction's parent was
# "dense" for linearize and share; the reduction's own seconds were "search", "allocate", "fit")
RENAMED_METRICS = {
    "dense_relus": "parent_relus",
    "dense_test_accuracy": "parent_test_accuracy",
    "dense_test": "parent_test",
}
RENAMED_SECONDS = {"search": "reduce", "allocate": "reduce", "fit": "reduce"}


def current_metric_names(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with every renamed key under its current name."""
    out = {RENAMED_METRICS.get(k, k): v for k, v in metrics.items()}
    if isinstance(out.get("seconds"), dict):
        out["seconds"] = {RENAMED_SECONDS.get(k, k): v for k, v in out["seconds"].items()}
    return out


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
        made = _make_folder(path)
        _lock(path)
        if (path / CHECKPOINT).exists() or (path / METRICS).exists():
            _unlock(path)
            raise RunExistsError(
                f"run folder {path} already holds a run; pass --resume {path} to continue it or "
                "choose another --out"
            )
        _CREATED.append((path, made))  # ours now: a refusal may remove it while it is a stub
        _remove_stale_temporaries(path)
        config = {"command": command, **config}
        if config.get("from") is not None:
            config = _with_parent_paths(config, path)
        run = cls(path, config)
        atomic_write_yaml(path / CONFIG, run.config)
        run.log.info("run %s: %s", path, json.dumps(run.config, default=str))
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        """An existing run folder, read-only use (eval, report, --from)."""
        path = Path(path)
        if not path.is_dir():
            raise NotARunError(
                f"run folder {path} does not exist; give the folder a pifair command wrote"
            )
        if not (path / CONFIG).exists():
            raise NotARunError(
                f"{path} is not a pifair run folder (no {CONFIG}); give the folder a pifair "
                "command wrote"
            )
        return cls(path, read_config(path / CONFIG))

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike | None,
        config: dict[str, Any] | None = None,
        *,
        normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        allow_finished: bool = False,
    ) -> Run:
        """Reopen the run at ``path`` (required) to continue it. ``config`` (when given) must
        match the saved one.

        ``normalize`` maps the saved config through its dataclass first, so settings added
        since the run was written compare equal to their defaults. A finished run (model.pt
        and its final metrics written) is refused unless ``allow_finished``: resuming it would
        only rewrite its results.
        """
        if path is None:
            raise ConfigError("resuming needs the killed run's folder (--resume RUN)")
        cls.open(path)  # a missing or foreign folder is named before any lock file is made
        _lock(Path(path))
        try:
            run = cls.open(path)  # read again under the lock
            if config is not None:
                saved = normalize(run.config) if normalize else dict(run.config)
                parent = find_parent(run.path, run.config)
                if parent is not None and "from" in config:  # the tree may have been moved
                    saved["from"] = str(parent.resolve())
                diffs = _differences(saved, {"command": saved.get("command"), **config})
                if diffs:
                    lines = ", ".join(diffs)
                    raise ResumeMismatchError(
                        f"cannot resume {path}: its config differs ({lines}). Resume with the "
                        "saved "
                        f"settings (drop the differing options) or start a new run with --out."
                    )
            if not allow_finished and run.finished:
                raise RunFolderError(
                    f"{path} holds a finished run: nothing to resume. Read it with pifair eval / "
                    f"report, or start a new run with --out"
                )
        except BaseException:
            _unlock(Path(path))
            raise
        _remove_stale_temporaries(run.path)
        run.log.info("resuming %s", path)
        return run

    def parent(self) -> Path | None:
        """The folder of the run this one was derived from (``--from``), or None; found as
        :func:`find_parent` says, else refused with every path tried."""
        saved = self.config.get("from")
        if saved is None:
            return None
        found = find_parent(self.path, self.config)
        if found is not None:
            return found
        raise NotARunError(
            f"{self.path} was derived from the run {saved}, which is not found (tried "
            f"{', '.join(str(t) for t in _parent_candidates(self.path, self.config))}); move the "
            "parent run back or keep the runs together"
        )

    # ---- files ------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """model.pt and the final metrics are written."""
        return (self.path / MODEL).exists() and "test_accuracy" in self.metrics

    @property
    def metrics(self) -> dict[str, Any]:
        """metrics.json, with the keys of older pifair versions read under today's names."""
        p = self.path / METRICS
        if not p.exists():
            return {}
        try:
            return current_metric_names(json.loads(p.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptFileError(
                f"{p} is not valid JSON ({err}); it was edited or truncated"
            ) from err

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
        return load_torch_file(p, map_location) if p.exists() else None

    def file(self, name: str) -> Path:
        return self.path / name


def read_config(path: Path) -> dict[str, Any]:
    """A config.yaml as a dict; a file that is not a YAML mapping is named in the error."""
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise CorruptFileError(
            f"{path} is not valid YAML ({err}); fix it or re-run the command"
        ) from err
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise CorruptFileError(
            f"{path} must hold a mapping of settings, not {type(config).__name__}"
        )
    return config


def _make_folder(path: Path) -> list[Path]:
    """Make ``path`` (and its parents); return the folders that did not exist, deepest first."""
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise RunFolderError(
            f"cannot create the run folder {path}: {err.filename or path} is a file; choose "
            "another --out"
        ) from err
    except PermissionError as err:
        raise RunFolderError(
            f"cannot create the run folder {path}: permission denied; choose another --out"
        ) from err
    return made


@contextlib.contextmanager
def removing_refused_runs():
    """Run a command so that a refusal (a :class:`~pifair.errors.PifairError`) leaves no stub:
    the run folders it created that hold nothing but their config, log and lock are removed,
    with the parent folders made for them. A run with any result or checkpoint is kept, and an
    interrupt (Ctrl-C, SIGTERM) keeps everything: that run is resumable."""
    start = len(_CREATED)
    try:
        yield
    except PifairError:
        for path, made in reversed(_CREATED[start:]):
            _remove_stub(path, made)
        raise
    finally:
        del _CREATED[start:]


def _remove_stub(path: Path, made: list[Path]) -> None:
    """Delete run folder ``path`` when it holds only what :meth:`Run.create` wrote."""
    with contextlib.suppress(OSError):
        if not path.is_dir() or {p.name for p in path.iterdir()} - set(_SCAFFOLD):
            return
        _close_logger(path)
        for name in _SCAFFOLD:  # the lock last: held until the stub is gone
            (path / name).unlink(missing_ok=True)
        _unlock(path)
        for folder in made:  # deepest first; a folder made for it that is now empty
            folder.rmdir()


def _lock(path: Path) -> None:
    """Take the folder's exclusive lock, or refuse: another process is writing this run."""
    key = str(path.resolve())
    held = _HELD_LOCKS.get(key)
    if held is not None:
        with contextlib.suppress(OSError):
            if os.fstat(held).st_ino == os.stat(path / LOCK).st_ino:
                return  # this process holds it already (a sweep reopening a sub-run, a resume)
        os.close(held)
        del _HELD_LOCKS[key]
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunLockedError(
            f"run folder {path} is being written by another pifair process (pid {holder}); wait "
            f"for it to finish, then resume or inspect it, or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD_LOCKS[key] = fd


def _differences(saved: dict[str, Any], given: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: saved A vs given B`` for each setting that differs (nested settings by their
    dotted name, so one changed field is not lost in a dump of its section)."""
    out = []
    for key, value in given.items():
        old = saved.get(key)
        if key in _RUNTIME_KEYS or old == value:
            continue
        if isinstance(old, dict) and isinstance(value, dict):
            out += _differences(old, value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}: saved {old!r} vs given {value!r}")
    return out


def _parent_candidates(folder: Path, config: dict[str, Any]) -> list[Path]:
    saved = Path(config["from"])
    tried = [saved]
    if config.get("from_relative"):
        tried.append(folder / config["from_relative"])
    if not saved.is_absolute():
        tried.append(folder / saved)
    return tried


def find_parent(folder: str | os.PathLike, config: dict[str, Any]) -> Path | None:
    """The parent run of the run whose ``config`` lies in ``folder``, or None when it is not
    found (or the run has none). Tried in order: the path saved (absolute; a relative one, as
    older pifair saved it, is read from the working directory), the path relative to this
    folder (a tree of runs moved together), and an old relative path read from this folder."""
    if config.get("from") is None:
        return None
    for candidate in _parent_candidates(Path(folder), config):
        if (candidate / CONFIG).exists():
            return candidate
    return None


def release_locks() -> None:
    """Release every run folder lock this process holds (a command has ended: the kernel would
    release them at exit; a caller that runs several commands in one process calls this)."""
    for fd in _HELD_LOCKS.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


def _unlock(path: Path) -> None:
    fd = _HELD_LOCKS.pop(str(path.resolve()), None)
    if fd is not None:
        os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete what interrupted atomic writes left (``.NAME.XXXX.tmp``); safe under the lock."""
    for tmp in path.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _with_parent_paths(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """``from`` as an absolute path, plus ``from_relative`` to the run folder."""
    parent = Path(config["from"]).resolve()
    return config | {"from": str(parent), "from_relative": os.path.relpath(parent, path.resolve())}


def _fresh_path(root: Path, command: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, i = root / f"{command}-{stamp}", 1
    while path.exists():
        i += 1
        path = root / f"{command}-{stamp}-{i}"
    return path


def _run_logger(path: Path) -> logging.Logger:
    """The logger of the log file ``path`` (one per run folder)."""
    return logging.getLogger(f"pifair.run.{path.resolve()}")


def _close_logger(folder: Path) -> None:
    """Close the log file handler of the run in ``folder`` (its folder is being removed)."""
    logger = _run_logger(folder / LOG)
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def _file_logger(path: Path) -> logging.Logger:
    logger = _run_logger(path)
    if not logger.handlers:
        logger.setLevel(logging.INFO)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = True
    return logger
