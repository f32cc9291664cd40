"""``pifair.share``: ReLU sharing under a budget of sign decisions, then KD fine-tuning.

Budget allocation (docs/reductions.md): every ReLU site starts as plain ReLU (groups of one);
while the model's decisions exceed the budget, the site whose next coarser grouping costs the
least validation loss per decision saved is coarsened (loss measured on a calibration slice of
the validation split, the other sites as they stand). Then batch-norm statistics are
recomputed and the model is fine-tuned with CE + KD from the dense model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_write_json
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
from .trial_forward import TrialForward

_log = logging.getLogger(__name__)

__all__ = ["GreedyWalk", "ShareResult", "ShareRule", "ShareScheme", "share", "allocate_groups"]

# validation images on which the allocation scores each grouping (and keys its stored walks)
_CALIBRATION_IMAGES = 512

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


@dataclass
class GreedyWalk:
    """The sites the greedy allocation coarsened, in order, starting from plain ReLU
    everywhere; ``finished`` once no site can be coarsened further.

    Each step takes the site whose next grouping costs the least loss per decision saved,
    whatever the budget, so the allocation for a budget is the walk's first state within it:
    one walk serves every budget of a sweep, and a smaller budget extends it."""

    steps: list[str] = field(default_factory=list)
    finished: bool = False


def _walk_key(model: nn.Module, x: torch.Tensor, y: torch.Tensor, options: dict, rule: str) -> str:
    """What a walk depends on: the parent's weights, the calibration batch, the candidate
    groupings and the rule (a hex digest; a stored walk is reused only under the same key)."""
    digest = hashlib.sha256(rule.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for tensor in (x, y):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for name, opts in options.items():
        digest.update(name.encode())
        for option in opts:
            digest.update(option[0].encode())
            digest.update(option[1].numpy().tobytes())
    return digest.hexdigest()


class _Trials:
    """The model on the calibration batch with one site's grouping changed at a time: a
    trial's loss, and committing a change (checked against a full forward pass)."""

    def __init__(
        self,
        model: nn.Module,
        options: dict[str, list],
        rule: str,
        choice: dict[str, int],
        x: torch.Tensor,
        y: torch.Tensor,
        device: torch.device,
    ) -> None:
        self.options, self.rule, self.y, self.device = options, rule, y, device
        self.work = copy.deepcopy(model).to(device)
        self.built: dict[tuple[str, int], SharedReLU] = {}  # a grouping's module, built once
        for name in options:
            self._set(name, choice[name])
        self.forward = TrialForward(self.work, x)
        self.partial = True  # recompute only what depends on the trial site
        self.forward.full()

    def _set(self, name: str, index: int) -> None:
        if (name, index) not in self.built:
            self.built[name, index] = _site(self.options[name][index], self.rule).to(self.device)
        swap_sites(self.work, lambda n, m: self.built[name, index] if n == name else None)

    def loss(self, name: str, index: int, current: int) -> float:
        """The calibration loss with site ``name`` at grouping ``index`` (then back)."""
        self._set(name, index)
        out = self.forward.with_site_changed(name) if self.partial else self.forward.full()
        self._set(name, current)
        return float(F.cross_entropy(out, self.y))

    def commit(self, name: str, index: int, expected_loss: float) -> None:
        self._set(name, index)
        full_loss = float(F.cross_entropy(self.forward.full(), self.y))
        if self.partial and full_loss != expected_loss:  # an op partial passes cannot replay
            _log.warning("partial forward passes differ from full ones; using full passes")
            self.partial = False


def allocate_groups(
    model: nn.Module,
    data: Dataset,
    budget: int,
    *,
    options: dict[str, list],
    rule: str,
    device: torch.device,
    calibration: int = _CALIBRATION_IMAGES,
    coarsest_is_cluster: bool = False,
    walk: GreedyWalk | None = None,
    on_step: Callable[[GreedyWalk], None] | None = None,
) -> dict[str, int]:
    """Choose each site's grouping (an index into its ``options``) greedily
    (``coarsest_is_cluster``: the options are already the cluster scheme's, the coarsest).

    ``walk`` holds the steps taken so far for this model, data and rule (replayed, then
    extended in place; ``on_step`` sees it after each new step, to store it)."""
    walk = walk if walk is not None else GreedyWalk()
    on_step = on_step or (lambda walk: None)
    choice = dict.fromkeys(options, 0)
    # each option's decisions: its distinct groups (linear elements, id -1, are in none)
    counts = {n: [len(torch.unique(o[1][o[1] >= 0])) for o in opts] for n, opts in options.items()}

    def decisions(names: dict[str, int]) -> int:
        return sum(counts[n][names[n]] for n in names)

    def unreachable() -> BudgetError:
        hint = "" if coarsest_is_cluster else "; try --scheme cluster"
        return BudgetError(
            f"cannot reach {budget:,} decisions: the coarsest grouping keeps "
            f"{decisions(choice):,}{hint}"
        )

    for name in walk.steps:  # replay
        if decisions(choice) <= budget:
            return choice
        if name not in choice or choice[name] + 1 >= len(options[name]):
            raise ValueError(f"the stored greedy walk does not fit these options (site {name})")
        choice[name] += 1
    if decisions(choice) <= budget:
        return choice
    if walk.finished:
        raise unreachable()
    x = data.normalize(data.val.x[:calibration].to(device))
    trials = _Trials(model, options, rule, choice, x, data.val.y[:calibration].to(device), device)
    while decisions(choice) > budget:
        best, best_score, best_loss = None, None, 0.0
        for n in options:
            if choice[n] + 1 < len(options[n]):
                loss = trials.loss(n, choice[n] + 1, choice[n])
                saved = decisions(choice) - decisions(choice | {n: choice[n] + 1})
                score = loss / max(saved, 1)  # loss per decision saved
                if best_score is None or score < best_score:
                    best, best_score, best_loss = n, score, loss
        if best is None:
            walk.finished = True
            on_step(walk)
            raise unreachable()
        choice[best] += 1
        trials.commit(best, choice[best], best_loss)
        walk.steps.append(best)
        on_step(walk)
    return choice


def _load_walk(path: Path | None, key: str) -> GreedyWalk:
    """The stored walk under ``key`` at ``path``, or a new one."""
    if path is None or not path.exists():
        return GreedyWalk()
    stored = json.loads(path.read_text())
    if stored.get("key") != key:
        return GreedyWalk()
    return GreedyWalk(steps=list(stored["steps"]), finished=bool(stored["finished"]))


def _shared_model(
    dense: nn.Module,
    data: Dataset,
    budget: int,
    scheme: str,
    rule: str,
    device: torch.device,
    walks: str | os.PathLike | None = None,
) -> tuple[nn.Module, dict[str, str]]:
    """A copy of ``dense`` with each site's grouping chosen greedily for ``budget`` decisions,
    and the name of each site's grouping. ``walks``: a folder keeping the greedy walk of each
    scheme and rule, so that the next budget replays it instead of starting over."""
    options = site_options(dense, data, scheme, device=device)
    calibration = _CALIBRATION_IMAGES
    key = _walk_key(dense, data.val.x[:calibration], data.val.y[:calibration], options, rule)
    path = Path(walks) / f"{scheme}-{rule}.json" if walks is not None else None
    walk = _load_walk(path, key)

    def store(walk: GreedyWalk) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {"key": key, "steps": walk.steps, "finished": walk.finished})

    choice = allocate_groups(
        dense,
        data,
        budget,
        options=options,
        rule=rule,
        device=device,
        calibration=calibration,
        coarsest_is_cluster=scheme == "cluster",
        walk=walk,
        on_step=store,
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
    walks: str | os.PathLike | None = None,
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
        Spatial patches per channel, channel groups per pixel, or sign clusters.
    rule : {"mean", "representative", "learned"}
        What decides a group's sign.
    finetune : FinetuneSettings, optional
        The KD fine-tuning after the allocation.
    checkpoints : CheckpointStore, optional
        Where the fine-tuning checkpoints (a run folder); ``resume`` continues it (the
        allocation is deterministic and is recomputed).
    walks : path, optional
        A folder keeping the allocation's greedy walks: other budgets of the parent replay them.

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
    k = parse_budget(budget, count_relus(dense, train_data.input_shape).total)
    t0 = time.perf_counter()
    shared, allocation = _shared_model(dense, train_data, k, scheme, rule, device, walks)
    allocate_s = time.perf_counter() - t0
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
    return ShareResult(
        model=shared.cpu().eval(),
        budget=k,
        relus=count_relus(shared, train_data.input_shape).total,
        scheme=scheme,
        rule=rule,
        allocation=allocation,
        **outcome.result_fields(),
        seconds={"reduce": allocate_s, "finetune": time.perf_counter() - t0 - allocate_s},
    )
