"""Activation sites: every nonlinearity of a pifair model is one of these modules.

Sites are the spine of pifair (docs/architecture.md). Each reduction (SNL, ReLU sharing,
polynomials) only swaps sites, and each site knows what it costs under cryptography:

* :class:`DenseReLU` -- one comparison (DReLU) per element;
* :class:`MaskedReLU` -- SNL: ReLU on the kept elements, identity elsewhere; comparisons = kept;
* :class:`SharedReLUSite` -- one comparison per group of elements (interface, ReLU sharing);
* :class:`PolynomialSite` -- no comparison, multiplicative depth instead (interface, HE);
* :class:`DenseTanh` -- a smooth nonlinearity (the fair-dp CNN); no comparison, not HE-ready.

Counting is in :mod:`pifair.relu.counting`; plain PyTorch models become models of sites in
:mod:`pifair.relu.convert`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError

__all__ = [
    "ActivationSite",
    "DenseReLU",
    "DenseTanh",
    "MaskedReLU",
    "SharedReLUSite",
    "PolynomialSite",
    "iter_sites",
    "register_site",
    "site_from_spec",
    "swap_sites",
]

FeatureShape = tuple[int, ...]


class ActivationSite(nn.Module, ABC):
    """A nonlinearity that knows its cost under private inference.

    ``feature_shape`` is the per-sample input shape (C, H, W) or (F,), recorded at the first
    forward pass (or given); costs are functions of it.
    """

    #: short name of the site kind, used in tables and by the secure engines
    kind: str = "site"

    def __init__(self) -> None:
        super().__init__()
        self.feature_shape: FeatureShape | None = None

    @property
    def shape(self) -> FeatureShape:
        """The per-sample feature shape; a clear error when the site has not seen an input."""
        if self.feature_shape is None:
            raise ConfigError(
                f"{type(self).__name__} has not seen an input yet; run the model once (or "
                "count_relus(model, input_shape)) first"
            )
        return self.feature_shape

    def _record_shape(self, x: torch.Tensor) -> None:
        if self.feature_shape is None:
            self.feature_shape = tuple(int(s) for s in x.shape[1:])

    @abstractmethod
    def relu_count(self, feature_shape: FeatureShape) -> int:
        """Number of comparisons (DReLUs) per sample for inputs of ``feature_shape``."""

    def multiplicative_depth(self) -> int:
        """Ciphertext-ciphertext multiplication depth under HE (0 for identity)."""
        return 0

    def spec(self) -> dict:
        """What rebuilds this site (its parameters and buffers come from the state dict)."""
        return {"kind": self.kind}

    @classmethod
    def from_spec(cls, spec: dict) -> ActivationSite:
        return cls()

    def extra_repr(self) -> str:
        return "" if self.feature_shape is None else f"feature_shape={self.feature_shape}"


_SITE_TYPES: dict[str, type[ActivationSite]] = {}


def register_site(cls: type[ActivationSite]) -> type[ActivationSite]:
    """Class decorator: make a site type loadable from saved models by its ``kind``."""
    _SITE_TYPES[cls.kind] = cls
    return cls


def site_from_spec(spec: dict) -> ActivationSite:
    """Rebuild a site from :meth:`ActivationSite.spec` (parameters come from the state dict)."""
    kind = spec.get("kind")
    if kind not in _SITE_TYPES:
        raise ConfigError(f"unknown activation site kind {kind!r}; known: {sorted(_SITE_TYPES)}")
    return _SITE_TYPES[kind].from_spec(spec)


@register_site
class DenseReLU(ActivationSite):
    """Plain ReLU: one comparison per element."""

    kind = "relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record_shape(x)
        return torch.relu(x)

    def relu_count(self, feature_shape: FeatureShape) -> int:
        return math.prod(feature_shape)


@register_site
class DenseTanh(ActivationSite):
    """Tanh (the fair-dp CNN's nonlinearity). No comparison; no HE or MPC engine runs it."""

    kind = "tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record_shape(x)
        return torch.tanh(x)

    def relu_count(self, feature_shape: FeatureShape) -> int:
        return 0


@register_site
class MaskedReLU(ActivationSite):
    """ReLU on the positions where ``mask`` is 1, identity where it is 0 (SNL, Cho et al. 2022).

    The mask has the per-sample feature shape (pixel-wise, C x H x W) or one entry per channel
    (channel-wise, C x 1 x 1) and is shared over the batch. It is a buffer (not trained); SNL's
    learnable relaxation lives in :mod:`pifair.reduce.snl`.
    """

    kind = "masked_relu"
    mask: torch.Tensor  # a buffer: 0/1, the per-sample feature shape or (C, 1, 1)

    def __init__(self, mask: torch.Tensor, *, feature_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        mask = torch.as_tensor(mask)
        if mask.dim() == 0:
            raise ConfigError("MaskedReLU needs a mask of shape (C, H, W), (C, 1, 1) or (F,)")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ConfigError("MaskedReLU's mask must hold only 0 and 1")
        self.register_buffer("mask", mask.to(torch.float32))
        if feature_shape is not None:
            self.feature_shape = tuple(int(s) for s in feature_shape)
            torch.broadcast_shapes(self.mask.shape, self.feature_shape)

    @property
    def granularity(self) -> str:
        """``"channel"`` when the mask has one entry per channel, else ``"pixel"``."""
        return "channel" if self.mask.dim() == 3 and self.mask.shape[1:] == (1, 1) else "pixel"

    def spec(self) -> dict:
        return {"kind": self.kind, "mask_shape": list(self.mask.shape)}

    @classmethod
    def from_spec(cls, spec: dict) -> MaskedReLU:
        return cls(torch.ones(spec["mask_shape"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record_shape(x)
        mask = self.mask.to(x.dtype)
        return x + mask * (torch.relu(x) - x)

    def relu_count(self, feature_shape: FeatureShape | None = None) -> int:
        """Kept elements, read from the mask (no forward pass needed once the shape is known)."""
        shape = feature_shape or self.feature_shape or tuple(self.mask.shape)
        expand = math.prod(shape) // self.mask.numel()
        return int(self.mask.sum().item()) * expand


class SharedReLUSite(ActivationSite):
    """Interface of ReLU sharing: ``out = x * step(d_group)``, one decision per group.

    Implementations (``pifair.relu.shared_relu``) give :meth:`num_groups`; the comparisons are the
    groups, whatever their sizes.
    """

    kind = "shared_relu"

    @abstractmethod
    def num_groups(self, feature_shape: FeatureShape) -> int:
        """Number of sign decisions per sample."""

    def relu_count(self, feature_shape: FeatureShape) -> int:
        return self.num_groups(feature_shape)


class PolynomialSite(ActivationSite):
    """Interface of polynomial activations (HE): no comparison, depth from the degree."""

    kind = "poly"

    @property
    @abstractmethod
    def degree(self) -> int:
        """Degree of the polynomial."""

    def relu_count(self, feature_shape: FeatureShape) -> int:
        return 0

    def multiplicative_depth(self) -> int:
        return math.ceil(math.log2(self.degree)) if self.degree > 1 else 0


def iter_sites(model: nn.Module) -> list[tuple[str, ActivationSite]]:
    """All activation sites of ``model`` with their qualified names, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ActivationSite)]


def swap_sites(
    model: nn.Module, factory: Callable[[str, ActivationSite], nn.Module | None]
) -> nn.Module:
    """Swap the activation sites of ``model`` in place and return it.

    ``factory(name, site)`` gets each site with its qualified name and returns the replacement,
    or ``None`` to keep it. A model with plain torch activations is converted first
    (:func:`pifair.relu.convert.replace_activations` does both).
    """
    for name, module in iter_sites(model):
        new = factory(name, module)
        if new is None or new is module:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(new, ActivationSite):
            new.feature_shape = new.feature_shape or module.feature_shape
        setattr(parent, child, new)
    return model
