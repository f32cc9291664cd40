"""``pifair.linearize``: reduce a model to an exact ReLU budget, by SNL or by a naive baseline.

Pipeline per budget (DESIGN.md section 3, with pifair's corrections):
1. scores -- SNL's searched masks ``a`` (:mod:`pifair.reduce.snl`), or mean |x| of each site's
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

import torch
from torch import nn

from ..data import Dataset, ResidentLoader
from ..errors import BudgetError, ConfigError
from ..fairness.mitigation import build_objective
from ..relu.budget import parse_budget
from ..relu.convert import as_site_model
from ..relu.counting import count_relus, record_feature_shapes
from ..relu.selection import select_channels, select_pixels, select_pixels_per_site
from ..relu.sites import (
    ActivationSite,
    DenseReLU,
    MaskedReLU,
    iter_sites,
    swap_sites,
)
from ..training.loop import CheckpointStore, evaluate
from .allocation import allocate_by_sensitivity, relu_sensitivity
from .finetune import FinetuneSettings, finetune_model, recalibrate_batchnorm, selection_score
from .harden import harden
from .result import ReductionResult
from .snl import SearchSettings, SNLSite, attach_snl_sites, snl_search, snl_sites

__all__ = [
    "FinetuneSettings",
    "LinearizeResult",
    "linearize",
    "linearize_many",
    "magnitude_scores",
    "recalibrate_batchnorm",
    "reference_settings",
]


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


@dataclass(kw_only=True)
class LinearizeResult(ReductionResult):
    """A linearized model: exactly ``relus`` kept ReLUs (at most ``budget``), how its mask was
    found (``method``, ``search``, ``hardening``) and binarized."""

    budget: int
    method: str
    granularity: str
    binarize: str
    search: dict = field(default_factory=dict)
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
    return {n: math.prod(sites[n].shape) // scores[n].numel() for n in scores}


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
            return MaskedReLU(masks[name], feature_shape=getattr(m, "feature_shape", None))
        return None

    return swap_sites(model, swap)


def linearize_many(
    model: nn.Module,
    data: Dataset,
    budgets: Sequence[int | str],
    *,
    granularity: Literal["pixel", "channel"] = "pixel",
    method: str = "snl",
    search: SearchSettings | None = None,
    finetune: FinetuneSettings | None = None,
    reference: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
    search_state: dict | None = None,
    on_search_epoch: Callable[[dict], None] | None = None,
    finetune_checkpoints: Callable[[int], tuple[CheckpointStore | None, bool]] | None = None,
) -> dict[int, LinearizeResult]:
    """Reduce ``model`` to each budget; SNL runs one search for all of them.

    ``model`` is not modified. ``finetune_checkpoints(budget)`` may give ``(store, resume)`` so
    each fine-tuning checkpoints into its own store (a run folder, say).
    """
    if granularity not in ("pixel", "channel"):
        raise ConfigError(f"granularity must be 'pixel' or 'channel', got {granularity!r}")
    if method not in ("snl", "naive"):
        raise ConfigError(f"method must be 'snl' or 'naive', got {method!r}")
    device = torch.device(device)
    search, finetune = search or SearchSettings(), finetune or FinetuneSettings()
    if reference:
        search, finetune = reference_settings(search, finetune)
    dense = as_site_model(model, data.input_shape).to(device).eval()
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
    select_score = selection_score(dense, data, finetune, device=device)
    # a fresh objective for the search and for each budget's hardening (objectives hold state)
    search_objective = partial(
        build_objective, search.objective, dense, data, _search_params(search, finetune)
    )
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
                model=copy.deepcopy(dense).cpu(),
                budget=budget,
                relus=total,
                method=method,
                granularity=granularity,
                binarize="none",
                search=search_summary,
                seconds={"search": 0.0, "finetune": 0.0},
            )
            continue
        reduced = copy.deepcopy(work)

        soft: float | None = None
        hardening: list[dict] = []
        if method == "snl":
            reduced.load_state_dict(snapshots[budget].state_dict)
            sites: dict[str, ActivationSite] = {
                n: s for n, s in iter_sites(reduced) if isinstance(s, SNLSite)
            }
            scores = {n: s.alpha.detach().cpu() for n, s in snl_sites(reduced)}
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
                reduced,
                dense,
                data,
                make_masks,
                search,
                device=device,
                progress=progress,
                loss_fn=search_objective(),
            )
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
        store, resume = finetune_checkpoints(budget) if finetune_checkpoints else (None, False)
        keep_start = finetune.select_best and finetune.start_candidate
        start_state = copy.deepcopy(reduced.state_dict()) if keep_start else None
        history = finetune_model(
            reduced,
            dense,
            data,
            finetune,
            device=device,
            progress=progress,
            checkpoints=store,
            resume=resume,
            select_score=select_score,
        )
        before_score = select_score(before_report) if select_score else before
        kept_start = (
            start_state is not None
            and bool(history)
            and before_score > max(h.get("val_score", h["val_accuracy"]) for h in history)
        )
        if kept_start and start_state is not None:
            reduced.load_state_dict(start_state)  # validation prefers the model before fine-tuning
            for h in history:
                h["selected"] = False
        relus = count_relus(reduced, data.input_shape).total
        if not reference and (relus > budget or (granularity == "pixel" and relus != budget)):
            raise BudgetError(
                f"internal error: reduced model keeps {relus:,} ReLUs for a budget of {budget:,}"
            )
        results[budget] = LinearizeResult(
            model=reduced.cpu().eval(),
            budget=budget,
            relus=relus,
            method=method,
            granularity=granularity,
            binarize=binarize,
            search=search_summary,
            history=history,
            val_accuracy_before_finetune=before,
            val_accuracy_soft=soft,
            hardening=hardening,
            site_budgets=site_budgets,
            kept_before_finetune=kept_start,
            seconds={
                "search": search_seconds,
                "harden": harden_seconds,
                "finetune": time.perf_counter() - t1 - harden_seconds,
            },
        )
    return results


def linearize(
    model: nn.Module,
    train_data: Dataset,
    budget: int | str,
    *,
    granularity: Literal["pixel", "channel"] = "pixel",
    **options,
) -> LinearizeResult:
    """A reduced copy of ``model`` keeping exactly ``budget`` ReLUs (pixel-wise), or the
    largest count <= ``budget`` that whole channels allow (channel-wise).

    Parameters
    ----------
    model : nn.Module
        The dense model (not modified).
    train_data : Dataset
        Training data (mask search and fine-tuning) with a validation split.
    budget : int or str
        ReLUs to keep: a count or ``"50k"``, ``"12.5%"``.
    granularity : {"pixel", "channel"}
        Keep single activations, or whole channels.
    **options
        Those of :func:`linearize_many`: ``method="snl"`` (default) or ``"naive"``,
        ``search=SearchSettings(...)``, ``finetune=FinetuneSettings(...)``, ``device``.

    Returns
    -------
    LinearizeResult
        The reduced model with exactly ``relus`` ReLUs, the search and fine-tuning history.

    Examples
    --------
    >>> import pifair
    >>> data = pifair.load_dataset("digits", seed=0)
    >>> dense = pifair.create_model("mlp", num_classes=10, input_shape=data.input_shape)
    >>> result = pifair.linearize(dense, data, "10%", method="naive", progress=False,
    ...                           finetune=pifair.FinetuneSettings(epochs=0))
    >>> result.relus, pifair.count_relus(result.model, data.input_shape).total
    (51, 51)
    """
    results = linearize_many(model, train_data, [budget], granularity=granularity, **options)
    return next(iter(results.values()))
