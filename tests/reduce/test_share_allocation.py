"""The sharing allocation's shortcuts give the plain greedy's answer: partial forward passes
equal the model's own forward, and one stored walk serves every budget."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pifair.models.external import import_torchvision
from pifair.reduce.finetune import FinetuneSettings
from pifair.reduce.share import (
    GreedyWalk,
    _site,
    allocate_groups,
    share,
    site_options,
)
from pifair.reduce.trial_forward import TrialForward
from pifair.relu.convert import as_site_model
from pifair.relu.counting import record_feature_shapes
from pifair.relu.shared_relu import SharedReLU, patch_groups
from pifair.relu.sites import iter_sites, swap_sites


class _SideBranch(nn.Module):
    """A ReLU on a side branch added in place into the main branch's output, which is read
    again (``rebind=False``: the graph relies on the mutation) or not (``a = a.add_(b)``)."""

    def __init__(self, rebind: bool) -> None:
        super().__init__()
        self.rebind = rebind
        self.main, self.side = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.side_relu, self.out_relu = nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.main(x)
        b = a.add_(self.side_relu(self.side(x)))  # overwrites main's output in place
        a = b if self.rebind else a
        return self.fc(self.out_relu(a).flatten(1))


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    swap_sites(model, lambda n, m: module if n == name else None)


@pytest.mark.parametrize(
    "build, shape, partial",
    [
        (lambda: _SideBranch(rebind=False), (3, 8, 8), False),
        (lambda: _SideBranch(rebind=True), (3, 8, 8), True),
        (lambda: import_torchvision().models.resnet18(num_classes=10), (3, 32, 32), True),
    ],
)
def test_a_trial_pass_equals_the_models_own_forward(build, shape, partial):
    torch.manual_seed(0)
    model = as_site_model(build(), shape).eval()
    record_feature_shapes(model, shape)
    x = torch.randn(6, *shape)
    forward = TrialForward(model, x)
    assert forward.partial == partial  # kept values are used wherever they can be trusted
    with torch.no_grad():
        assert torch.equal(forward.full(), model(x))
        for name, site in iter_sites(model):
            feature = tuple(site.shape)
            patch = (2, 2) if len(feature) == 3 and feature[1] > 1 else None
            groups = patch_groups(feature, patch) if patch else torch.zeros(feature, dtype=int)
            _swap(model, name, SharedReLU(groups, patch=patch))
            assert torch.equal(forward.with_site_changed(name), model(x)), name
            _swap(model, name, site)  # back: the kept values must be untouched
            assert torch.equal(forward.with_site_changed(name), model(x)), name


def _plain_greedy(model, data, budget, options, rule, calibration=512):
    """The allocation as docs/reductions.md states it: full forward passes, from scratch."""
    x = data.normalize(data.val.x[:calibration])
    y = data.val.y[:calibration]
    count = {n: [len(torch.unique(o[1][o[1] >= 0])) for o in opts] for n, opts in options.items()}
    choice = dict.fromkeys(options, 0)
    work = copy.deepcopy(model).eval()

    def decisions(c):
        return sum(count[n][c[n]] for n in c)

    while decisions(choice) > budget:
        scores = {}
        for n in options:
            if choice[n] + 1 < len(options[n]):
                trial = choice | {n: choice[n] + 1}
                swap_sites(work, lambda s, m, trial=trial: _site(options[s][trial[s]], rule))
                with torch.no_grad():
                    loss = float(F.cross_entropy(work(x), y))
                scores[n] = loss / max(decisions(choice) - decisions(trial), 1)
        best = min(scores, key=lambda n: (scores[n], list(options).index(n)))
        choice[best] += 1
    return choice


@pytest.mark.parametrize("scheme, rule", [("cluster", "mean"), ("patch", "representative")])
def test_one_walk_serves_every_budget_as_the_plain_greedy_would(digits, digits_lenet, scheme, rule):
    options = site_options(digits_lenet, digits, scheme, device=torch.device("cpu"))
    budgets = [1200, 600, 300, 60] if scheme == "patch" else [600, 100, 20, 3]
    expected = {b: _plain_greedy(digits_lenet, digits, b, options, rule) for b in budgets}
    walk = GreedyWalk()
    for budget in [budgets[1], budgets[3], budgets[0], budgets[2]]:  # extended, then replayed
        got = allocate_groups(
            digits_lenet,
            digits,
            budget,
            options=options,
            rule=rule,
            device=torch.device("cpu"),
            walk=walk,
        )
        assert got == expected[budget], budget
    steps = len(walk.steps)
    allocate_groups(  # replayed only: the walk is not extended
        digits_lenet, digits, 150, options=options, rule=rule, device=torch.device("cpu"), walk=walk
    )
    assert len(walk.steps) == steps


def test_a_stored_walk_is_reused_only_for_its_parent(digits, digits_lenet, tmp_path):
    settings = dict(scheme="cluster", finetune=FinetuneSettings(epochs=0), progress=False)
    first = share(digits_lenet, digits, 50, walks=tmp_path, **settings)
    stored = json.loads((tmp_path / "cluster-mean.json").read_text())
    assert stored["steps"] and not stored["finished"]
    again = share(digits_lenet, digits, 50, walks=tmp_path, **settings)
    assert again.allocation == first.allocation
    other = copy.deepcopy(digits_lenet)
    with torch.no_grad():
        next(other.parameters()).mul_(-1)
    share(other, digits, 50, walks=tmp_path, **settings)  # another parent: a walk of its own
    assert json.loads((tmp_path / "cluster-mean.json").read_text())["key"] != stored["key"]
    with pytest.raises(ValueError, match="coarsest grouping keeps"):
        share(digits_lenet, digits, 1, walks=tmp_path, **settings)
    assert json.loads((tmp_path / "cluster-mean.json").read_text())["finished"]
