"""How each activation-site kind runs under MPC: one lowering per ``site.kind``.

A lowering turns a site (with its feature shape known) into a JAX op ``op(x, params)`` and
says what it costs (a :class:`SiteExport`). The exporter dispatches on ``site.kind`` through
:data:`MPC_LOWERINGS`; a new site kind registers its own lowering with
:func:`register_mpc_lowering` and the exporter needs no change. Lowerings read a site's public
attributes only (its mask, groups, rule, coefficients), never another module's internals.

What the sites keep, share or compute is structure (public, as in every PI paper), so it
becomes constant indices:

* ``relu``: one comparison per element;
* ``masked_relu`` (SNL): gather the kept positions, compare only those, put the results back
  with one more constant gather (``jnp.where`` over the full tensor would pay a comparison for
  every element);
* ``shared_relu``: one decision per group (sum, representative or learned weights), one
  comparison per group, the bit broadcast to the members;
* ``poly``: Horner's rule, arithmetic only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import UnsupportedLayerError
from ...extras import require
from ...relu.sites import ActivationSite

__all__ = [
    "MPC_LOWERINGS",
    "LoweringContext",
    "Op",
    "SiteExport",
    "jax_numpy",
    "lower_site",
    "register_mpc_lowering",
]

Op = Callable[..., Any]


@dataclass(frozen=True)
class SiteExport:
    """What one site costs under MPC: its elements, the comparisons it makes, the multiplexers
    that apply their bits (one per element the bit reaches) and a polynomial's secret products."""

    name: str
    kind: str
    elements: int
    comparisons: int
    muxes: int
    poly_products: int = 0


@dataclass
class LoweringContext:
    """What a lowering may use: ``param`` registers a weight (secret, shared like the image)
    and returns its key in ``params``; ``sites`` collects each site's cost."""

    params: dict[str, np.ndarray] = field(default_factory=dict)
    sites: list[SiteExport] = field(default_factory=list)

    def param(self, name: str, value: torch.Tensor) -> str:
        key = name.replace(".", "/")
        self.params[key] = value.detach().cpu().numpy().astype(np.float32)
        return key


Lowering = Callable[[LoweringContext, str, ActivationSite, tuple[int, ...]], Op]

#: site kind -> lowering; :func:`register_mpc_lowering` adds to it
MPC_LOWERINGS: dict[str, Lowering] = {}


def register_mpc_lowering(kind: str) -> Callable[[Lowering], Lowering]:
    """Decorator: ``fn(ctx, name, site, feature_shape) -> op`` runs sites of ``kind`` under MPC."""

    def register(fn: Lowering) -> Lowering:
        MPC_LOWERINGS[kind] = fn
        return fn

    return register


def jax_numpy():
    return require("jax.numpy", extra="mpc", purpose="MPC inference (SPU)", package="jax")


def lower_site(ctx: LoweringContext, name: str, site: ActivationSite) -> Op:
    """The JAX op of ``site``, through the lowering registered for its kind."""
    shape = site.feature_shape
    if shape is None:
        raise UnsupportedLayerError(
            f"site {name!r} has not seen an input; run the model once first"
        )
    lowering = MPC_LOWERINGS.get(site.kind)
    if lowering is None:
        raise UnsupportedLayerError(
            f"site {name!r} ({type(site).__name__}) has no exact MPC form (kind {site.kind!r}); "
            f"the MPC engine runs the kinds {', '.join(sorted(MPC_LOWERINGS))} "
            "(register_mpc_lowering adds one)"
        )
    return lowering(ctx, name, site, tuple(shape))


@register_mpc_lowering("relu")
def _relu(ctx: LoweringContext, name: str, site: ActivationSite, shape: tuple[int, ...]) -> Op:
    features = math.prod(shape)
    ctx.sites.append(SiteExport(name, "relu", features, features, features))
    jnp = jax_numpy()
    return lambda x, _p: jnp.maximum(x, 0.0)


@register_mpc_lowering("masked_relu")
def _masked(ctx: LoweringContext, name: str, site: Any, shape: tuple[int, ...]) -> Op:
    mask = torch.broadcast_to(site.mask, shape).flatten().cpu().numpy() > 0.5
    keep = np.flatnonzero(mask)
    features, kept = mask.size, keep.size
    ctx.sites.append(SiteExport(name, "masked_relu", features, kept, kept))
    jnp = jax_numpy()
    if kept == 0:
        return lambda x, _p: x
    if kept == features:
        return lambda x, _p: jnp.maximum(x, 0.0)
    merge = _replacing(keep, features)

    def op(x, _p):
        flat = x.reshape(x.shape[0], features)
        return merge(flat, jnp.maximum(flat[:, keep], 0.0)).reshape(x.shape)

    return op


def _replacing(positions: np.ndarray, features: int) -> Callable:
    """``merge(flat, values)``: ``flat`` with its columns at ``positions`` replaced by
    ``values``, the others passed through untouched (no select on them: under MPC a select
    over every element costs one multiplexer per element). Position j of the output reads
    column j of ``[flat, values]``: the replaced ones from the tail."""
    select = np.arange(features)
    select[positions] = features + np.arange(positions.size)
    jnp = jax_numpy()

    def merge(flat, values):
        return jnp.concatenate([flat, values], axis=1)[:, select]

    return merge


def _group_members(groups: np.ndarray, count: int, kept: np.ndarray) -> np.ndarray:
    """Members of each group (``kept`` elements only) as a padded (groups, largest size)
    index matrix; the pad points one past the last feature (a zero column)."""
    features = groups.size
    index = np.flatnonzero(kept)
    order = index[np.argsort(groups[index], kind="stable")]
    sizes = np.bincount(groups[index], minlength=count)
    members = np.full((count, int(sizes.max())), features)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for g in range(count):
        members[g, : sizes[g]] = order[starts[g] : starts[g] + sizes[g]]
    return members


@register_mpc_lowering("shared_relu")
def _shared(ctx: LoweringContext, name: str, site: Any, shape: tuple[int, ...]) -> Op:
    groups = site.groups.flatten().cpu().numpy()
    linear = site.linear.flatten().cpu().numpy()  # the identity there: no group, no decision
    features, count = groups.size, site.num_groups(shape)
    ctx.sites.append(SiteExport(name, "shared_relu", features, count, int((~linear).sum())))
    jnp = jax_numpy()
    if site.rule == "representative":
        reps = site.representatives.cpu().numpy()

        def decide(flat, _p):
            return flat[:, reps]
    else:
        # the sign of a group's sum is that of its mean: no division needed
        members = _group_members(groups, count, ~linear)
        w = ctx.param(f"{name}.weight", site.weight.flatten()) if site.rule == "learned" else None

        def decide(flat, p):
            weighted = flat if w is None else flat * p[w]
            zero = jnp.zeros((flat.shape[0], 1), flat.dtype)
            return jnp.concatenate([weighted, zero], axis=1)[:, members].sum(axis=2)

    if not linear.any():

        def op(x, p):
            flat = x.reshape(x.shape[0], features)
            bits = decide(flat, p) > 0.0  # one comparison per group
            return jnp.where(bits[:, groups], flat, 0.0).reshape(x.shape)

        return op
    # linear elements pass through untouched: the multiplexers act on the others only
    nonlinear = np.flatnonzero(~linear)
    merge = _replacing(nonlinear, features)

    def op_with_linear(x, p):
        flat = x.reshape(x.shape[0], features)
        bits = decide(flat, p) > 0.0
        gated = jnp.where(bits[:, groups[nonlinear]], flat[:, nonlinear], 0.0)
        return merge(flat, gated).reshape(x.shape)

    return op_with_linear


@register_mpc_lowering("poly")
def _poly(ctx: LoweringContext, name: str, site: Any, shape: tuple[int, ...]) -> Op:
    c = ctx.param(f"{name}.coefficients", site.coefficients)
    degree = site.degree
    features = math.prod(shape)
    ctx.sites.append(SiteExport(name, "poly", features, 0, 0, degree * features))

    def poly(x, p):
        out = p[c][degree]
        for k in range(degree - 1, -1, -1):  # Horner's rule
            out = out * x + p[c][k]
        return out

    return poly
