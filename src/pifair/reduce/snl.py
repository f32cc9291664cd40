"""Selective Network Linearization (Cho, Joshi, Reagen, Garg, Hegde, ICML 2022), docs/reductions.md.

Each ReLU site becomes ``a * relu(x) + (1 - a) * x`` with a trainable ``a`` per element
(pixel-wise) or per channel, initialised to 1. The search minimises CE + KD (T = 4) +
lambda * sum |a| (each ``a`` weighted by the ReLUs it controls) with Adam on weights and masks
together; lambda grows when the count of ``a > 1e-2`` stalls. One search trajectory serves
every budget: the state is snapshotted at the first epoch whose count is <= each budget.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config_types import check_settings, setting
from ..data import Dataset, ResidentLoader
from ..errors import ConfigError
from ..fairness.mitigation import ObjectiveName
from ..relu.counting import record_feature_shapes
from ..relu.sites import (
    ActivationSite,
    DenseReLU,
    iter_sites,
    register_site,
    swap_sites,
)
from ..training.distill import DistillationLoss
from ..training.loop import autocast_for
from ..training.objective import end_epoch

__all__ = [
    "SNLSite",
    "LambdaSchedule",
    "SearchSettings",
    "SearchResult",
    "attach_snl_sites",
    "snl_search",
]


@register_site
class SNLSite(ActivationSite):
    """SNL's relaxed site: ``x + a * (relu(x) - x)``, ``a`` per element or per channel."""

    kind = "snl_alpha"

    def __init__(
        self, feature_shape: tuple[int, ...], granularity: str = "pixel", *, threshold: float = 1e-2
    ) -> None:
        super().__init__()
        if granularity not in ("pixel", "channel"):
            raise ConfigError(f"granularity must be 'pixel' or 'channel', got {granularity!r}")
        self.feature_shape = tuple(feature_shape)
        self.granularity, self.threshold = granularity, threshold
        shape = (
            self.feature_shape
            if granularity == "pixel" or len(self.feature_shape) == 1
            else (self.feature_shape[0], 1, 1)
        )
        self.alpha = nn.Parameter(torch.ones(shape))
        # During hardening (pifair.reduce.harden) the forward pass uses this 0/1 mask, with the
        # gradient passed straight through to alpha; None: the soft relaxation.
        self.hard_mask: torch.Tensor | None = None
        self.hard_weight = 1.0  # < 1: progressive binarization, a blend of mask and alpha

    @property
    def cost_per_alpha(self) -> int:
        """ReLUs one entry of ``alpha`` controls (1 pixel-wise, H x W channel-wise)."""
        return math.prod(self.shape) // self.alpha.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a: torch.Tensor = self.alpha
        if self.hard_mask is not None:  # straight-through: the value is binary, d/da is 1
            hard = self.hard_mask.to(a.device) + (a - a.detach())
            a = (
                hard
                if self.hard_weight >= 1
                else self.hard_weight * hard + (1 - self.hard_weight) * a
            )
        a = a.to(x.dtype)
        return x + a * (torch.relu(x) - x)

    def relu_count(self, feature_shape: tuple[int, ...] | None = None) -> int:
        """Entries of ``a`` above the threshold, read from the parameter (no forward pass)."""
        return int((self.alpha.detach() > self.threshold).sum()) * self.cost_per_alpha

    def spec(self) -> dict:
        return {
            "kind": self.kind,
            "feature_shape": list(self.shape),
            "granularity": self.granularity,
        }

    @classmethod
    def from_spec(cls, spec: dict) -> SNLSite:
        return cls(tuple(spec["feature_shape"]), spec["granularity"])


@dataclass
class LambdaSchedule:
    """SNL's lambda rule: after each epoch, if the count set no new minimum and ``epoch >=
    warmup`` (0-based), multiply lambda by ``growth``. ``rule="always"`` grows it after every
    epoch past the warm-up, stall or not; ``rule="budget"`` grows it by ``count / target``
    capped at ``growth`` (driven by the distance to the next budget: fast when far, gentle
    near it, so the search lands close to the budget instead of overshooting it)."""

    init: float = 1e-5
    growth: float = 1.1
    warmup: int = 5
    rule: str = "stall"
    value: float = field(init=False)
    best: float = field(init=False, default=math.inf)

    def __post_init__(self) -> None:
        if self.init <= 0 or self.growth < 1:
            raise ConfigError(
                f"lambda needs init > 0 and growth >= 1, got init {self.init}, growth {self.growth}"
            )
        if self.rule not in ("stall", "always", "budget"):
            raise ConfigError(
                f"lambda rule must be 'stall', 'always' or 'budget', got {self.rule!r}"
            )
        self.value = self.init

    def update(self, epoch: int, count: int, target: int | None = None) -> float:
        """Apply the rule after 0-based ``epoch`` that ended with ``count`` (``target``: the
        next budget, for ``rule="budget"``); return lambda."""
        new_minimum = count < self.best
        self.best = min(self.best, count)
        if epoch < self.warmup:
            return self.value
        if self.rule == "budget":
            distance = count / target if target else math.inf
            self.value *= min(self.growth, max(1.0, distance))
        elif self.rule == "always" or not new_minimum:
            self.value *= self.growth
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.best = state["value"], state["best"]


@dataclass
class SearchSettings:
    """The mask search. SNL's reference values: Adam lr 1e-3, lambda 1e-5 x1.1 on stall after
    epoch 5, T = 4. pifair's defaults grow lambda x1.5 after every epoch past the warm-up, so a
    search ends in tens of epochs, not hundreds; top-k binarization makes the count exact
    wherever the search stops, and one epoch of hardening per budget (training with that exact
    mask, :mod:`pifair.reduce.harden`) makes the binarized model the one that was trained
    (benchmarks/linearize_ablation.py measures each of these choices)."""

    max_epochs: int = setting(30, help="most SNL search epochs", ge=1)
    batch_size: int = setting(128, help="search batch", ge=1)
    lr: float = setting(1e-3, help="Adam lr of the weights", gt=0)
    mask_lr: float | None = setting(None, help="Adam lr of the masks (unset: the weights')", gt=0)
    lambda_init: float = setting(1e-5, help="lambda, the weight of the masks' L1 cost", gt=0)
    lambda_growth: float = setting(
        1.5, help="lambda's factor after every epoch (SNL: 1.1 when the count stalls)", ge=1
    )
    lambda_warmup: int = setting(0, help="epochs before lambda may grow (SNL 5)", ge=0)
    lambda_rule: Literal["always", "stall", "budget"] = setting(
        "always",
        help="lambda growth: after every epoch, when the count stalls (SNL), or by the distance "
        "to the budget",
    )
    threshold: float = setting(1e-2, help="a mask counts as kept above this", gt=0)
    temperature: float = setting(4.0, help="distillation temperature", gt=0)
    kd_weight: float = setting(1.0, help="weight of the distillation term", ge=0)
    seed: int = setting(0, help="seed of the search's batches")
    # per budget, after the shared search: train with the exact top-k mask (pifair.reduce.harden)
    harden_epochs: float = setting(
        1.0,
        help="per budget, epochs of training with the exact top-k mask before binarizing "
        "(0: none, SNL)",
        ge=0,
    )
    harden_mode: Literal["ste", "progressive"] = setting(
        "ste", help="ste: the hard mask, straight-through; progressive: blend the soft one into it"
    )
    harden_refresh: int = setting(10, help="steps between recomputing the top-k mask", ge=1)
    harden_mask_lr: float | None = setting(
        None, help="Adam lr of the masks while hardening (unset: lr)", gt=0
    )
    hysteresis: float = setting(
        0.02, help="added to kept entries' a when the mask is recomputed", ge=0
    )
    allocation: Literal["global", "sensitivity"] = setting(
        "global",
        help="one global top-k, or per-layer budgets by ReLU sensitivity (SENet; pixel-wise)",
    )
    # its parameters are the fine-tuning's (FinetuneSettings.mu, ...)
    objective: ObjectiveName = setting(
        "kd",
        help="objective of the SNL search and hardening: a fairness objective puts the groups' "
        "losses into which ReLUs are kept",
    )

    def __post_init__(self) -> None:
        check_settings(self, prefix="search.")

    def schedule(self) -> LambdaSchedule:
        return LambdaSchedule(
            init=self.lambda_init,
            growth=self.lambda_growth,
            warmup=self.lambda_warmup,
            rule=self.lambda_rule,
        )


@dataclass
class Snapshot:
    """The search state at the first epoch whose count was <= a budget (or at the end)."""

    epoch: int
    count: int
    state_dict: dict[str, torch.Tensor]
    reached: bool


@dataclass
class SearchResult:
    snapshots: dict[int, Snapshot]
    history: list[dict]
    seconds: float

    def summary(self) -> dict:
        return {
            "history": self.history,
            "seconds": self.seconds,
            "snapshots": {
                str(b): {"epoch": s.epoch, "count": s.count, "reached": s.reached}
                for b, s in self.snapshots.items()
            },
        }


def attach_snl_sites(
    model: nn.Module, input_shape: tuple[int, ...], granularity: str, *, threshold: float = 1e-2
) -> nn.Module:
    """Replace every :class:`DenseReLU` of ``model`` (in place) by an :class:`SNLSite`."""
    record_feature_shapes(model, input_shape)

    def swap(name: str, m: nn.Module) -> ActivationSite | None:
        if isinstance(m, DenseReLU):
            return SNLSite(m.shape, granularity, threshold=threshold)
        return None

    swap_sites(model, swap)
    if not any(isinstance(s, SNLSite) for _, s in iter_sites(model)):
        raise ConfigError("the model has no dense ReLU site to linearize")
    return model


def snl_sites(model: nn.Module) -> list[tuple[str, SNLSite]]:
    return [(n, s) for n, s in iter_sites(model) if isinstance(s, SNLSite)]


def alpha_count(model: nn.Module) -> int:
    return sum(s.relu_count() for _, s in snl_sites(model))


def mask_optimizer(
    model: nn.Module, sites: list[SNLSite], *, lr: float, mask_lr: float
) -> torch.optim.Adam:
    """Adam over the weights at ``lr`` and the sites' masks ``a`` at ``mask_lr``."""
    alphas = [s.alpha for s in sites]
    alpha_ids = {id(a) for a in alphas}
    weights = [p for p in model.parameters() if id(p) not in alpha_ids]
    groups: list[dict[str, Any]] = [{"params": weights}, {"params": alphas, "lr": mask_lr}]
    return torch.optim.Adam(groups, lr=lr)


def mask_training_loader(
    data: Dataset, settings: SearchSettings, device: torch.device, *, seed: int
) -> ResidentLoader:
    """The training batches of the mask search and of hardening: shuffled, augmented, full."""
    return ResidentLoader(
        data,
        "train",
        batch_size=settings.batch_size,
        device=device,
        shuffle=True,
        augment=True,
        drop_last=True,
        seed=seed,
        channels_last=device.type == "cuda",
    )


def _l1(sites: list[SNLSite]) -> torch.Tensor:
    # a 0-dim start (0 + x is x exactly) keeps the sum a tensor when there is no site
    return sum((s.alpha.abs().sum() * s.cost_per_alpha for s in sites), torch.zeros(()))


def _search_epoch(
    model: nn.Module,
    batches: Any,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    lam: torch.Tensor,
    sites: list[SNLSite],
    device: torch.device,
) -> None:
    """One epoch of SNL's objective: ``loss_fn + lambda * sum of the masks' costs``."""
    model.train()
    for x, y, g in batches:
        with autocast_for(device):
            logits = model(x)
            loss = loss_fn(logits, y, x, g)
        loss = loss + lam * _l1(sites)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})


def snl_search(
    model: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    budgets: list[int],
    settings: SearchSettings,
    *,
    device: torch.device,
    progress: bool = True,
    state: dict | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    loss_fn: Callable | None = None,
) -> SearchResult:
    """Run the SNL search on ``model`` (already holding :class:`SNLSite` s) until the count is
    <= the smallest budget or ``max_epochs`` pass; snapshot the state for each budget.

    ``state`` resumes a search from what ``on_epoch_end`` was given (a checkpointable dict).
    ``loss_fn(logits, y, x, groups)`` is the objective the L1 term of the masks is added to
    (default: CE + KD from ``teacher``; a fairness objective of :mod:`pifair.fairness.mitigation`
    puts the groups' losses into which ReLUs are kept).
    """
    model.to(device)
    teacher = teacher.to(device).eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    sites = [s for _, s in snl_sites(model)]
    loss_fn = loss_fn or DistillationLoss(
        teacher, temperature=settings.temperature, weight=settings.kd_weight
    )
    optimizer = mask_optimizer(
        model, sites, lr=settings.lr, mask_lr=settings.mask_lr or settings.lr
    )
    schedule = settings.schedule()
    loader = mask_training_loader(data, settings, device, seed=settings.seed)
    state = state or {"history": [], "snapshots": {}, "epoch": 0, "seconds": 0.0}
    if "model" in state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
    history, snapshots, seconds = state["history"], state["snapshots"], state["seconds"]
    pending = sorted((b for b in budgets if b not in snapshots), reverse=True)
    for epoch in range(state["epoch"], settings.max_epochs):
        if not pending:
            break
        t0 = time.perf_counter()
        loader.set_epoch(epoch)
        lam = torch.tensor(schedule.value, device=device)
        bar = tqdm(
            loader, desc=f"SNL search {epoch + 1}", leave=False, disable=None if progress else True
        )
        _search_epoch(model, bar, optimizer, loss_fn, lam, sites, device)
        count = alpha_count(model)  # one host sync per epoch
        seconds += time.perf_counter() - t0
        record = {"epoch": epoch + 1, "count": count, "lambda": schedule.value, "seconds": seconds}
        record |= end_epoch(loss_fn)  # a fairness objective's per-epoch state
        schedule.update(epoch, count, min(pending))
        history.append(record)
        for b in [b for b in pending if count <= b]:
            snapshots[b] = Snapshot(epoch + 1, count, _weights(model), True)
            pending.remove(b)
        if progress:
            tqdm.write(
                f"SNL search epoch {epoch + 1}: {count:,} ReLUs with a > {settings.threshold}  "
                f"lambda {record['lambda']:.2e}  {seconds:.0f}s"
            )
        if on_epoch_end is not None:  # a checkpoint: what ``state`` resumes from
            on_epoch_end(
                dict(model=model.state_dict(), optimizer=optimizer.state_dict())
                | dict(schedule=schedule.state_dict(), history=history, snapshots=snapshots)
                | dict(epoch=epoch + 1, seconds=seconds)
            )
    if pending:  # budgets the search did not reach: the final state, binarized by top-k
        final, count = _weights(model), alpha_count(model)
        for b in pending:
            snapshots[b] = Snapshot(len(history), count, final, False)
    return SearchResult(snapshots=snapshots, history=history, seconds=seconds)


def settings_dict(settings: SearchSettings) -> dict:
    return asdict(settings)
