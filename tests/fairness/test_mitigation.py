import pytest
import torch

from pifair.fairness.mitigation import ConstrainedLoss, ReweightedLoss, group_losses


class FixedBase:
    """A base objective whose per-sample losses are a given function of the logits."""

    def per_sample(self, logits, y, x):
        return (logits**2).sum(1)


def test_group_losses_skip_absent_groups():
    per = torch.tensor([1.0, 3.0, 5.0])
    by_group, present = group_losses(per, torch.tensor([0, 0, 2]), 3)
    assert by_group.tolist() == [2.0, 0.0, 5.0]
    assert present.tolist() == [True, False, True]


def test_penalty_reaches_the_gradient():
    logits = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0]], requires_grad=True)
    groups = torch.tensor([0, 1, 1])
    loss = ConstrainedLoss(FixedBase(), 2, mu=1e-3)
    loss.gamma = torch.tensor([1.0, 1.0])
    total = loss(logits, None, None, groups)
    (grad_total,) = torch.autograd.grad(total, logits)
    mean_only = FixedBase().per_sample(logits, None, None).mean()
    (grad_mean,) = torch.autograd.grad(mean_only, logits)
    # the penalty changes the gradient (the released code's detached penalty would not)
    assert not torch.allclose(grad_total, grad_mean)
    # and its value is sum_g gamma_g |L_g - L|: L = (1 + 4 + 0.25) / 3, L_0 = 1, L_1 = 2.125
    mean = 5.25 / 3
    assert float(total.detach()) == pytest.approx(mean + abs(1 - mean) + abs(2.125 - mean))


def test_gamma_update_follows_the_rule():
    loss = ConstrainedLoss(FixedBase(), 3, mu=0.5)
    batches = [
        (
            torch.tensor([[1.0], [3.0]]),
            torch.tensor([0, 1]),
        ),  # losses 1, 9; L = 5; gaps 4, 4, (absent 0)
        (torch.tensor([[2.0], [2.0], [0.0]]), torch.tensor([0, 2, 2])),  # losses 4, 4, 0; L = 8/3
    ]
    expected = torch.zeros(3)
    for logits, groups in batches:
        loss(logits, None, None, groups)
        per = (logits**2).sum(1)
        mean = per.mean()
        for g in range(3):
            sel = groups == g
            if sel.any():
                expected[g] += (per[sel].mean() - mean).abs()
    state = loss.end_epoch()
    assert state["gamma"] == pytest.approx((0.5 * expected).tolist())
    assert loss.gamma[1] == pytest.approx(0.5 * 4)  # group 1 appeared once, with gap 4
    # the accumulator restarts each epoch
    loss.end_epoch()
    assert loss.gamma.tolist() == pytest.approx((0.5 * expected).tolist())


def test_absent_groups_leave_no_nan_and_no_gamma():
    loss = ConstrainedLoss(FixedBase(), 4, mu=1.0)
    out = loss(torch.tensor([[1.0], [2.0]]), None, None, torch.tensor([1, 1]))
    assert torch.isfinite(out)
    loss.end_epoch()
    assert loss.gamma.tolist() == [0.0, 0.0, 0.0, 0.0]  # one group present: no gap at all


def test_reweighting_by_inverse_frequency():
    loss = ReweightedLoss(FixedBase(), torch.tensor([30, 10, 0]))
    assert loss.weights.tolist() == pytest.approx([40 / 60, 40 / 20, 0.0])
    logits = torch.tensor([[1.0], [2.0]])
    value = loss(logits, None, None, torch.tensor([0, 1]))
    w0, w1 = 40 / 60, 2.0
    assert float(value) == pytest.approx((w0 * 1 + w1 * 4) / (w0 + w1))


def test_negative_mu_is_rejected():
    with pytest.raises(ValueError, match="mu"):
        ConstrainedLoss(FixedBase(), 2, mu=-1)
