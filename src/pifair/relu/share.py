"""``pifair.share``: ReLU sharing under a budget of sign decisions, then KD fine-tuning.

Budget allocation (DESIGN.md section 4): every ReLU site starts as plain ReLU (groups of one);
while the model's decisions exceed the budget, the site whose next coarser grouping costs the
least validation loss per decision saved is coarsened (loss measured on a calibration slice of
the validation split, the other sites as they stand). Then batch-norm statistics are
recomputed and the model is fine-tuned with CE + KD from the dense model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from .budget import parse_budget
from .linearize import FinetuneSettings, _finetune, recalibrate_batchnorm
from .sharing import SharedReLU, grouping_options
from .sites import DenseReLU, count_relus, iter_sites, record_feature_shapes, replace_activations

__all__ = ["ShareResult", "share", "allocate_groups"]


@dataclass
class ShareResult:
    model: nn.Module
    budget: int
    relus: int
    scheme: str
    rule: str
    allocation: dict[str, str] = field(default_factory=dict)
    finetune_history: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


@torch.no_grad()
def _calibration_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float(F.cross_entropy(model(x), y))


def allocate_groups(
    model: nn.Module,
    data: Dataset,
    budget: int,
    *,
    scheme: str,
    rule: str,
    device: torch.device,
    calibration: int = 512,
) -> dict[str, int]:
    """Choose each site's grouping (an index into :func:`grouping_options`) greedily."""
    record_feature_shapes(model, data.input_shape)
    sites = {n: s for n, s in iter_sites(model) if isinstance(s, DenseReLU)}
    options = {n: grouping_options(s.feature_shape, scheme) for n, s in sites.items()}
    choice = dict.fromkeys(sites, 0)
    val = data.val
    x = data.normalize(val.x[:calibration].to(device))
    y = val.y[:calibration].to(device)
    work = copy.deepcopy(model).to(device)

    def apply(names: dict[str, int]) -> None:
        replace_activations(
            work,
            lambda n, m: SharedReLU(options[n][names[n]][1], rule=rule) if n in names else None,
        )

    def decisions(names: dict[str, int]) -> int:
        return sum(int(options[n][names[n]][1].max()) + 1 for n in names)

    while decisions(choice) > budget:
        best, best_score = None, None
        for n in sites:
            if choice[n] + 1 >= len(options[n]):
                continue
            trial = dict(choice) | {n: choice[n] + 1}
            apply(trial)
            saved = decisions(choice) - decisions(trial)
            score = _calibration_loss(work, x, y) / max(saved, 1)  # loss per decision saved
            if best_score is None or score < best_score:
                best, best_score = n, score
        if best is None:
            raise ValueError(
                f"cannot reach {budget:,} decisions with scheme {scheme!r}: the coarsest grouping keeps {decisions(choice):,}"
            )
        choice[best] += 1
        apply(choice)
    return choice


def share(
    model: nn.Module,
    train_data: Dataset,
    budget: int | str,
    *,
    scheme: str = "patch",
    rule: str = "mean",
    finetune: FinetuneSettings | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    run=None,
    resume: bool = False,
) -> ShareResult:
    """A copy of ``model`` whose ReLUs share sign decisions, at most ``budget`` of them.

    ``run`` (a :class:`pifair.runs.Run`) checkpoints the fine-tuning; ``resume`` continues it
    (the allocation is deterministic and is recomputed).
    """
    device = torch.device(device)
    finetune = finetune or FinetuneSettings()
    dense = copy.deepcopy(model).to(device).eval()
    total = count_relus(dense, train_data.input_shape).total
    k = parse_budget(budget, total)
    t0 = time.perf_counter()
    choice = allocate_groups(dense, train_data, k, scheme=scheme, rule=rule, device=device)
    options = {
        n: grouping_options(s.feature_shape, scheme)
        for n, s in iter_sites(dense)
        if isinstance(s, DenseReLU)
    }
    shared = copy.deepcopy(dense)
    replace_activations(
        shared,
        lambda n, m: SharedReLU(options[n][choice[n]][1], rule=rule) if n in choice else None,
    )
    allocate_s = time.perf_counter() - t0
    recalibrate_batchnorm(shared, train_data, device=device)
    t1 = time.perf_counter()
    history = _finetune(
        shared,
        dense,
        train_data,
        finetune,
        device=device,
        progress=progress,
        run=run,
        resume=resume,
    )
    relus = count_relus(shared, train_data.input_shape).total
    return ShareResult(
        model=shared.cpu().eval(), budget=k, relus=relus, scheme=scheme, rule=rule,
        allocation={n: options[n][choice[n]][0] for n in choice}, finetune_history=history,
        seconds={"allocate": allocate_s, "finetune": time.perf_counter() - t1},
    )  # fmt: skip
