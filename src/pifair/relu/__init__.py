"""Activation sites, their counts and ReLU budgets (docs/reductions.md)."""

from .budget import parse_budget
from .calls import CallRecord, NonlinearCall, record_calls
from .convert import UntraceableModelError, convert_activations, replace_activations, trace
from .counting import ReluCount, SiteCount, count_relus, record_feature_shapes
from .sites import (
    ActivationSite,
    DenseReLU,
    DenseTanh,
    MaskedReLU,
    PolynomialSite,
    SharedReLUSite,
    iter_sites,
    register_site,
    site_from_spec,
    swap_sites,
)

__all__ = [
    "ActivationSite",
    "CallRecord",
    "DenseReLU",
    "DenseTanh",
    "MaskedReLU",
    "NonlinearCall",
    "PolynomialSite",
    "ReluCount",
    "SharedReLUSite",
    "SiteCount",
    "UntraceableModelError",
    "convert_activations",
    "count_relus",
    "iter_sites",
    "parse_budget",
    "record_calls",
    "record_feature_shapes",
    "register_site",
    "replace_activations",
    "site_from_spec",
    "swap_sites",
    "trace",
]
