"""Error types of pifair.

Every error subclasses a builtin (mostly ``ValueError``) so callers can catch it either way.
Messages say what was received, what is allowed, and what to do.
"""

from __future__ import annotations

__all__ = [
    "PifairError",
    "UnknownNameError",
    "BudgetError",
    "DataNotFoundError",
    "ResumeMismatchError",
    "MissingExtraError",
    "UnsupportedLayerError",
    "PrivacyParameterError",
    "ConfigError",
    "RunFolderError",
    "RunExistsError",
    "RunLockedError",
    "NotARunError",
    "UnfinishedRunError",
    "CorruptFileError",
    "TrainingDivergedError",
    "PartyFailedError",
    "ServerFailedError",
    "Terminated",
]


class PifairError(Exception):
    """Base class of every error raised on purpose by pifair."""


class UnknownNameError(PifairError, ValueError):
    """A registry lookup (data set, model, ...) got a name it does not know."""

    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        self.kind, self.name, self.available = kind, name, list(available)
        super().__init__(f"unknown {kind} {name!r}; available: {', '.join(sorted(available))}")


class BudgetError(PifairError, ValueError):
    """A ReLU budget that cannot be met (unparseable, negative or above the model's count)."""


class DataNotFoundError(PifairError, FileNotFoundError):
    """A data set's files are not where pifair looked."""


class ResumeMismatchError(PifairError, ValueError):
    """``--resume`` pointed at a run folder whose config differs from the one given."""


class MissingExtraError(PifairError, ImportError):
    """An optional dependency stack (an extra) is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the optional package {package!r}, which is not installed. "
            f"Install it with: pip install 'pifair[{extra}]'"
        )


class UnsupportedLayerError(PifairError, ValueError):
    """A model holds a layer that an engine (HE, MPC, DP) cannot run."""


class PrivacyParameterError(PifairError, ValueError):
    """A differential-privacy setting that gives no guarantee (epsilon <= 0, delta >= 1/N, a
    clip bound <= 0) or a target epsilon that cannot be reached."""


class ConfigError(PifairError, ValueError):
    """A setting (a flag, a config.yaml value, an argument) outside what it may be."""


class RunFolderError(PifairError, OSError):
    """A run folder that cannot be used as asked (base class of the run-folder errors)."""


class RunExistsError(RunFolderError, FileExistsError):
    """``--out`` names a folder that already holds a run."""


class RunLockedError(RunExistsError):
    """Another pifair process is writing this run folder now."""


class NotARunError(RunFolderError, FileNotFoundError):
    """A path given as a run folder is missing or is not one pifair wrote."""


class UnfinishedRunError(RunFolderError, FileNotFoundError):
    """A run folder whose run has not finished (no model.pt yet)."""


class CorruptFileError(PifairError, ValueError):
    """A file pifair wrote (config, checkpoint, model) cannot be read: truncated or edited."""


class TrainingDivergedError(PifairError, FloatingPointError):
    """The loss became NaN or infinite: the learning rate is too high for this model."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process stands so that its cleanup runs (child processes
    stopped, atomic writes rolled back), as Ctrl-C does."""


class ServerFailedError(PifairError, RuntimeError):
    """The CKKS server process stopped with an error or a signal; its last lines are given."""


class PartyFailedError(PifairError, RuntimeError):
    """An MPC party (another process or host) stopped with an error; its last lines are given."""
