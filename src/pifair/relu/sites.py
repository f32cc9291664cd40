"""Activation sites: every nonlinearity of a pifair model is one of these modules.

Sites are the spine of pifair (DESIGN.md section 2). Each reduction (SNL, ReLU sharing,
polynomials) only swaps sites, and each site knows what it costs under cryptography:

* :class:`DenseReLU` -- one comparison (DReLU) per element;
* :class:`MaskedReLU` -- SNL: ReLU on the kept elements, identity elsewhere; comparisons = kept;
* :class:`SharedReLUSite` -- one comparison per group of elements (interface, ReLU sharing);
* :class:`PolynomialSite` -- no comparison, multiplicative depth instead (interface, HE);
* :class:`DenseTanh` -- a smooth nonlinearity (the fair-dp CNN); no comparison, not HE-ready.

Counting is exact: :func:`count_relus` records each site's per-sample feature shape with one
forward pass and asks each site for its comparisons.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
    "SiteCount",
    "ReluCount",
    "iter_sites",
    "register_site",
    "site_from_spec",
    "replace_activations",
    "record_feature_shapes",
    "count_relus",
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


# Plain torch activations that replace_activations turns into sites.
_TORCH_TO_SITE: dict[type[nn.Module], Callable[[], ActivationSite]] = {
    nn.ReLU: DenseReLU,
    nn.Tanh: DenseTanh,
}


def iter_sites(model: nn.Module) -> list[tuple[str, ActivationSite]]:
    """All activation sites of ``model`` with their qualified names, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ActivationSite)]


def replace_activations(
    model: nn.Module,
    factory: Callable[[str, nn.Module], nn.Module | None] | None = None,
) -> nn.Module:
    """Swap activation modules of ``model`` in place and return it.

    ``factory(name, module)`` gets each site (and each plain ``nn.ReLU``/``nn.Tanh``) with its
    qualified name and returns the replacement, or ``None`` to keep it. Without a factory,
    plain torch activations become the matching dense sites, so any PyTorch model can be read
    by pifair's counters and engines.

    Examples
    --------
    >>> import torch, pifair
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> pifair.count_relus(pifair.replace_activations(model), (4,)).total
    8
    """

    def default(name: str, module: nn.Module) -> nn.Module | None:
        maker = _TORCH_TO_SITE.get(type(module))
        return maker() if maker is not None else None

    factory = factory or default
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if name and (isinstance(m, ActivationSite) or type(m) in _TORCH_TO_SITE)
    ]
    for name, module in targets:
        new = factory(name, module)
        if new is None or new is module:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(new, ActivationSite) and isinstance(module, ActivationSite):
            new.feature_shape = new.feature_shape or module.feature_shape
        setattr(parent, child, new)
    return model


def record_feature_shapes(model: nn.Module, input_shape: Sequence[int]) -> None:
    """Run one zero sample through ``model`` (eval mode, no grad) so each site learns its shape."""
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    for _, site in iter_sites(model):
        site.feature_shape = None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class SiteCount:
    """One row of :class:`ReluCount`: a site, its feature shape, its comparisons."""

    name: str
    kind: str
    feature_shape: FeatureShape
    elements: int
    relus: int


@dataclass(frozen=True)
class ReluCount:
    """Comparisons per sample of a model, in total and per site."""

    total: int
    sites: list[SiteCount] = field(default_factory=list)

    @property
    def elements(self) -> int:
        """Elements that pass through an activation site (the dense count)."""
        return sum(s.elements for s in self.sites)

    def table(self) -> str:
        """The per-layer table as aligned text."""
        rows = [("site", "kind", "shape", "elements", "relus")]
        rows += [
            (s.name, s.kind, "x".join(map(str, s.feature_shape)), f"{s.elements:,}", f"{s.relus:,}")
            for s in self.sites
        ]
        rows.append(("total", "", "", f"{self.elements:,}", f"{self.total:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [
            "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
            )
            for r in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "elements": self.elements,
            "sites": [s.__dict__ | {"feature_shape": list(s.feature_shape)} for s in self.sites],
        }

    def __str__(self) -> str:
        return self.table()


def count_relus(model: nn.Module, input_shape: Sequence[int] | None = None) -> ReluCount:
    """Exact number of comparisons per sample of ``model``, with a per-site table.

    ``input_shape`` is the per-sample input shape, e.g. ``(3, 32, 32)``; with it, one forward
    pass records each site's feature shape. Without it, every site must already know its shape
    (it has seen an input, or was built with one).

    Examples
    --------
    >>> import pifair
    >>> model = pifair.create_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    >>> count = pifair.count_relus(model, (1, 28, 28))
    >>> count.total, [s.relus for s in count.sites]
    (18944, [12544, 6272, 128])
    """
    if input_shape is not None:
        record_feature_shapes(model, input_shape)
    rows = []
    for name, site in iter_sites(model):
        if site.feature_shape is None:
            raise ConfigError(
                f"site {name!r} has not seen an input yet; pass input_shape=(C, H, W) to "
                "count_relus"
            )
        shape = site.feature_shape
        rows.append(SiteCount(name, site.kind, shape, math.prod(shape), site.relu_count(shape)))
    return ReluCount(total=sum(r.relus for r in rows), sites=rows)
