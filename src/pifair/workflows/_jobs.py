"""A workflow job and its run's config.yaml, both ways."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from ..config_types import check_settings, settings_from_dict
from ..errors import ConfigError
from ..runs import Run


class RunJob:
    """Mixin for job dataclasses: ``from_run`` is saved as ``from``; fields listed in
    ``_nested`` are settings dataclasses saved as dicts."""

    _nested: ClassVar[dict[str, type]] = {}

    def __post_init__(self) -> None:
        check_settings(self)  # bounds and choices of the job's own fields, before any work

    def as_config(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        d["from"] = str(Path(d.pop("from_run")).resolve())
        return d

    @classmethod
    def from_config(cls, d: dict[str, Any]):
        d = {k: v for k, v in d.items() if k not in ("command", "from_relative")}
        if "from" not in d:
            raise ConfigError("the config names no parent run ('from'); give --from RUN")
        nested = {}
        for k, t in cls._nested.items():
            section = d.pop(k, None) or {}
            if not isinstance(section, dict):
                raise ConfigError(
                    f"setting {k!r} must be a mapping of {t.__name__} fields, got {section!r}"
                )
            nested[k] = settings_from_dict(t, section, ignore=())
        d["from_run"] = d.pop("from")
        return settings_from_dict(cls, d | nested, ignore=())

    @classmethod
    def normalized_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """A saved job config with the defaults of settings added since it was written."""
        return cls.from_config(config).as_config() | {"command": config.get("command")}

    def open_run(
        self,
        command: str,
        out: str | os.PathLike | None,
        *,
        resume: bool,
        allow_finished: bool = False,
    ) -> Run:
        """A new run folder for this job, or, with ``resume``, the killed one at ``out``
        (refused if its saved config differs)."""
        if resume:
            config = self.as_config() | {"command": command}
            return Run.resume(
                out, config, normalize=type(self).normalized_config, allow_finished=allow_finished
            )
        return Run.create(command, self.as_config(), out=out)
