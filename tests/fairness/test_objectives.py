"""Fairness objectives against their rules, computed by hand, and the gap-aware selection."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from pifair.data import load_dataset
from pifair.fairness import GroupReport, GroupRow
from pifair.fairness.audit import paired_difference
from pifair.fairness.mitigation import (
    OBJECTIVES,
    ConstrainedLoss,
    DenseAnchoredLoss,
    GroupDROLoss,
    build_objective,
    label_log_prior,
)
from pifair.fairness.selection import gap_penalised_accuracy
from pifair.models import create_model
from pifair.reduce import FinetuneSettings
from pifair.training.distill import DistillationLoss
from pifair.training.loop import LoopSettings, fit


class SquareBase:
    """Per-sample losses that are a plain function of the logits."""

    def per_sample(self, logits, y, x):
        return (logits**2).sum(1)


@pytest.fixture(scope="module")
def imbalanced():
    return load_dataset("digits", keep="0-4:0.9,5-9:0.1", keep_test=True, seed=0)


@pytest.fixture(scope="module")
def teacher(imbalanced):
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10, input_shape=(1, 8, 8))
    fit(
        model,
        imbalanced,
        LoopSettings(epochs=2, batch_size=64, lr=0.05, progress=False),
        loss_fn=lambda logits, y, x, g: F.cross_entropy(logits, y),
    )
    return model.eval()


def test_per_step_dual_update_from_a_warm_start():
    loss = ConstrainedLoss(SquareBase(), 2, mu=0.5, multiplier_init=0.25, dual_update="step")
    logits, groups = torch.tensor([[1.0], [3.0]]), torch.tensor([0, 1])  # losses 1, 9; L = 5
    value = loss(logits, None, None, groups)
    assert float(value) == pytest.approx(5 + 0.25 * 4 + 0.25 * 4)  # the warm multipliers act
    assert loss.gamma.tolist() == pytest.approx([0.25 + 0.5 * 4, 0.25 + 0.5 * 4])
    loss.end_epoch()  # per step: the epoch end does not apply the sum a second time
    assert loss.gamma.tolist() == pytest.approx([2.25, 2.25])


def test_dense_anchored_constraint_by_hand():
    teacher = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        teacher.weight.copy_(torch.eye(2))
    base = DistillationLoss(teacher, weight=0.0)
    loss = DenseAnchoredLoss(base, 2, mu=0.1, multiplier_init=1.0)
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y, groups = torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1])
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0]])
    value = loss(logits, y, x, groups)
    ce = F.cross_entropy(logits, y, reduction="none")
    rise = ce - F.cross_entropy(x, y, reduction="none")  # the teacher's logits are x
    v = torch.stack([rise[:2].mean(), rise[2:].mean()]) - rise.mean()
    assert float(value) == pytest.approx(float(ce.mean() + v.sum()), rel=1e-5)
    assert loss.gamma.tolist() == pytest.approx((1.0 + 0.1 * v).clamp(min=0).tolist(), rel=1e-5)
    loss.gamma = torch.tensor([0.01, 0.01])
    loss(logits, y, x, groups)
    assert float(loss.gamma.min()) == 0.0  # the negative violation is projected to zero


def test_group_dro_exponentiated_weights_by_hand():
    loss = GroupDROLoss(SquareBase(), 3, step=0.5)
    logits, groups = torch.tensor([[1.0], [2.0], [0.0]]), torch.tensor([0, 1, 1])
    value = loss(logits, None, None, groups)  # L_0 = 1, L_1 = 2, group 2 absent
    q = torch.tensor([np.exp(0.5), np.exp(1.0), 1.0]) / 3
    q = q / q.sum()
    assert loss.q.tolist() == pytest.approx(q.tolist(), rel=1e-5)
    assert float(value) == pytest.approx(float((q[0] * 1 + q[1] * 2) / (q[0] + q[1])), rel=1e-5)


def test_logit_adjustment_shifts_the_cross_entropy_only(imbalanced, teacher):
    settings = FinetuneSettings(objective="logit-adjust", logit_tau=1.0, kd_weight=0.0)
    loss = build_objective("logit-adjust", teacher, imbalanced, settings)
    prior = torch.bincount(imbalanced.train.y, minlength=10).float()
    prior = prior / prior.sum()
    assert label_log_prior(imbalanced.train.y, 10).tolist() == pytest.approx(prior.log().tolist())
    logits, y = torch.randn(4, 10), torch.tensor([0, 5, 9, 2])
    expected = F.cross_entropy(logits + prior.log(), y)
    x = imbalanced.normalize(imbalanced.train.x[:4])
    assert float(loss(logits, y, x, None)) == pytest.approx(float(expected), rel=1e-5)


def _first_step_grads(name: str, data, teacher, **settings) -> list[torch.Tensor]:
    torch.manual_seed(3)
    student = copy.deepcopy(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    loss_fn = build_objective(name, teacher, data, FinetuneSettings(objective=name, **settings))
    x = data.normalize(data.train.x[:128])
    loss = loss_fn(student(x), data.train.y[:128], x, data.train.groups[:128])
    return torch.autograd.grad(loss, list(student.parameters()))


def test_every_mitigation_acts_from_its_first_step(imbalanced, teacher):
    """With warm-started multipliers, each objective's first update differs from plain CE + KD;
    the paper's zero start leaves the constrained objective's first step plain."""
    plain = _first_step_grads("kd", imbalanced, teacher)
    for name in OBJECTIVES[1:]:
        grads = _first_step_grads(name, imbalanced, teacher)
        assert not all(torch.allclose(a, b) for a, b in zip(grads, plain)), name
    zero_start = _first_step_grads("constrained", imbalanced, teacher, multiplier_init=0.0)
    assert all(torch.allclose(a, b) for a, b in zip(zero_start, plain))


def _report(accuracies: list[float], counts: list[int]) -> GroupReport:
    rows = [GroupRow(g, str(g), c, a) for g, (a, c) in enumerate(zip(accuracies, counts))]
    total = sum(counts)
    return GroupReport(sum(a * c for a, c in zip(accuracies, counts)) / total, None, total, rows)


def test_gap_penalised_selection_score_by_hand():
    dense = _report([0.9, 0.9, 0.8], [100, 300, 50])
    score = gap_penalised_accuracy(dense, minority=[2])
    candidate = _report([0.85, 0.88, 0.6], [100, 300, 50])
    majority_drop = (100 * 0.05 + 300 * 0.02) / 400
    gap = 0.2 - majority_drop
    assert score(candidate) == pytest.approx(candidate.accuracy - gap)
    reversed_ = _report([0.85, 0.88, 0.9], [100, 300, 50])  # the minority gains: gap < 0
    assert score(reversed_) == pytest.approx(reversed_.accuracy - abs(-0.1 - majority_drop))
    assert gap_penalised_accuracy(dense, minority=[])(candidate) == candidate.accuracy


def test_fit_keeps_the_epoch_with_the_best_score(digits):
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, input_shape=(1, 8, 8))
    scores = iter([0.1, 0.9, 0.5])
    history = fit(
        model,
        digits,
        LoopSettings(epochs=3, batch_size=64, lr=0.05, progress=False),
        loss_fn=lambda logits, y, x, g: F.cross_entropy(logits, y),
        select_best=True,
        select_score=lambda report: next(scores),
    )
    assert [h["val_score"] for h in history] == [0.1, 0.9, 0.5]
    assert [h["selected"] for h in history] == [False, True, False]


def test_paired_difference_interval_by_hand():
    a, b = [0.05, 0.07, 0.02, 0.06, 0.04], [0.02, 0.03, 0.03, 0.01, 0.02]
    d = np.subtract(b, a)
    half = scipy.stats.t.ppf(0.975, df=4) * d.std(ddof=1) / np.sqrt(5)
    mean, low, high = paired_difference(a, b)
    assert mean == pytest.approx(d.mean())
    assert (low, high) == pytest.approx((d.mean() - half, d.mean() + half))
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([0.1, 0.2], [0.1])


def test_fairness_inside_the_mask_search(imbalanced, teacher):
    """The search's objective is the named one (its group weights move during the search) and
    the reduced model still keeps exactly its budget."""
    from pifair.reduce.linearize import linearize_many
    from pifair.reduce.snl import SearchSettings

    search = SearchSettings(
        max_epochs=2, objective="group-dro", harden_epochs=0.5, lambda_init=1e-3
    )
    results = linearize_many(
        teacher,
        imbalanced,
        [300],
        search=search,
        progress=False,
        finetune=FinetuneSettings(epochs=1, select_by="fair"),
    )
    result = results[300]
    assert result.relus == 300
    weights = result.search["history"][-1]["group_weights"]
    assert sum(weights) == pytest.approx(1.0) and max(weights) > 0.11  # moved off uniform 0.1
    assert "val_score" in result.history[0]
    with pytest.raises(ValueError, match="objective"):
        SearchSettings(objective="fair")
