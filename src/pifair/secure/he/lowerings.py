"""How each activation-site kind runs under CKKS: one lowering per ``site.kind``.

Under HE a site must be a polynomial: its lowering returns the coefficients of one polynomial
per feature, ``(degree + 1, features)`` in float64, which become a :class:`PolyStage` between
two affine stages. Kinds that compare (ReLU and its reductions) have no lowering: CKKS cannot
compare, and the refusal says what to do. A new site kind registers its own lowering with
:func:`register_he_lowering`; the compiler dispatches on ``site.kind`` and needs no change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import UnsupportedLayerError
from ...relu.sites import ActivationSite

__all__ = ["HE_LOWERINGS", "MAX_DEGREE", "lower_site", "register_he_lowering"]

#: the engine evaluates x^2 with one ciphertext product: degree 1 or 2
MAX_DEGREE = 2

Lowering = Callable[[str, ActivationSite, tuple[int, ...]], np.ndarray]

#: site kind -> lowering; :func:`register_he_lowering` adds to it
HE_LOWERINGS: dict[str, Lowering] = {}

# kinds that compare: the message says how to make the model HE-ready
_COMPARING = ("relu", "masked_relu", "shared_relu", "snl_alpha")


def register_he_lowering(kind: str) -> Callable[[Lowering], Lowering]:
    """Decorator: ``fn(name, site, feature_shape) -> coefficients (degree + 1, features)``."""

    def register(fn: Lowering) -> Lowering:
        HE_LOWERINGS[kind] = fn
        return fn

    return register


def lower_site(name: str, site: ActivationSite) -> np.ndarray:
    """The per-feature polynomial of ``site`` (checked: degree at most :data:`MAX_DEGREE`)."""
    if site.kind in _COMPARING and site.kind not in HE_LOWERINGS:
        raise UnsupportedLayerError(
            f"layer {name} is a ReLU ({type(site).__name__}): CKKS cannot compare, so replace the "
            f"ReLUs by polynomials first: pifair polyfit --from RUN --degree 2"
        )
    lowering = HE_LOWERINGS.get(site.kind)
    if lowering is None:
        raise UnsupportedLayerError(
            f"layer {name} ({type(site).__name__}, kind {site.kind!r}) cannot run under CKKS: "
            f"the HE engine runs the site kinds {', '.join(sorted(HE_LOWERINGS))} "
            "(register_he_lowering adds one)"
        )
    if site.feature_shape is None:
        raise UnsupportedLayerError(f"site {name!r} has not seen an input; run the model once")
    coefficients = np.asarray(lowering(name, site, tuple(site.feature_shape)), dtype=np.float64)
    degree = coefficients.shape[0] - 1
    if degree > MAX_DEGREE:
        raise UnsupportedLayerError(
            f"layer {name} is a degree-{degree} polynomial; the HE engine runs degree 1 or 2 "
            f"(pifair polyfit --degree 2)"
        )
    return np.ascontiguousarray(coefficients)


@register_he_lowering("poly")
def _poly(name: str, site: Any, shape: tuple[int, ...]) -> np.ndarray:
    c = site.coefficients.detach().double()
    if c.dim() == 1:  # one polynomial for the layer
        c = c.view(-1, *[1] * len(shape))
    return c.expand(c.shape[0], *shape).reshape(c.shape[0], -1).cpu().numpy()
