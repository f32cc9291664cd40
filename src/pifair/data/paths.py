"""Where pifair looks for data files."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["search_roots", "find_file"]

_REPO_ROOT = Path(__file__).resolve().parents[3]


def search_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders to search: ``data_dir`` alone when given; else ``$PIFAIR_DATA_DIR``, ``./data``,
    ``../shared/data`` (from the working directory and from the checkout)."""
    if data_dir is not None:  # an explicit folder is the only place to look
        return [Path(data_dir).expanduser()]
    roots = []
    if os.environ.get("PIFAIR_DATA_DIR"):
        roots.append(Path(os.environ["PIFAIR_DATA_DIR"]).expanduser())
    roots += [
        Path.cwd() / "data",
        Path.cwd().parent / "shared" / "data",
        _REPO_ROOT.parent / "shared" / "data",
    ]
    seen, unique = set(), []
    for r in roots:
        key = str(r.resolve()) if r.exists() else str(r)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def find_file(candidates: list[Path]) -> Path | None:
    """The first existing path of ``candidates``."""
    return next((p for p in candidates if p.exists()), None)
