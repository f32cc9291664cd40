"""Imbalance protocols: keep a fraction of some classes (``--keep 8:0.09``, ``0-4:0.9,5-9:0.1``).

Esipova et al. 2023 keep digit 8 at 9 % of the training set; Das et al. 2024 keep classes 0-4 at
90 % and 5-9 at 10 % in train and test alike (``--keep-test``).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ._base import Split

__all__ = ["parse_keep", "subsample_classes"]


def parse_keep(spec: str, num_classes: int) -> dict[int, float]:
    """Parse ``"8:0.09"`` or ``"0-4:0.9,5-9:0.1"`` into ``{class: fraction}``."""
    keep: dict[int, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        classes, sep, frac = part.partition(":")
        try:
            if not sep:
                raise ValueError
            fraction = float(frac)
            lo, _, hi = classes.partition("-")
            members = range(int(lo), int(hi or lo) + 1)
        except ValueError:
            raise ConfigError(
                f"cannot read keep spec {part!r} in {spec!r}: write CLASS:FRACTION or "
                f"FIRST-LAST:FRACTION, e.g. '8:0.09' or '0-4:0.9,5-9:0.1'"
            ) from None
        if not 0 <= fraction <= 1:
            raise ConfigError(f"keep fraction must be in [0, 1], got {fraction} in {spec!r}")
        for c in members:
            if not 0 <= c < num_classes:
                raise ConfigError(f"class {c} in keep spec {spec!r} is outside 0-{num_classes - 1}")
            keep[c] = fraction
    return keep


def subsample_classes(split: Split, keep: dict[int, float], seed: int) -> Split:
    """Keep ``round(fraction * n_c)`` samples of each class ``c`` in ``keep`` (seeded choice)."""
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(split.y).tolist():
        idx = torch.nonzero(split.y == c).flatten()
        if c in keep:
            n = round(keep[c] * len(idx))
            idx = idx[torch.randperm(len(idx), generator=gen)[:n]]
        chosen.append(idx)
    return split.subset(torch.cat(chosen).sort().values)
