"""A workflow job and its run's config.yaml, both ways."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar


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
