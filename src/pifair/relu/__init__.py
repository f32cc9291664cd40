"""Activation sites and ReLU budgets (DESIGN.md section 2)."""

from .budget import parse_budget
from .sites import (
    ActivationSite,
    DenseReLU,
    DenseTanh,
    MaskedReLU,
    PolynomialSite,
    ReluCount,
    SharedReLUSite,
    SiteCount,
    count_relus,
    iter_sites,
    record_feature_shapes,
    register_site,
    replace_activations,
    site_from_spec,
)

__all__ = [
    "ActivationSite",
    "DenseReLU",
    "DenseTanh",
    "MaskedReLU",
    "PolynomialSite",
    "ReluCount",
    "SharedReLUSite",
    "SiteCount",
    "count_relus",
    "iter_sites",
    "parse_budget",
    "record_feature_shapes",
    "register_site",
    "replace_activations",
    "site_from_spec",
]
