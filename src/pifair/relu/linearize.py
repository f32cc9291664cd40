"""``pifair.linearize``: reduce a model to an exact ReLU budget, by SNL or by a naive baseline.

Pipeline per budget (DESIGN.md section 3, with pifair's corrections):
1. scores -- SNL's searched masks ``a`` (:mod:`pifair.relu.snl`), or mean |x| of each site's
   input on a calibration set (the naive baseline);
2. binarize -- exactly ``budget`` ReLUs kept (top-k; whole channels for channel-wise, the largest
   count the channel sizes allow without going over) -- or SNL's own ``a > 1e-2`` threshold
   in reference mode;
3. batch-norm statistics recomputed for the binarized network (binarizing shifts every
   activation's distribution; stale statistics send accuracy to chance);
4. fine-tune with CE + KD (T = 4) from the dense model, keeping the best validation epoch.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import torch
from torch import nn

from ..data import Dataset, ResidentLoader
from ..errors import BudgetError, ConfigError
from ..fairness.mitigation import DUAL_UPDATES, OBJECTIVES, build_objective
from .allocation import allocate_by_sensitivity, relu_sensitivity
from .budget import parse_budget
from .harden import harden
from .selection import select_channels, select_pixels, select_pixels_per_site
from .sites import (
    ActivationSite,
    DenseReLU,
    MaskedReLU,
    count_relus,
    iter_sites,
    record_feature_shapes,
    replace_activations,
)
from .snl import SearchSettings, SNLSite, attach_snl_sites, snl_search

__all__ = [
    "FinetuneSettings",
    "LinearizeResult",
    "linearize",
    "linearize_many",
    "magnitude_scores",
    "recalibrate_batchnorm",
    "reference_settings",
]


@dataclass
class FinetuneSettings:
    """Fine-tuning after binarization. SNL's paper: SGD lr 1e-3, 100 epochs, final epoch."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = 4.0
    kd_weight: float = 1.0
    recalibrate_bn: bool = True
    select_best: bool = True
    # with select_best, the model before fine-tuning is a candidate too: after hardening it can
    # already be better on validation than every fine-tuned epoch. Off by default: on the
    # Fashion-MNIST ablation it did not lower the test drop (the validation split is small)
    start_candidate: bool = False
    seed: int = 0
    grad_clip: float | None = 5.0  # nearly linear networks (tiny budgets) can diverge without it
    # the training objective: "kd", or a fairness-aware one of pifair.fairness.mitigation
    # (constrained, anchored, group-dro, logit-adjust, reweight); the parameters below are theirs
    objective: str = "kd"
    mu: float = 1e-2  # dual step of the constrained and anchored objectives
    multiplier_init: float = 0.5  # warm start of their multipliers (Das et al.: 0)
    dual_update: str = "step"  # multipliers updated after every "step" or every "epoch"
    dro_step: float = 0.01  # group DRO's exponentiated-gradient step
    logit_tau: float = 1.0  # logit adjustment's tau
    # the epoch kept with select_best: best validation "accuracy", or "fair": accuracy minus
    # |minority-majority gap| against the dense model on validation (pifair.fairness.selection)
    select_by: str = "accuracy"

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"fine-tuning epochs must be >= 0 (0: none), got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"fine-tuning batch_size must be >= 1, got {self.batch_size}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"fine-tuning {name} must be > 0, got {getattr(self, name)}")
        for name in ("momentum", "weight_decay", "kd_weight", "mu", "multiplier_init", "logit_tau"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"fine-tuning {name} must be >= 0, got {getattr(self, name)}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"fine-tuning grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"fine-tuning objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        if self.dual_update not in DUAL_UPDATES:
            raise ConfigError(f"dual_update must be 'step' or 'epoch', got {self.dual_update!r}")
        if not self.dro_step > 0:
            raise ConfigError(f"dro_step must be > 0, got {self.dro_step}")
        if self.select_by not in ("accuracy", "fair"):
            raise ConfigError(f"select_by must be 'accuracy' or 'fair', got {self.select_by!r}")


def reference_settings(
    search: SearchSettings, finetune: FinetuneSettings
) -> tuple[SearchSettings, FinetuneSettings]:
    """SNL's reference code settings: lambda x1.1 on stall, threshold binarization of the soft
    masks (no hardening, one global ranking), lr 1e-3, no batch-norm recalibration, the last
    fine-tuning epoch kept."""
    search = replace(
        search,
        lambda_init=1e-5,
        lambda_growth=1.1,
        lambda_rule="stall",
        lambda_warmup=5,
        mask_lr=None,
        harden_epochs=0.0,
        allocation="global",
    )
    finetune = replace(finetune, lr=1e-3, recalibrate_bn=False, select_best=False)
    return search, finetune


@dataclass
class LinearizeResult:
    """A reduced model and how it was made."""

    model: nn.Module
    budget: int
    relus: int
    method: str
    granularity: str
    binarize: str
    search: dict = field(default_factory=dict)
    finetune_history: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    val_accuracy_before_finetune: float | None = None
    val_accuracy_soft: float | None = None  # the searched soft model (SNL), before binarizing
    hardening: list[dict] = field(default_factory=list)
    site_budgets: dict[str, int] | None = None
    kept_before_finetune: bool = False  # validation preferred the model before fine-tuning


def magnitude_scores(
    model: nn.Module,
    data: Dataset,
    granularity: str,
    *,
    device: torch.device,
    batches: int = 20,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Naive baseline scores: mean |x| at each dense ReLU site's input over calibration batches
    of the training split (per element, or per channel averaged over H x W)."""
    sites = {n: s for n, s in iter_sites(model) if isinstance(s, DenseReLU)}
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(module, inputs, output):
            x = inputs[0].detach().float().abs().sum(0)
            if granularity == "channel" and x.dim() == 3:
                x = x.mean(dim=(1, 2), keepdim=True)
            sums[name] = sums.get(name, 0) + x

        return fn

    handles = [s.register_forward_hook(hook(n)) for n, s in sites.items()]
    model.to(device).eval()
    loader = ResidentLoader(
        data, "train", batch_size=batch_size, device=device, shuffle=True, seed=12345
    )
    seen = 0
    with torch.no_grad():
        for i, (x, _, _) in enumerate(loader):
            if i >= batches:
                break
            model(x)
            seen += len(x)
    for h in handles:
        h.remove()
    return {n: (s / seen).cpu() for n, s in sums.items()}


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    data: Dataset,
    *,
    device: torch.device,
    batches: int = 50,
    batch_size: int = 256,
) -> None:
    """Recompute every BatchNorm's running statistics on training batches (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.to(device).train()
    loader = ResidentLoader(
        data,
        "train",
        batch_size=batch_size,
        device=device,
        shuffle=True,
        seed=54321,
        channels_last=device.type == "cuda",
    )
    for i, (x, _, _) in enumerate(loader):
        if i >= batches:
            break
        model(x)
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)
    model.eval()


def _search_params(search: SearchSettings, finetune: FinetuneSettings) -> FinetuneSettings:
    """The search's objective parameters: the fine-tuning's mitigation parameters with the
    search's own distillation temperature and weight."""
    return replace(finetune, temperature=search.temperature, kd_weight=search.kd_weight)


def _relus_per_score(
    scores: dict[str, torch.Tensor], sites: dict[str, ActivationSite]
) -> dict[str, int]:
    """ReLUs one score entry controls in each site: 1 pixel-wise, H x W channel-wise. From the
    site's feature shape, never from its current count (an SNL site counts only the entries
    still above the threshold)."""
    return {n: math.prod(sites[n].feature_shape) // scores[n].numel() for n in scores}


def _masks_from_scores(
    scores: dict[str, torch.Tensor],
    sizes: dict[str, int],
    budget: int,
    granularity: str,
    site_budgets: dict[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """0/1 masks at ``budget``: global top-k, per-site top-k (``site_budgets``), or channels."""
    if granularity == "pixel":
        if site_budgets is not None:
            return select_pixels_per_site(scores, site_budgets)
        return select_pixels(scores, budget)
    return select_channels(scores, sizes, budget)


def _sensitivity(
    dense: nn.Module, data: Dataset, granularity: str, *, device: torch.device
) -> dict[str, float]:
    """SENet-style ReLU sensitivity of the dense model, measured once for every budget
    (pixel-wise only: whole channels are another problem)."""
    if granularity != "pixel":
        raise ConfigError(
            "allocation 'sensitivity' is pixel-wise only; use --allocation global with "
            "--granularity channel"
        )
    return relu_sensitivity(dense, data, device=device)


def _apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    def swap(name: str, m: nn.Module):
        if name in masks:
            return MaskedReLU(masks[name], feature_shape=m.feature_shape)
        return None

    return replace_activations(model, swap)


def _selection_score(
    dense: nn.Module, data: Dataset, settings: FinetuneSettings, *, device: torch.device
) -> Callable | None:
    """The validation score that picks the kept epoch: None (accuracy) or, with
    ``select_by="fair"``, accuracy minus |minority-majority gap| against ``dense``."""
    if settings.select_by == "accuracy":
        return None
    from ..fairness.audit import minority_groups
    from ..fairness.selection import gap_penalised_accuracy
    from ..training.loop import evaluate  # late import: training imports relu

    return gap_penalised_accuracy(
        evaluate(dense, data, "val", device=device), minority_groups(data)
    )


def _finetune(
    model: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    settings: FinetuneSettings,
    *,
    device: torch.device,
    progress: bool,
    run=None,
    resume: bool = False,
    select_score: Callable | None = None,
) -> list[dict]:
    from ..training.loop import LoopSettings, fit  # late import: training imports relu

    if settings.epochs == 0:
        return []
    loop = LoopSettings(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, momentum=settings.momentum,
                        weight_decay=settings.weight_decay, schedule="cosine", seed=settings.seed, device=device, progress=progress, grad_clip=settings.grad_clip)  # fmt: skip
    loss = build_objective(settings.objective, teacher, data, settings)
    return fit(model, data, loop, loss_fn=loss, run=run, resume=resume, select_best=settings.select_best,
               select_score=select_score)  # fmt: skip


def linearize_many(
    model: nn.Module,
    data: Dataset,
    budgets: list[int | str],
    *,
    granularity: str = "pixel",
    method: str = "snl",
    search: SearchSettings | None = None,
    finetune: FinetuneSettings | None = None,
    reference: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
    search_state: dict | None = None,
    on_search_epoch: Callable[[dict], None] | None = None,
    finetune_run: Callable[[int], tuple[object, bool]] | None = None,
) -> dict[int, LinearizeResult]:
    """Reduce ``model`` to each budget; SNL runs one search for all of them.

    ``model`` is not modified. ``finetune_run(budget)`` may give ``(run, resume)`` so each
    fine-tuning checkpoints into its own run folder.
    """
    if granularity not in ("pixel", "channel"):
        raise ConfigError(f"granularity must be 'pixel' or 'channel', got {granularity!r}")
    if method not in ("snl", "naive"):
        raise ConfigError(f"method must be 'snl' or 'naive', got {method!r}")
    device = torch.device(device)
    search, finetune = search or SearchSettings(), finetune or FinetuneSettings()
    if reference:
        search, finetune = reference_settings(search, finetune)
    dense = copy.deepcopy(model).to(device).eval()
    dense_count = count_relus(dense, data.input_shape)
    total = dense_count.total
    if any(s.kind in ("masked_relu", "snl_alpha", "shared_relu") for _, s in iter_sites(dense)):
        raise ConfigError(
            "linearize needs a dense model (its ReLU sites all DenseReLU); pass the dense parent"
        )
    wanted = sorted({parse_budget(b, total) for b in budgets})
    results: dict[int, LinearizeResult] = {}
    search_summary: dict = {}
    snapshots = {}
    sensitivity = (
        _sensitivity(dense, data, granularity, device=device)
        if search.allocation == "sensitivity" and not reference
        else None
    )
    relu_sizes = {s.name: s.elements for s in dense_count.sites if s.kind == DenseReLU.kind}
    select_score = _selection_score(dense, data, finetune, device=device)
    # a fresh objective for the search and for each budget's hardening (objectives hold state)
    search_objective = partial(build_objective, search.objective, dense, data, _search_params(search, finetune))  # fmt: skip
    t0 = time.perf_counter()
    work = copy.deepcopy(dense)
    if method == "snl":
        attach_snl_sites(work, data.input_shape, granularity, threshold=search.threshold)
        to_search = [b for b in wanted if b < total]
        if to_search:
            outcome = snl_search(
                work,
                dense,
                data,
                to_search,
                search,
                device=device,
                progress=progress,
                state=search_state,
                on_epoch_end=on_search_epoch,
                loss_fn=search_objective(),
            )
            snapshots, search_summary = outcome.snapshots, outcome.summary()
    search_seconds = time.perf_counter() - t0
    for budget in wanted:
        t1 = time.perf_counter()
        if budget == total:  # every ReLU kept: the dense model itself
            results[budget] = LinearizeResult(
                copy.deepcopy(dense).cpu(),
                budget,
                total,
                method,
                granularity,
                "none",
                search_summary,
                [],
                {"search": 0.0, "finetune": 0.0},
            )
            continue
        reduced = copy.deepcopy(work)
        from ..training.loop import evaluate  # late import: training imports relu

        soft, hardening = None, []
        if method == "snl":
            reduced.load_state_dict(snapshots[budget].state_dict)
            sites = {n: s for n, s in iter_sites(reduced) if isinstance(s, SNLSite)}
            scores = {n: s.alpha.detach().cpu() for n, s in sites.items()}
            soft = evaluate(reduced, data, "val", device=device).accuracy
        else:
            record_feature_shapes(reduced, data.input_shape)
            sites = {n: s for n, s in iter_sites(reduced) if isinstance(s, DenseReLU)}
            scores = magnitude_scores(reduced, data, granularity, device=device)
        site_budgets = (
            allocate_by_sensitivity(sensitivity, relu_sizes, budget)
            if sensitivity is not None
            else None
        )
        make_masks = partial(
            _masks_from_scores,
            sizes=_relus_per_score(scores, sites),
            budget=budget,
            granularity=granularity,
            site_budgets=site_budgets,
        )
        if reference and method == "snl" and snapshots[budget].reached:
            masks = {n: (scores[n] > search.threshold).float() for n in scores}
            binarize = f"threshold a > {search.threshold}"
        elif method == "snl" and search.harden_epochs > 0:
            masks, hardening = harden(
                reduced, dense, data, make_masks, search, device=device, progress=progress,
                loss_fn=search_objective(),
            )  # fmt: skip
            binarize = f"hardened {search.harden_epochs:g} epochs ({search.harden_mode}), then "
        else:
            masks = make_masks(scores)
            binarize = ""
        if not binarize.startswith("threshold"):
            binarize += (
                ("top-k per site (sensitivity)" if site_budgets else "top-k")
                if granularity == "pixel"
                else "top channels (largest count <= budget)"
            )
        harden_seconds = hardening[-1]["seconds"] if hardening else 0.0
        _apply_masks(reduced, masks)
        reduced.to(device)
        if finetune.recalibrate_bn:
            recalibrate_batchnorm(reduced, data, device=device)
        before_report = evaluate(reduced, data, "val", device=device)
        before = before_report.accuracy
        run, resume = finetune_run(budget) if finetune_run else (None, False)
        keep_start = finetune.select_best and finetune.start_candidate
        start_state = copy.deepcopy(reduced.state_dict()) if keep_start else None
        history = _finetune(reduced, dense, data, finetune, device=device, progress=progress, run=run, resume=resume,
                            select_score=select_score)  # fmt: skip
        before_score = select_score(before_report) if select_score else before
        kept_start = (
            start_state is not None
            and bool(history)
            and before_score > max(h.get("val_score", h["val_accuracy"]) for h in history)
        )
        if kept_start:
            reduced.load_state_dict(start_state)  # validation prefers the model before fine-tuning
            for h in history:
                h["selected"] = False
        relus = count_relus(reduced, data.input_shape).total
        if not reference and (relus > budget or (granularity == "pixel" and relus != budget)):
            raise BudgetError(
                f"internal error: reduced model keeps {relus:,} ReLUs for a budget of {budget:,}"
            )
        results[budget] = LinearizeResult(
            model=reduced.cpu().eval(), budget=budget, relus=relus, method=method, granularity=granularity, binarize=binarize,
            search=search_summary, finetune_history=history, val_accuracy_before_finetune=before,
            val_accuracy_soft=soft, hardening=hardening, site_budgets=site_budgets, kept_before_finetune=kept_start,
            seconds={"search": search_seconds, "harden": harden_seconds, "finetune": time.perf_counter() - t1 - harden_seconds},
        )  # fmt: skip
    return results


def linearize(
    model: nn.Module,
    train_data: Dataset,
    budget: int | str,
    *,
    granularity: str = "pixel",
    **options,
) -> nn.Module:
    """The reduced copy of ``model`` keeping exactly ``budget`` ReLUs (pixel-wise), or the
    largest count <= ``budget`` that whole channels allow (channel-wise).

    ``budget`` is a count or a string (``"50k"``, ``"12.5%"``); ``options`` are those of
    :func:`linearize_many` (``method="naive"``, ``search=SearchSettings(...)``, ...).

    >>> reduced = pifair.linearize(model, data, "5k", device="cuda")  # doctest: +SKIP
    """
    results = linearize_many(model, train_data, [budget], granularity=granularity, **options)
    return next(iter(results.values())).model
