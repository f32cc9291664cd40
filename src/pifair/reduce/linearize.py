"""``pifair.linearize``: reduce a model to an exact ReLU budget, by SNL or by a naive baseline.

Pipeline per budget (docs/reductions.md, with pifair's corrections):
1. scores -- SNL's searched masks ``a`` (:mod:`pifair.reduce.snl`), or mean |x| of each site's
   input on a calibration set (the naive baseline);
2. binarize -- exactly ``budget`` ReLUs kept (top-k; whole channels for channel-wise, the largest
   count the channel sizes allow without going over) -- or SNL's own ``a > 1e-2`` threshold
   in reference mode;
3. the one fine-tuning step of every reduction (:func:`pifair.reduce.finetune.finetune_reduced`):
   batch-norm statistics recomputed, CE + KD (T = 4) from the dense model, the best validation
   epoch kept.
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
from .finetune import FinetuneSettings, finetune_reduced, recalibrate_batchnorm
from .harden import harden
from .result import ReductionResult
from .snl import (
    SearchResult,
    SearchSettings,
    Snapshot,
    SNLSite,
    attach_snl_sites,
    snl_search,
    snl_sites,
)

__all__ = [
    "BinarizeRule",
    "FinetuneSettings",
    "LinearizeHooks",
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
    binarize: BinarizeRule
    search: dict = field(default_factory=dict)
    val_accuracy_soft: float | None = None  # the searched soft model (SNL), before binarizing
    hardening: list[dict] = field(default_factory=list)
    site_budgets: dict[str, int] | None = None

    @property
    def metrics(self) -> dict:
        return super().metrics | {"binarize": str(self.binarize)}


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


@dataclass(frozen=True)
class BinarizeRule:
    """How the scores became a 0/1 mask: ``selection`` ("none" for the dense model,
    "threshold" for SNL's ``a > threshold``, "top-k", "top-k per site" or "top channels"),
    after ``hardened_epochs`` of progressive hardening. Formatted only when written."""

    selection: Literal["none", "threshold", "top-k", "top-k per site", "top channels"]
    threshold: float | None = None
    hardened_epochs: float = 0.0
    harden_mode: str | None = None

    def __str__(self) -> str:
        if self.selection == "threshold":
            return f"threshold a > {self.threshold}"
        text = {
            "none": "none",
            "top-k": "top-k",
            "top-k per site": "top-k per site (sensitivity)",
            "top channels": "top channels (largest count <= budget)",
        }[self.selection]
        if self.hardened_epochs:
            return f"hardened {self.hardened_epochs:g} epochs ({self.harden_mode}), then {text}"
        return text


@dataclass
class LinearizeHooks:
    """What keeps a linearization resumable (a workflow's run folders): the SNL search's saved
    ``search_state``, ``on_search_epoch`` called with it after every epoch, and
    ``finetune_checkpoints(budget)`` giving each budget's ``(store, resume)``."""

    search_state: dict | None = None
    on_search_epoch: Callable[[dict], None] | None = None
    finetune_checkpoints: Callable[[int], tuple[CheckpointStore | None, bool]] | None = None


@dataclass
class _Linearization:
    """One call of :func:`linearize_many`: the dense parent and the settings every budget
    shares; :meth:`reduce_to` makes one budget's model."""

    dense: nn.Module
    data: Dataset
    granularity: str
    method: str
    search: SearchSettings
    finetune: FinetuneSettings
    reference: bool
    device: torch.device
    progress: bool
    relu_sizes: dict[str, int]
    sensitivity: dict[str, float] | None = None

    def search_objective(self) -> nn.Module:
        """A fresh objective for the search and for each hardening (objectives hold state)."""
        params = replace(
            self.finetune, temperature=self.search.temperature, kd_weight=self.search.kd_weight
        )
        return build_objective(self.search.objective, self.dense, self.data, params)

    def search_masks(
        self, budgets: list[int], hooks: LinearizeHooks
    ) -> tuple[nn.Module, SearchResult | None]:
        """The model the budgets are cut from (SNL: with its mask sites) and SNL's one search
        for all ``budgets`` (None for the naive method, or when no budget needs one)."""
        work = copy.deepcopy(self.dense)
        if self.method != "snl":
            return work, None
        attach_snl_sites(
            work, self.data.input_shape, self.granularity, threshold=self.search.threshold
        )
        if not budgets:
            return work, None
        outcome = snl_search(
            work,
            self.dense,
            self.data,
            budgets,
            self.search,
            device=self.device,
            progress=self.progress,
            state=hooks.search_state,
            on_epoch_end=hooks.on_search_epoch,
            loss_fn=self.search_objective(),
        )
        return work, outcome

    def scores(
        self, reduced: nn.Module, snapshot: Snapshot | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, ActivationSite], float | None]:
        """Each site's scores (SNL's searched masks, or mean |x|), its sites, and the soft
        model's validation accuracy (SNL only)."""
        if snapshot is not None:
            reduced.load_state_dict(snapshot.state_dict)
            sites: dict[str, ActivationSite] = {
                n: s for n, s in iter_sites(reduced) if isinstance(s, SNLSite)
            }
            scores = {n: s.alpha.detach().cpu() for n, s in snl_sites(reduced)}
            soft = evaluate(reduced, self.data, "val", device=self.device).accuracy
            return scores, sites, soft
        record_feature_shapes(reduced, self.data.input_shape)
        sites = {n: s for n, s in iter_sites(reduced) if isinstance(s, DenseReLU)}
        scores = magnitude_scores(reduced, self.data, self.granularity, device=self.device)
        return scores, sites, None

    def binarize(
        self,
        reduced: nn.Module,
        scores: dict[str, torch.Tensor],
        sites: dict[str, ActivationSite],
        budget: int,
        snapshot: Snapshot | None,
    ) -> tuple[dict[str, torch.Tensor], BinarizeRule, list[dict], dict[str, int] | None]:
        """0/1 masks at ``budget``, the rule that made them, the hardening's history and the
        per-site budgets (sensitivity allocation)."""
        site_budgets = (
            allocate_by_sensitivity(self.sensitivity, self.relu_sizes, budget)
            if self.sensitivity is not None
            else None
        )
        make_masks = partial(
            _masks_from_scores,
            sizes=_relus_per_score(scores, sites),
            budget=budget,
            granularity=self.granularity,
            site_budgets=site_budgets,
        )
        if self.reference and snapshot is not None and snapshot.reached:
            masks = {n: (scores[n] > self.search.threshold).float() for n in scores}
            return masks, BinarizeRule("threshold", self.search.threshold), [], site_budgets
        selection: Literal["top-k", "top-k per site", "top channels"] = (
            ("top-k per site" if site_budgets else "top-k")
            if self.granularity == "pixel"
            else "top channels"
        )
        if snapshot is None or self.search.harden_epochs <= 0:
            return make_masks(scores), BinarizeRule(selection), [], site_budgets
        masks, hardening = harden(
            reduced,
            self.dense,
            self.data,
            make_masks,
            self.search,
            device=self.device,
            progress=self.progress,
            loss_fn=self.search_objective(),
        )
        rule = BinarizeRule(
            selection,
            hardened_epochs=self.search.harden_epochs,
            harden_mode=self.search.harden_mode,
        )
        return masks, rule, hardening, site_budgets

    def reduce_to(
        self,
        work: nn.Module,
        snapshot: Snapshot | None,
        budget: int,
        checkpoints: tuple[CheckpointStore | None, bool],
    ) -> LinearizeResult:
        """One budget: scores, binarization, the fine-tuning step, the exact count checked."""
        t0 = time.perf_counter()
        reduced = copy.deepcopy(work)
        scores, sites, soft = self.scores(reduced, snapshot)
        masks, rule, hardening, site_budgets = self.binarize(
            reduced, scores, sites, budget, snapshot
        )
        harden_seconds = hardening[-1]["seconds"] if hardening else 0.0
        _apply_masks(reduced, masks)
        reduced.to(self.device)
        store, resume = checkpoints
        outcome = finetune_reduced(
            reduced,
            self.dense,
            self.data,
            self.finetune,
            device=self.device,
            progress=self.progress,
            checkpoints=store,
            resume=resume,
        )
        relus = count_relus(reduced, self.data.input_shape).total
        exact = relus <= budget and (self.granularity != "pixel" or relus == budget)
        if not self.reference and not exact:
            raise BudgetError(
                f"internal error: reduced model keeps {relus:,} ReLUs for a budget of {budget:,}"
            )
        return LinearizeResult(
            model=reduced.cpu().eval(),
            budget=budget,
            relus=relus,
            method=self.method,
            granularity=self.granularity,
            binarize=rule,
            **outcome.result_fields(),
            val_accuracy_soft=soft,
            hardening=hardening,
            site_budgets=site_budgets,
            seconds={
                "harden": harden_seconds,
                "finetune": time.perf_counter() - t0 - harden_seconds,
            },
        )


def _dense_parent(model: nn.Module, data: Dataset, device: torch.device) -> nn.Module:
    """``model`` as a site model on ``device``, refused unless every ReLU site is dense."""
    dense = as_site_model(model, data.input_shape).to(device).eval()
    if any(s.kind in ("masked_relu", "snl_alpha", "shared_relu") for _, s in iter_sites(dense)):
        raise ConfigError(
            "linearize needs a dense model (its ReLU sites all DenseReLU); pass the dense parent"
        )
    return dense


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
    hooks: LinearizeHooks | None = None,
) -> dict[int, LinearizeResult]:
    """Reduce ``model`` to each budget; SNL runs one search for all of them.

    ``model`` is not modified. ``hooks`` make the search and each fine-tuning resumable.
    """
    if granularity not in ("pixel", "channel"):
        raise ConfigError(f"granularity must be 'pixel' or 'channel', got {granularity!r}")
    if method not in ("snl", "naive"):
        raise ConfigError(f"method must be 'snl' or 'naive', got {method!r}")
    device, hooks = torch.device(device), hooks or LinearizeHooks()
    search, finetune = search or SearchSettings(), finetune or FinetuneSettings()
    if reference:
        search, finetune = reference_settings(search, finetune)
    dense = _dense_parent(model, data, device)
    dense_count = count_relus(dense, data.input_shape)
    wanted = sorted({parse_budget(b, dense_count.total) for b in budgets})
    job = _Linearization(
        dense,
        data,
        granularity,
        method,
        search,
        finetune,
        reference,
        device,
        progress,
        relu_sizes={s.name: s.elements for s in dense_count.sites if s.kind == DenseReLU.kind},
    )
    if search.allocation == "sensitivity" and not reference:
        job.sensitivity = _sensitivity(dense, data, granularity, device=device)
    t0 = time.perf_counter()
    to_search = [b for b in wanted if b < dense_count.total]
    work, outcome = job.search_masks(to_search, hooks)
    summary = outcome.summary() if outcome else {}
    search_seconds = time.perf_counter() - t0
    results: dict[int, LinearizeResult] = {}
    for budget in wanted:
        if budget not in to_search:  # every ReLU kept: the dense model itself
            result = LinearizeResult(
                model=copy.deepcopy(dense).cpu(),
                budget=budget,
                relus=budget,
                method=method,
                granularity=granularity,
                binarize=BinarizeRule("none"),
                seconds={"finetune": 0.0},
            )
        else:
            snapshot = outcome.snapshots[budget] if outcome else None
            store = hooks.finetune_checkpoints(budget) if hooks.finetune_checkpoints else None
            result = job.reduce_to(work, snapshot, budget, store or (None, False))
        reduce_s = search_seconds if budget in to_search else 0.0
        result.search, result.seconds = summary, {"reduce": reduce_s} | result.seconds
        results[budget] = result
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
