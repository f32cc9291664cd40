"""Trainable polynomial activations for HE (Zhang, Duan, Zou, Liu 2024) and ``polyfit``.

Under CKKS a ReLU cannot be computed; a low-degree polynomial can, at a cost in multiplicative
depth. :class:`PolyAct` is ``y = sum_k c_k x^k`` with coefficients per layer, per channel or
per element (the paper's fine-grained choice: one polynomial per activation position). Each
polynomial starts as the least-squares fit of ReLU on the range its inputs take on a
calibration set, then the whole network is fine-tuned with knowledge distillation from its ReLU
parent (:func:`polyfit`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data import Dataset, ResidentLoader
from ..errors import ConfigError
from .linearize import FinetuneSettings, _finetune, recalibrate_batchnorm
from .sites import (
    DenseReLU,
    FeatureShape,
    MaskedReLU,
    PolynomialSite,
    iter_sites,
    record_feature_shapes,
    register_site,
    replace_activations,
)

__all__ = ["PolyAct", "GRANULARITIES", "relu_fit", "calibrate_ranges", "PolyfitResult", "polyfit"]

GRANULARITIES = ("layer", "channel", "element")


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

    def __init__(self, degree: int, granularity: str, feature_shape: FeatureShape) -> None:
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
        return {"kind": self.kind, "degree": self.degree, "granularity": self.granularity, "feature_shape": list(self.feature_shape)}  # fmt: skip

    @classmethod
    def from_spec(cls, spec: dict) -> PolyAct:
        return cls(spec["degree"], spec["granularity"], tuple(spec["feature_shape"]))

    def extra_repr(self) -> str:
        return f"degree={self.degree}, granularity={self.granularity}, feature_shape={self.feature_shape}"


def relu_fit(lo: torch.Tensor, hi: torch.Tensor, degree: int, *, points: int = 256) -> torch.Tensor:
    """Least-squares coefficients (degree + 1, *lo.shape) of ReLU on ``[lo, hi]``, elementwise.

    Uniform grid of ``points`` per interval; ranges are widened to at least 1e-3 so a constant
    input still gets a well-posed fit.
    """
    lo, hi = lo.double(), hi.double()
    mid, half = (lo + hi) / 2, ((hi - lo) / 2).clamp(min=5e-4)
    t = torch.linspace(-1.0, 1.0, points, dtype=torch.float64)
    # Fit in the normalised variable t = (x - mid) / half (well conditioned), then expand.
    vander = torch.stack([t**k for k in range(degree + 1)], dim=1)  # (P, d+1)
    x = mid.reshape(-1, 1) + half.reshape(-1, 1) * t  # (U, P)
    a = torch.linalg.lstsq(vander, torch.relu(x).T).solution.T  # (U, d+1) in t
    # sum_j a_j ((x - mid) / half)^j  ->  sum_k c_k x^k
    m, h = mid.reshape(-1, 1), half.reshape(-1, 1)
    c = torch.zeros_like(a)
    for j in range(degree + 1):
        for k in range(j + 1):
            c[:, k] += a[:, j] * math.comb(j, k) * (-m[:, 0]) ** (j - k) / h[:, 0] ** j
    return c.T.reshape(degree + 1, *lo.shape).float()


@torch.no_grad()
def calibrate_ranges(
    model: nn.Module, data: Dataset, names: list[str], granularity: str, *, device: torch.device,
    batches: int = 20, batch_size: int = 256,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Per site: the min and max of its inputs on training batches, reduced to the granularity."""
    sites = dict(iter_sites(model))
    ranges: dict[str, list[torch.Tensor]] = {}

    def reduce(x: torch.Tensor, fn) -> torch.Tensor:
        x = fn(x, dim=0).values  # over the batch: per element
        if granularity == "element":
            return x
        dims = tuple(range(1, x.dim())) if granularity == "channel" else tuple(range(x.dim()))
        for d in sorted(dims, reverse=True):
            x = fn(x, dim=d, keepdim=granularity == "channel").values
        return x

    def hook(name: str):
        def fn(_m, inputs, _out):
            x = inputs[0].detach().float()
            lo, hi = reduce(x, torch.min), reduce(x, torch.max)
            if name in ranges:
                ranges[name] = [
                    torch.minimum(ranges[name][0], lo),
                    torch.maximum(ranges[name][1], hi),
                ]
            else:
                ranges[name] = [lo, hi]

        return fn

    handles = [sites[n].register_forward_hook(hook(n)) for n in names]
    model.to(device).eval()
    loader = ResidentLoader(
        data, "train", batch_size=batch_size, device=device, shuffle=True, seed=777
    )
    for i, (x, _, _) in enumerate(loader):
        if i >= batches:
            break
        model(x)
    for h in handles:
        h.remove()
    return {n: (lo.cpu(), hi.cpu()) for n, (lo, hi) in ranges.items()}


@dataclass
class PolyfitResult:
    """A polynomial (HE-ready) model and how it was made."""

    model: nn.Module
    degree: int
    granularity: str
    sites: int
    coefficients: int
    val_accuracy_before_finetune: float | None = None
    finetune_history: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def polyfit(
    model: nn.Module,
    train_data: Dataset,
    *,
    degree: int = 2,
    granularity: str = "element",
    finetune: FinetuneSettings | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    run=None,
    resume: bool = False,
) -> PolyfitResult:
    """A copy of ``model`` with every ReLU replaced by a trained polynomial.

    Each :class:`~pifair.relu.sites.DenseReLU` becomes a :class:`PolyAct` fitted to ReLU on its
    calibrated input range; a :class:`~pifair.relu.sites.MaskedReLU` (an SNL model) needs
    ``granularity="element"`` and keeps the identity where its mask is 0. Then batch-norm
    statistics are recomputed and the network is fine-tuned with KD from ``model``.
    """
    from ..training.loop import evaluate  # late import: training imports relu

    if degree < 1:
        raise ConfigError(f"polynomial degree must be >= 1, got {degree}")
    _coef_shape(granularity, (1, 1, 1))  # validates the name
    device = torch.device(device)
    finetune = finetune or FinetuneSettings()
    teacher = copy.deepcopy(model).to(device).eval()
    student = copy.deepcopy(teacher)
    record_feature_shapes(student, train_data.input_shape)
    targets = [n for n, s in iter_sites(student) if isinstance(s, DenseReLU | MaskedReLU)]
    if not targets:
        raise ConfigError("the model has no ReLU site to replace by a polynomial")
    masked = [n for n in targets if isinstance(student.get_submodule(n), MaskedReLU)]
    if masked and granularity != "element":
        raise ConfigError(
            f"{masked[0]} is a MaskedReLU (an SNL model): its linear positions need their own "
            f"coefficients, so use --granularity element"
        )
    t0 = time.perf_counter()
    ranges = calibrate_ranges(student, train_data, targets, granularity, device=device)

    def make(name: str, site: nn.Module) -> nn.Module | None:
        if name not in ranges:
            return None
        poly = PolyAct(degree, granularity, site.feature_shape)
        lo, hi = ranges[name]
        coef = relu_fit(lo, hi, degree).reshape(poly.coefficients.shape)
        if isinstance(site, MaskedReLU):  # identity where SNL linearized the position
            keep = site.mask.expand(site.feature_shape).bool()
            identity = torch.zeros_like(coef)
            identity[1] = 1.0
            coef = torch.where(keep, coef, identity)
        poly.coefficients.data.copy_(coef)
        return poly

    replace_activations(student, make)
    student.to(device)
    recalibrate_batchnorm(student, train_data, device=device)
    before = evaluate(student, train_data, "val").accuracy if len(train_data.val) else None
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    history = _finetune(student, teacher, train_data, finetune, device=device, progress=progress, run=run, resume=resume)  # fmt: skip
    polys = [s for _, s in iter_sites(student) if isinstance(s, PolyAct)]
    return PolyfitResult(
        model=student.cpu().eval(), degree=degree, granularity=granularity, sites=len(polys),
        coefficients=sum(p.coefficients.numel() for p in polys), val_accuracy_before_finetune=before,
        finetune_history=history, seconds={"fit": fit_s, "finetune": time.perf_counter() - t1},
    )  # fmt: skip
