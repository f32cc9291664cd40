"""``polyfit``: replace a model's ReLUs by trainable polynomials (Zhang, Duan, Zou, Liu 2024).

Each polynomial (:class:`pifair.relu.polynomial.PolyAct`) starts as the least-squares fit of
ReLU on the range its inputs take on a calibration set, then the whole network is fine-tuned
with knowledge distillation from its ReLU parent.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..data import Dataset, ResidentLoader
from ..errors import ConfigError
from ..relu.convert import as_site_model
from ..relu.counting import count_relus, record_feature_shapes
from ..relu.polynomial import GRANULARITIES, PolyAct, PolyGranularity
from ..relu.sites import (
    ActivationSite,
    DenseReLU,
    MaskedReLU,
    iter_sites,
    swap_sites,
)
from ..training.loop import CheckpointStore
from .finetune import FinetuneSettings, finetune_reduced
from .result import ReductionResult

__all__ = ["relu_fit", "calibrate_ranges", "PolyfitResult", "polyfit"]


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
    model: nn.Module,
    data: Dataset,
    names: list[str],
    granularity: str,
    *,
    device: torch.device,
    batches: int = 20,
    batch_size: int = 256,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
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


@dataclass(kw_only=True)
class PolyfitResult(ReductionResult):
    """A polynomial (HE-ready) model: no comparison left (``relus`` counts any the model kept
    outside its ReLU sites), degree and granularity of its polynomials."""

    degree: int
    granularity: str
    sites: int
    coefficients: int


def _polynomial_model(
    teacher: nn.Module,
    data: Dataset,
    degree: int,
    granularity: PolyGranularity,
    device: torch.device,
) -> nn.Module:
    """A copy of ``teacher`` whose every ReLU site is a :class:`PolyAct` fitted to ReLU on its
    calibrated input range (the identity where an SNL mask linearized the position)."""
    if degree < 1:
        raise ConfigError(f"polynomial degree must be >= 1, got {degree}")
    if granularity not in GRANULARITIES:
        raise ConfigError(
            f"polynomial granularity must be one of {GRANULARITIES}, got {granularity!r}"
        )
    student = copy.deepcopy(teacher)
    record_feature_shapes(student, data.input_shape)
    targets = [n for n, s in iter_sites(student) if isinstance(s, DenseReLU | MaskedReLU)]
    if not targets:
        raise ConfigError("the model has no ReLU site to replace by a polynomial")
    masked = [n for n in targets if isinstance(student.get_submodule(n), MaskedReLU)]
    if masked and granularity != "element":
        raise ConfigError(
            f"{masked[0]} is a MaskedReLU (an SNL model): its linear positions need their own "
            f"coefficients, so use --granularity element"
        )
    ranges = calibrate_ranges(student, data, targets, granularity, device=device)

    def make(name: str, site: nn.Module) -> nn.Module | None:
        if name not in ranges:
            return None
        assert isinstance(site, ActivationSite)  # the targets are ReLU sites
        poly = PolyAct(degree, granularity, site.shape)
        lo, hi = ranges[name]
        coef = relu_fit(lo, hi, degree).reshape(poly.coefficients.shape)
        if isinstance(site, MaskedReLU):  # identity where SNL linearized the position
            keep = site.mask.expand(site.shape).bool()
            identity = torch.zeros_like(coef)
            identity[1] = 1.0
            coef = torch.where(keep, coef, identity)
        poly.coefficients.data.copy_(coef)
        return poly

    swap_sites(student, make)
    return student.to(device)


def polyfit(
    model: nn.Module,
    train_data: Dataset,
    *,
    degree: int = 2,
    granularity: PolyGranularity = "element",
    finetune: FinetuneSettings | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    checkpoints: CheckpointStore | None = None,
    resume: bool = False,
) -> PolyfitResult:
    """A copy of ``model`` with every ReLU replaced by a trained polynomial.

    Each :class:`~pifair.relu.sites.DenseReLU` becomes a :class:`PolyAct` fitted to ReLU on its
    calibrated input range; a :class:`~pifair.relu.sites.MaskedReLU` (an SNL model) needs
    ``granularity="element"`` and keeps the identity where its mask is 0. Then batch-norm
    statistics are recomputed and the network is fine-tuned with KD from ``model``.

    Parameters
    ----------
    model : nn.Module
        A ReLU model (dense or linearized); not modified.
    train_data : Dataset
        Calibration (input ranges) and fine-tuning data.
    degree : int
        Polynomial degree; the HE engine runs 1 or 2.
    granularity : {"layer", "channel", "element"}
        One polynomial per layer, per channel or per activation position.
    finetune : FinetuneSettings, optional
        The KD fine-tuning from ``model``.

    Returns
    -------
    PolyfitResult
        The polynomial model (no comparison left), its sites and coefficients, the history.

    Examples
    --------
    >>> import pifair
    >>> data = pifair.load_dataset("digits", seed=0)
    >>> relu_model = pifair.create_model("mlp", num_classes=10, input_shape=data.input_shape)
    >>> result = pifair.polyfit(relu_model, data, degree=2, progress=False,
    ...                         finetune=pifair.FinetuneSettings(epochs=0))
    >>> result.relus, result.sites, result.coefficients
    (0, 2, 1536)
    """
    device = torch.device(device)
    finetune = finetune or FinetuneSettings()
    teacher = as_site_model(model, train_data.input_shape).to(device).eval()
    t0 = time.perf_counter()
    student = _polynomial_model(teacher, train_data, degree, granularity, device)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    outcome = finetune_reduced(
        student,
        teacher,
        train_data,
        finetune,
        device=device,
        progress=progress,
        checkpoints=checkpoints,
        resume=resume,
    )
    polys = [s for _, s in iter_sites(student) if isinstance(s, PolyAct)]
    return PolyfitResult(
        model=student.cpu().eval(),
        relus=count_relus(student, train_data.input_shape).total,
        degree=degree,
        granularity=granularity,
        sites=len(polys),
        coefficients=sum(p.coefficients.numel() for p in polys),
        **outcome.result_fields(),
        seconds={"reduce": fit_s, "finetune": time.perf_counter() - t1},
    )
