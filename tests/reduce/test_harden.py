"""Hardening, channel-wise SNL end to end, layer-wise allocation and the budget-driven lambda:
the exact budget holds whatever the procedure."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

import pifair.reduce.harden as harden_module
from pifair.errors import BudgetError, ConfigError
from pifair.reduce import FinetuneSettings, linearize_many
from pifair.reduce.allocation import allocate_by_sensitivity, relu_sensitivity
from pifair.reduce.snl import LambdaSchedule, SearchSettings, SNLSite
from pifair.relu import MaskedReLU, count_relus, iter_sites
from pifair.relu.selection import largest_reachable, select_pixels_per_site

SEARCH = SearchSettings(max_epochs=2, lambda_init=1e-3, mask_lr=0.02, batch_size=64)
HARD = replace(SEARCH, harden_epochs=1.0, harden_refresh=3)
NO_FINETUNE = FinetuneSettings(epochs=0)
SHAPE = (1, 8, 8)
# the digits LeNet: 16 channels of 8x8, 32 of 4x4, 128 features
CHANNEL_SIZES = [64] * 16 + [16] * 32 + [1] * 128


@pytest.fixture
def dense(digits_lenet):
    return digits_lenet


def _kept(result) -> int:
    return count_relus(result.model, SHAPE).total


@pytest.fixture(scope="module")
def conv_only(digits):
    """A CNN whose every ReLU sits in a channel of 64 or 16: most budgets are unreachable."""
    from pifair.relu import replace_activations
    from pifair.training import LoopSettings, fit

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, 1, 1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, 2, 1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 16, 10),
    )
    model = replace_activations(model)
    fit(
        model,
        digits,
        LoopSettings(epochs=2, batch_size=64, lr=0.05, progress=False),
        loss_fn=lambda logits, y, x, g: torch.nn.functional.cross_entropy(logits, y),
    )
    return model.eval()


@pytest.mark.parametrize("harden_epochs", [0.0, 0.5])
def test_snl_channelwise_end_to_end_at_budgets_no_channel_sum_reaches(
    conv_only, digits, harden_epochs
):
    """Channels of 64 and 16 ReLUs (640 in all): 300 is no sum of them (the largest below is
    288), and 40 is one the 2-epoch search does not reach (it keeps 32)."""
    sizes = [64] * 8 + [16] * 8
    search = replace(SEARCH, harden_epochs=harden_epochs)
    results = linearize_many(
        conv_only,
        digits,
        [300, 40],
        granularity="channel",
        search=search,
        finetune=FinetuneSettings(epochs=1, batch_size=64),
        progress=False,
    )
    assert {b: r.relus for b, r in results.items()} == {300: 288, 40: 32}
    for b, result in results.items():
        assert result.relus == _kept(result) == largest_reachable(sizes, b)
        for _, site in iter_sites(result.model):
            assert site.mask.shape[1:] == (1, 1)  # whole channels
    assert not results[40].search["snapshots"]["40"]["reached"]


@pytest.mark.parametrize("granularity", ["pixel", "channel"])
def test_hardening_keeps_the_exact_budget_at_every_refresh(dense, digits, granularity, monkeypatch):
    seen = []
    real = harden_module._refresh

    def spy(sites, make_masks, hysteresis):
        masks = real(sites, make_masks, hysteresis)
        sizes = {n: 1 if granularity == "pixel" else s.cost_per_alpha for n, s in sites.items()}
        seen.append(sum(int(m.sum()) * sizes[n] for n, m in masks.items()))
        return masks

    monkeypatch.setattr(harden_module, "_refresh", spy)
    budget = 300
    (result,) = linearize_many(
        dense,
        digits,
        [budget],
        granularity=granularity,
        search=HARD,
        finetune=NO_FINETUNE,
        progress=False,
    ).values()
    want = budget if granularity == "pixel" else largest_reachable(CHANNEL_SIZES, budget)
    steps = len(digits.train.y) // HARD.batch_size
    assert len(seen) == 1 + (steps - 1) // HARD.harden_refresh  # refreshed every 3 steps
    assert set(seen) == {want}
    assert result.relus == _kept(result) == want
    assert str(result.binarize).startswith("hardened 1 epochs (ste)")
    assert result.hardening and result.hardening[-1]["steps"] == steps


def test_the_binarized_model_is_the_hardened_one(dense, digits, monkeypatch):
    """Without batch-norm recalibration, the binarized model computes exactly what the last
    hardening step ran: the same masks, the same weights."""
    captured = {}
    real = harden_module.harden

    def keep(model, *args, **kwargs):
        masks, history = real(model, *args, **kwargs)
        captured["masks"] = masks
        captured["model"] = copy.deepcopy(model)  # linearize swaps its sites next
        return masks, history

    import pifair.reduce.linearize as lin

    monkeypatch.setattr(lin, "harden", keep)
    finetune = replace(NO_FINETUNE, recalibrate_bn=False)
    (result,) = linearize_many(
        dense, digits, [250], search=HARD, finetune=finetune, progress=False
    ).values()
    hardened = captured["model"].eval()
    for name, site in iter_sites(hardened):
        assert isinstance(site, SNLSite) and site.hard_mask is None  # left soft
        site.hard_mask = captured["masks"][name]
    x = digits.normalize(digits.val.x[:64])
    with torch.no_grad():
        assert torch.allclose(hardened(x), result.model.eval()(x), atol=1e-5)
    masks = {n: s.mask for n, s in iter_sites(result.model) if isinstance(s, MaskedReLU)}
    assert all(torch.equal(masks[n], captured["masks"][n]) for n in masks)


def test_progressive_binarization_ends_at_the_budget(dense, digits):
    search = replace(HARD, harden_mode="progressive")
    (result,) = linearize_many(
        dense, digits, [120], search=search, finetune=NO_FINETUNE, progress=False
    ).values()
    assert result.relus == _kept(result) == 120 and "progressive" in str(result.binarize)


def test_soft_binarized_and_final_accuracies_are_reported(dense, digits):
    (result,) = linearize_many(
        dense,
        digits,
        [300],
        search=HARD,
        finetune=FinetuneSettings(epochs=1, batch_size=64),
        progress=False,
    ).values()
    for value in (result.val_accuracy_soft, result.val_accuracy_before_finetune):
        assert 0.0 <= value <= 1.0
    assert result.seconds["harden"] > 0


def test_sensitivity_allocation_sums_to_the_budget_and_follows_sensitivity():
    sizes = {"a": 100, "b": 100, "c": 10}
    counts = allocate_by_sensitivity({"a": 1.0, "b": 0.25, "c": 100.0}, sizes, 61)
    assert sum(counts.values()) == 61
    assert counts["c"] == 10  # capped at its size
    assert counts["a"] > counts["b"] > 0
    assert allocate_by_sensitivity({"a": 0, "b": 0, "c": 0}, sizes, 210) == sizes
    with pytest.raises(BudgetError):
        allocate_by_sensitivity({"a": 1.0}, {"a": 5}, 6)
    masks = select_pixels_per_site(
        {"a": torch.arange(100.0), "b": torch.zeros(100), "c": torch.ones(10)}, counts
    )
    assert {n: int(m.sum()) for n, m in masks.items()} == counts
    assert masks["a"][-counts["a"] :].all()  # the highest scores of the site


def test_sensitivity_is_measured_per_site_and_used(dense, digits):
    sens = relu_sensitivity(dense, digits, device=torch.device("cpu"), batches=2)
    assert set(sens) == {n for n, _ in iter_sites(dense)} and all(v > 0 for v in sens.values())
    search = replace(SEARCH, allocation="sensitivity")
    (result,) = linearize_many(
        dense, digits, [400], search=search, finetune=NO_FINETUNE, progress=False
    ).values()
    assert result.relus == _kept(result) == 400 and sum(result.site_budgets.values()) == 400
    per_site = {n: s.relu_count() for n, s in iter_sites(result.model)}
    assert per_site == result.site_budgets
    with pytest.raises(ConfigError, match="pixel-wise only"):
        linearize_many(
            dense,
            digits,
            [400],
            granularity="channel",
            search=search,
            finetune=NO_FINETUNE,
            progress=False,
        )


def test_budget_driven_lambda_grows_with_the_distance_only():
    s = LambdaSchedule(init=1.0, growth=1.5, warmup=0, rule="budget")
    assert s.update(0, 1000, 100) == pytest.approx(1.5)  # far: the cap
    assert s.update(1, 120, 100) == pytest.approx(1.5 * 1.2)  # near: the distance
    assert s.update(2, 90, 100) == pytest.approx(1.8)  # under the budget: no growth


def test_the_model_before_fine_tuning_is_kept_when_validation_prefers_it(dense, digits):
    """A fine-tuning that wrecks the model (a huge learning rate and weight decay): with the start
    as a candidate, selection on validation keeps the hardened model; without it (the default)
    it cannot."""
    from pifair.training import evaluate

    wreck = FinetuneSettings(
        epochs=1, batch_size=64, lr=2.0, weight_decay=0.5, start_candidate=True
    )
    (kept,) = linearize_many(
        dense, digits, [300], search=HARD, finetune=wreck, progress=False
    ).values()
    assert kept.kept_before_finetune and not any(h["selected"] for h in kept.history)
    assert evaluate(kept.model, digits, "val").accuracy == pytest.approx(
        kept.val_accuracy_before_finetune
    )
    assert kept.history[0]["val_accuracy"] < kept.val_accuracy_before_finetune
    wreck_only = replace(wreck, start_candidate=False)
    (lost,) = linearize_many(
        dense, digits, [300], search=HARD, finetune=wreck_only, progress=False
    ).values()
    assert not lost.kept_before_finetune
    assert evaluate(lost.model, digits, "val").accuracy < kept.val_accuracy_before_finetune
