"""Trainable polynomial activations for HE (Zhang, Duan, Zou, Liu 2024): the site.

Under CKKS a ReLU cannot be computed; a low-degree polynomial can, at a cost in multiplicative
depth. :class:`PolyAct` is ``y = sum_k c_k x^k`` with coefficients per layer, per channel or
per element (the paper's fine-grained choice: one polynomial per activation position). Fitting
and fine-tuning them is :func:`pifair.reduce.polyfit.polyfit`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from .sites import FeatureShape, PolynomialSite, register_site

__all__ = ["PolyAct", "GRANULARITIES", "PolyGranularity"]

PolyGranularity = Literal["layer", "channel", "element"]
GRANULARITIES: tuple[str, ...] = ("layer", "channel", "element")


def _coef_shape(granularity: str, feature_shape: FeatureShape) -> tuple[int, ...]:
    if granularity == "layer":
        return ()
    if granularity == "channel":
        return (feature_shape[0],) + (1,) * (len(feature_shape) - 1)
    if granularity == "element":
        return tuple(feature_shape)
    raise ConfigError(f"polynomial granularity must be one of {GRANULARITIES}, got {granularity!r}")


@register_site
class PolyAct(PolynomialSite):
    """``y = c_0 + c_1 x + ... + c_d x^d`` with coefficients shared over the batch.

    ``coefficients`` has shape ``(degree + 1, *coef_shape)``: ``coef_shape`` is ``()`` for one
    polynomial per layer, ``(C, 1, 1)`` (or ``(F,)``) per channel, the feature shape per element.
    """

    kind = "poly"

    def __init__(
        self, degree: int, granularity: PolyGranularity, feature_shape: FeatureShape
    ) -> None:
        super().__init__()
        if degree < 1:
            raise ConfigError(f"polynomial degree must be >= 1, got {degree}")
        self.granularity = granularity
        self.feature_shape = tuple(int(s) for s in feature_shape)
        shape = _coef_shape(granularity, self.feature_shape)
        coefficients = torch.zeros(degree + 1, *shape)
        coefficients[1] = 1.0  # identity until fitted
        self.coefficients = nn.Parameter(coefficients)

    @property
    def degree(self) -> int:
        return self.coefficients.shape[0] - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record_shape(x)
        c = self.coefficients.to(x.dtype)
        out = c[-1].expand_as(x)
        for k in range(self.degree - 1, -1, -1):  # Horner's rule
            out = out * x + c[k]
        return out

    def multiplicative_depth(self) -> int:
        # x^2 is one ciphertext product; each further power one more level (plain scalars fold)
        return math.ceil(math.log2(self.degree)) if self.degree > 1 else 0

    def spec(self) -> dict:
        return {
            "kind": self.kind,
            "degree": self.degree,
            "granularity": self.granularity,
            "feature_shape": list(self.feature_shape or ()),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> PolyAct:
        return cls(spec["degree"], spec["granularity"], tuple(spec["feature_shape"]))

    def extra_repr(self) -> str:
        return (
            f"degree={self.degree}, granularity={self.granularity}, "
            f"feature_shape={self.feature_shape}"
        )
