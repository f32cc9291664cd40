"""``pifair.share``: ReLU sharing under a budget of sign decisions, then KD fine-tuning.

Budget allocation (docs/reductions.md): every ReLU site starts as plain ReLU (groups of one);
while the model's decisions exceed the budget, the site whose next coarser grouping costs the
least validation loss per decision saved is coarsened (loss measured on a calibration slice of
the validation split, the other sites as they stand). Then batch-norm statistics are
recomputed and the model is fine-tuned with CE + KD from the dense model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..errors import BudgetError
from ..relu.budget import parse_budget
from ..relu.clustering import sign_patterns
from ..relu.convert import as_site_model
from ..relu.counting import count_relus, record_feature_shapes
from ..relu.shared_relu import SharedReLU, grouping_options
from ..relu.sites import (
    DenseReLU,
    MaskedReLU,
    iter_sites,
    swap_sites,
)
from ..training.loop import CheckpointStore
from .finetune import FinetuneSettings, finetune_reduced
from .result import ReductionResult

__all__ = ["ShareResult", "ShareRule", "ShareScheme", "share", "allocate_groups"]

ShareScheme = Literal["patch", "channel", "cluster"]
ShareRule = Literal["mean", "representative", "learned"]


@dataclass(kw_only=True)
class ShareResult(ReductionResult):
    """A shared-ReLU model: ``relus`` sign decisions per sample, ``allocation`` the grouping
    chosen at each site."""

    budget: int
    scheme: str
    rule: str
    allocation: dict[str, str] = field(default_factory=dict)


@torch.no_grad()
def _calibration_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float(F.cross_entropy(model(x), y))


@torch.no_grad()
def _site_patterns(
    model: nn.Module,
    sites: dict[str, DenseReLU | MaskedReLU],
    data: Dataset,
    device: torch.device,
    samples: int = 256,
) -> dict[str, torch.Tensor]:
    """Sign patterns (elements x samples) of each site's input on training samples."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        s.register_forward_hook(
            lambda m, inp, out, n=n: seen.__setitem__(
                n,
                sign_patterns(inp[0].detach().float()),  # on the model's device (GPU: fast)
            )
        )
        for n, s in sites.items()
    ]
    model.eval()(data.normalize(data.train.x[:samples].to(device)))
    for h in hooks:
        h.remove()
    return seen


def site_options(
    model: nn.Module, data: Dataset, scheme: str, *, device: torch.device
) -> dict[str, list]:
    """The candidate groupings of every ReLU site of ``model``: a dense site's over all its
    elements; a linearized (SNL) site's over the elements its mask keeps, the others staying
    linear in every option (group id -1), so sharing never makes a linear position non-linear.
    A site with nothing kept has no options (it stays as it is)."""
    record_feature_shapes(model, data.input_shape)
    sites: dict[str, DenseReLU | MaskedReLU] = {
        n: s
        for n, s in iter_sites(model)
        if isinstance(s, DenseReLU) or (isinstance(s, MaskedReLU) and s.mask.any())
    }
    patterns = _site_patterns(model, sites, data, device) if scheme == "cluster" else {}
    options = {}
    for n, s in sites.items():
        found = grouping_options(s.shape, scheme, patterns=patterns.get(n))
        if isinstance(s, MaskedReLU):
            kept = torch.broadcast_to(s.mask, s.shape).to(torch.bool).cpu()
            found = [(name, torch.where(kept, g, -1), r, p) for name, g, r, p in found]
        options[n] = found
    return options


def _site(option: tuple, rule: str) -> SharedReLU:
    _, groups, representatives, patch = option
    return SharedReLU(groups, rule=rule, representatives=representatives, patch=patch)


def allocate_groups(
    model: nn.Module,
    data: Dataset,
    budget: int,
    *,
    options: dict[str, list],
    rule: str,
    device: torch.device,
    calibration: int = 512,
    coarsest_is_cluster: bool = False,
) -> dict[str, int]:
    """Choose each site's grouping (an index into its ``options``) greedily
    (``coarsest_is_cluster``: the options are already the cluster scheme's, the coarsest)."""
    choice = dict.fromkeys(options, 0)
    x = data.normalize(data.val.x[:calibration].to(device))
    y = data.val.y[:calibration].to(device)
    work = copy.deepcopy(model).to(device)

    def apply(names: dict[str, int]) -> None:
        swap_sites(work, lambda n, m: _site(options[n][names[n]], rule) if n in names else None)

    # each option's decisions: its distinct groups (linear elements, id -1, are in none)
    counts = {n: [len(torch.unique(o[1][o[1] >= 0])) for o in opts] for n, opts in options.items()}

    def decisions(names: dict[str, int]) -> int:
        return sum(counts[n][names[n]] for n in names)

    while decisions(choice) > budget:
        best, best_score = None, None
        for n in options:
            if choice[n] + 1 >= len(options[n]):
                continue
            trial = dict(choice) | {n: choice[n] + 1}
            apply(trial)
            saved = decisions(choice) - decisions(trial)
            score = _calibration_loss(work, x, y) / max(saved, 1)  # loss per decision saved
            if best_score is None or score < best_score:
                best, best_score = n, score
        if best is None:
            hint = "" if coarsest_is_cluster else "; try --scheme cluster"
            raise BudgetError(
                f"cannot reach {budget:,} decisions: the coarsest grouping keeps "
                f"{decisions(choice):,}{hint}"
            )
        choice[best] += 1
        apply(choice)
    return choice


def _shared_model(
    dense: nn.Module, data: Dataset, budget: int, scheme: str, rule: str, device: torch.device
) -> tuple[nn.Module, dict[str, str]]:
    """A copy of ``dense`` with each site's grouping chosen greedily for ``budget`` decisions,
    and the name of each site's grouping."""
    options = site_options(dense, data, scheme, device=device)
    choice = allocate_groups(
        dense,
        data,
        budget,
        options=options,
        rule=rule,
        device=device,
        coarsest_is_cluster=scheme == "cluster",
    )
    shared = copy.deepcopy(dense)
    swap_sites(shared, lambda n, m: _site(options[n][choice[n]], rule) if n in choice else None)
    return shared, {n: options[n][choice[n]][0] for n in choice}


def share(
    model: nn.Module,
    train_data: Dataset,
    budget: int | str,
    *,
    scheme: ShareScheme = "patch",
    rule: ShareRule = "mean",
    finetune: FinetuneSettings | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    checkpoints: CheckpointStore | None = None,
    resume: bool = False,
) -> ShareResult:
    """A copy of ``model`` whose ReLUs share sign decisions, at most ``budget`` of them.

    Parameters
    ----------
    model : nn.Module
        The dense model (not modified).
    train_data : Dataset
        Training data (fine-tuning) with a validation split (the allocation's calibration).
    budget : int or str
        Sign decisions per sample: a count or ``"5k"``, ``"1%"``.
    scheme : {"patch", "channel", "cluster"}
        Groups: spatial patches per channel, channel groups per pixel, or clusters of
        activations whose signs agree on training samples.
    rule : {"mean", "representative", "learned"}
        What decides a group's sign.
    finetune : FinetuneSettings, optional
        The KD fine-tuning after the allocation.
    checkpoints : CheckpointStore, optional
        Where the fine-tuning checkpoints (a run folder); ``resume`` continues it (the
        allocation is deterministic and is recomputed).

    Returns
    -------
    ShareResult
        The model (``relus`` decisions, at most ``budget``), the grouping of each site, the
        fine-tuning history.

    Examples
    --------
    >>> import pifair
    >>> data = pifair.load_dataset("digits", seed=0)
    >>> dense = pifair.create_model("mlp", num_classes=10, input_shape=data.input_shape)
    >>> result = pifair.share(dense, data, 64, progress=False,
    ...                       finetune=pifair.FinetuneSettings(epochs=0))
    >>> result.relus <= 64, pifair.count_relus(result.model, data.input_shape).total == result.relus
    (True, True)
    """
    device = torch.device(device)
    finetune = finetune or FinetuneSettings()
    dense = as_site_model(model, train_data.input_shape).to(device).eval()
    total = count_relus(dense, train_data.input_shape).total
    k = parse_budget(budget, total)
    t0 = time.perf_counter()
    shared, allocation = _shared_model(dense, train_data, k, scheme, rule, device)
    allocate_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    outcome = finetune_reduced(
        shared,
        dense,
        train_data,
        finetune,
        device=device,
        progress=progress,
        checkpoints=checkpoints,
        resume=resume,
    )
    relus = count_relus(shared, train_data.input_shape).total
    return ShareResult(
        model=shared.cpu().eval(),
        budget=k,
        relus=relus,
        scheme=scheme,
        rule=rule,
        allocation=allocation,
        **outcome.result_fields(),
        seconds={"reduce": allocate_s, "finetune": time.perf_counter() - t1},
    )
