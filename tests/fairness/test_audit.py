import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pifair.data import load_dataset
from pifair.fairness.audit import (
    audit_pair,
    margins,
    mean_ci,
    minority_groups,
    per_sample_grad_norms,
)
from pifair.models import create_model


def test_margins_are_top1_minus_top2_softmax():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]))
    assert margins(logits).tolist() == pytest.approx([0.3, 0.4])


def test_per_sample_grad_norms_match_one_backward_per_sample():
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=3, input_shape=(5,), hidden=(8,)).eval()
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    fast = per_sample_grad_norms(model, x, y, chunk=4)
    for i in range(6):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        slow = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        assert float(fast[i]) == pytest.approx(float(slow), rel=1e-4)


def test_minority_groups_follow_the_protocol():
    assert minority_groups(load_dataset("digits")) == []
    assert minority_groups(load_dataset("digits", keep="8:0.3")) == [8]
    assert minority_groups(load_dataset("digits", keep="0-4:0.9,5-9:0.1")) == [5, 6, 7, 8, 9]


def test_audit_matches_a_hand_count(digits):
    torch.manual_seed(0)
    dense = create_model("lenet", num_classes=10, input_shape=(1, 8, 8)).eval()
    reduced = create_model("lenet", num_classes=10, input_shape=(1, 8, 8)).eval()
    audit = audit_pair(dense, reduced, digits, relus=10, dense_relus=20, grad_samples=4)
    x = digits.normalize(digits.test.x)
    y, g = digits.test.y.numpy(), digits.test.groups.numpy()
    with torch.no_grad():
        pd, pr = dense(x).argmax(1).numpy(), reduced(x).argmax(1).numpy()
    for row in audit.groups:
        sel = g == row.group
        assert row.count == sel.sum()
        assert row.dense_accuracy == pytest.approx((pd[sel] == y[sel]).mean())
        assert row.reduced_accuracy == pytest.approx((pr[sel] == y[sel]).mean())
        assert row.drop == pytest.approx(row.dense_accuracy - row.reduced_accuracy)
    drops = [r.drop for r in audit.groups]
    assert audit.drop_spread == pytest.approx(max(drops) - min(drops))
    assert audit.minority_gap is None  # balanced classes: no minority


def test_mean_ci():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1 / np.sqrt(3), rel=1e-3)
    assert mean_ci([5.0]) == (5.0, 0.0)
