"""A workflow job and its run's config.yaml, both ways."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, ClassVar

from ..runs import Run


class RunJob:
    """Mixin for job dataclasses: ``from_run`` is saved as ``from``; fields listed in
    ``_nested`` are settings dataclasses saved as dicts."""

    _nested: ClassVar[dict[str, type]] = {}

    def as_config(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        d["from"] = str(d.pop("from_run"))
        return d

    @classmethod
    def from_config(cls, d: dict[str, Any]):
        d = {k: v for k, v in d.items() if k != "command"}
        nested = {k: t(**d.pop(k, {})) for k, t in cls._nested.items()}
        return cls(from_run=d.pop("from"), **nested, **d)

    @classmethod
    def normalized_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """A saved job config with the defaults of settings added since it was written."""
        return cls.from_config(config).as_config() | {"command": config.get("command")}

    def open_run(self, command: str, out: str | os.PathLike | None, *, resume: bool) -> Run:
        """A new run folder for this job, or, with ``resume``, the killed one at ``out``
        (refused if its saved config differs)."""
        if resume:
            config = self.as_config() | {"command": command}
            return Run.resume(out, config, normalize=type(self).normalized_config)
        return Run.create(command, self.as_config(), out=out)
