import copy

import pytest
import torch

from pifair.errors import BudgetError
from pifair.models import create_model
from pifair.reduce import FinetuneSettings, linearize_many
from pifair.reduce.linearize import linearize
from pifair.reduce.snl import LambdaSchedule, SearchSettings, SNLSite, attach_snl_sites
from pifair.relu import MaskedReLU, count_relus, iter_sites
from pifair.relu.selection import largest_reachable

QUICK = dict(
    search=SearchSettings(
        max_epochs=2, lambda_init=1e-3, lambda_warmup=0, mask_lr=0.02, batch_size=64
    ),
    finetune=FinetuneSettings(epochs=1, batch_size=64),
    progress=False,
)


@pytest.fixture
def dense(digits_lenet):
    return digits_lenet


def test_pixelwise_keeps_exactly_the_budget(dense, digits):
    total = count_relus(dense, (1, 8, 8)).total
    assert total == 16 * 64 + 32 * 16 + 128
    results = linearize_many(dense, digits, [100, "10%"], **QUICK)
    for budget, result in results.items():
        assert count_relus(result.model, (1, 8, 8)).total == budget == result.relus
        assert all(isinstance(s, MaskedReLU) for _, s in iter_sites(result.model))
    assert sorted(results) == [100, round(0.1 * total)]


def test_linearized_positions_compute_the_identity(dense, digits):
    reduced = linearize(dense, digits, 50, **QUICK).model.eval()
    site = reduced.act1
    x = torch.randn(4, 16, 8, 8)
    y = site(x)
    off = site.mask == 0
    assert torch.equal(y[:, off], x[:, off])
    assert torch.equal(y[:, ~off], torch.relu(x)[:, ~off])


def test_channelwise_keeps_whole_channels_at_the_largest_count(dense, digits):
    budget = 700
    reduced = linearize(dense, digits, budget, granularity="channel", **QUICK).model
    kept = count_relus(reduced, (1, 8, 8)).total
    sizes = [64] * 16 + [16] * 32 + [1] * 128
    assert kept == largest_reachable(sizes, budget) and kept <= budget
    assert reduced.act1.mask.shape == (16, 1, 1)


def test_naive_baseline_is_exact_too(dense, digits):
    result = linearize(dense, digits, 123, method="naive", **QUICK)
    assert count_relus(result.model, (1, 8, 8)).total == 123 == result.relus


def test_full_budget_changes_nothing(dense, digits):
    total = count_relus(dense, (1, 8, 8)).total
    same = linearize(dense, digits, total, **QUICK).model.eval()
    x = digits.normalize(digits.test.x[:32])
    torch.testing.assert_close(same(x), dense(x))


def test_zero_budget_gives_a_linear_network(dense, digits):
    linear = linearize(dense, digits, 0, **QUICK).model.eval()
    assert count_relus(linear, (1, 8, 8)).total == 0
    a, b = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    zero = linear(torch.zeros(1, 1, 8, 8))
    torch.testing.assert_close(
        linear(a + b) - zero, (linear(a) - zero) + (linear(b) - zero), atol=1e-4, rtol=1e-4
    )


def test_bad_budgets_name_the_models_count(dense, digits):
    with pytest.raises(BudgetError, match="1,664"):
        linearize(dense, digits, "2k", **QUICK)
    with pytest.raises(BudgetError):
        linearize(dense, digits, "-3", **QUICK)


def test_original_model_is_untouched(dense, digits):
    before = copy.deepcopy(dense.state_dict())
    linearize(dense, digits, 200, **QUICK)
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())


def test_lambda_schedule_follows_snl_rule():
    schedule = LambdaSchedule(init=1e-5, growth=1.1, warmup=5)
    counts = [100, 90, 90, 80, 85, 85, 70, 70, 70, 60]
    values = [schedule.update(epoch, c) for epoch, c in enumerate(counts)]
    # epochs 0-4 never grow; from epoch 5 on, grow when the count set no new minimum
    expected, lam, best = [], 1e-5, float("inf")
    for epoch, c in enumerate(counts):
        if epoch >= 5 and c >= best:
            lam *= 1.1
        best = min(best, c)
        expected.append(lam)
    assert values == pytest.approx(expected)
    assert values[:5] == pytest.approx([1e-5] * 5)  # no growth in the warm-up
    assert values[5] == pytest.approx(1.1e-5)  # epoch 5: 85 is no new minimum (80 was)
    assert values[6] == pytest.approx(1.1e-5)  # epoch 6: 70 is a new minimum
    always = LambdaSchedule(init=1.0, growth=2.0, warmup=1, rule="always")
    assert [always.update(e, 10 - e) for e in range(4)] == [1.0, 2.0, 4.0, 8.0]


def test_snl_site_relaxes_between_relu_and_identity():
    site = SNLSite((2, 3, 3), "channel")
    assert site.alpha.shape == (2, 1, 1) and site.cost_per_alpha == 9
    x = torch.randn(4, 2, 3, 3)
    torch.testing.assert_close(site(x), torch.relu(x))
    with torch.no_grad():
        site.alpha.fill_(0)
    torch.testing.assert_close(site(x), x)
    assert site.relu_count() == 0


def test_attach_needs_dense_relus():
    model = create_model("fairdp_cnn", num_classes=10, input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="no dense ReLU"):
        attach_snl_sites(model, (1, 28, 28), "pixel")
