"""Each method's scaling rule on hand-made per-sample gradient norms."""

from __future__ import annotations

import math

import pytest
import torch

from pifair.dp.rules import (
    BoundedAdaptiveClipping,
    FlatClipping,
    GlobalAdaptClipping,
    GlobalClipping,
    GroupAdaptiveClipping,
    make_rule,
)
from pifair.errors import PrivacyParameterError, UnknownNameError


def test_flat_clipping_scales_large_gradients_to_c():
    step = FlatClipping(1.0).scale(torch.tensor([0.5, 2.0, 4.0]), None, expected_batch_size=3)
    assert torch.allclose(step.factors, torch.tensor([1.0, 0.5, 0.25]), atol=1e-5)
    assert step.sensitivity == 1.0 and step.releases == []


def test_global_drops_above_z_and_scales_the_rest_by_c_over_z():
    step = GlobalClipping(2.0, 3.0).scale(
        torch.tensor([1.0, 3.0, 5.0]), None, expected_batch_size=3
    )
    assert torch.allclose(step.factors, torch.tensor([2 / 3, 2 / 3, 0.0]))
    assert step.sensitivity == 2.0


def test_global_adapt_factors_and_threshold_update():
    rule = GlobalAdaptClipping(1.0, 2.0, count_noise=5.0, eta_z=0.1, tau=1.0)
    norms = torch.tensor([1.0, 2.0, 4.0, 8.0])
    gen = torch.Generator().manual_seed(3)
    expected_noise = float(torch.normal(0.0, 5.0, (1,), generator=torch.Generator().manual_seed(3)))
    step = rule.scale(norms, None, expected_batch_size=10, generator=gen)
    # |g| <= Z: C/Z; above: C/|g| (clipped to C, direction kept)
    assert torch.allclose(step.factors, torch.tensor([0.5, 0.5, 0.25, 0.125]), atol=1e-5)
    assert (step.factors * norms).max() <= 1.0 + 1e-5
    # two norms exceed tau * Z = 2; the expected batch size divides the noisy count
    assert rule.z == pytest.approx(2.0 * math.exp((2 + expected_noise) / 10 - 0.1))
    assert step.releases == [5.0] and rule.state() == {"z": rule.z}


def test_global_adapt_noise_on_the_count_has_the_stated_std():
    """log(Z_{t+1}/Z_t) = b + N(0, s_b^2)/B - eta over many draws."""
    gen = torch.Generator().manual_seed(0)
    logs = []
    norms = torch.tensor([1.0, 3.0, 3.0, 0.5])  # two above Z = 2
    for _ in range(4000):
        rule = GlobalAdaptClipping(1.0, 2.0, count_noise=10.0, eta_z=0.1, tau=1.0)
        rule.scale(norms, None, expected_batch_size=50, generator=gen)
        logs.append(math.log(rule.z / 2.0))
    t = torch.tensor(logs)
    assert float(t.mean()) == pytest.approx(2 / 50 - 0.1, abs=0.01)
    assert float(t.std()) == pytest.approx(10.0 / 50, rel=0.05)


def test_dpsgd_f_bounds_from_group_counts():
    rule = GroupAdaptiveClipping(1.0, 2, count_noise=1e-6)
    groups = torch.tensor([0, 0, 1, 1])
    norms = torch.tensor([0.5, 6.0, 0.5, 0.8])
    step = rule.scale(
        norms, groups, expected_batch_size=4, generator=torch.Generator().manual_seed(0)
    )
    # group 0: one of two above C0 -> a = 0.5; group 1: none -> a = 0; mean(a) = 0.25
    assert torch.allclose(rule.bounds, torch.tensor([3.0, 1.0]), atol=1e-4)
    assert torch.allclose(step.factors, torch.tensor([1.0, 0.5, 1.0, 1.0]), atol=1e-4)
    assert step.sensitivity == pytest.approx(3.0, abs=1e-4)
    assert step.releases == [1e-6]


def test_dpsgd_f_needs_groups():
    with pytest.raises(ValueError, match="set_groups"):
        GroupAdaptiveClipping(1.0, 2, count_noise=1.0).scale(
            torch.ones(2), None, expected_batch_size=2
        )


@pytest.mark.parametrize("method", ["dpsgd", "global", "global-adapt", "dpsgd-f", "bounded-adapt"])
def test_every_scaled_gradient_is_within_the_sensitivity(method):
    gen = torch.Generator().manual_seed(1)
    rule = make_rule(method, clip=1.0, z=5.0, count_noise=2.0, tau=0.7, num_groups=3)
    for _ in range(20):
        norms = torch.rand(64, generator=gen) * 20
        groups = torch.randint(0, 3, (64,), generator=gen)
        step = rule.scale(norms, groups, expected_batch_size=64, generator=gen)
        assert (step.factors * norms).max() <= step.sensitivity * (1 + 1e-5)


def test_bad_rule_settings_are_refused():
    with pytest.raises(PrivacyParameterError, match="clip bound C must be > 0"):
        FlatClipping(0.0)
    with pytest.raises(PrivacyParameterError, match="threshold Z must be > 0"):
        GlobalClipping(1.0, -1.0)
    with pytest.raises(UnknownNameError, match="unknown DP method 'adam'"):
        make_rule("adam", clip=1.0)


def test_bounded_adaptive_clipping_follows_the_quantile_within_its_bounds():
    rule = BoundedAdaptiveClipping(
        2.0, lower=1.0, upper=4.0, quantile=0.5, eta=0.2, count_noise=3.0
    )
    norms = torch.tensor([0.5, 1.5, 3.0, 8.0])
    gen = torch.Generator().manual_seed(7)
    noise = float(torch.normal(0.0, 3.0, (1,), generator=torch.Generator().manual_seed(7)))
    step = rule.scale(norms, None, expected_batch_size=4, generator=gen)
    assert step.factors.tolist() == pytest.approx([1.0, 1.0, 2.0 / 3.0, 0.25], rel=1e-5)
    assert step.sensitivity == 2.0 and step.releases == [3.0] == rule.releases_per_step()
    fraction = (2 + noise) / 4  # two norms at or below C = 2
    expected = min(4.0, max(1.0, 2.0 * math.exp(-0.2 * (fraction - 0.5))))
    assert rule.clip == pytest.approx(expected)
    assert rule.state() == {"clip": pytest.approx(expected)}


@pytest.mark.parametrize("norm, bound", [(0.01, 1.0), (1000.0, 4.0)])
def test_bounded_adaptive_clipping_stops_at_its_bounds(norm, bound):
    """All gradients tiny: unbounded adaptive clipping would shrink C towards them (Zhao et
    al.'s failure); all huge: it would grow without end. The bounds stop both."""
    rule = BoundedAdaptiveClipping(
        2.0, lower=1.0, upper=4.0, quantile=0.5, eta=1.0, count_noise=0.1
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        rule.scale(torch.full((64,), norm), None, expected_batch_size=64, generator=gen)
    assert rule.clip == pytest.approx(bound)


def test_bounded_adaptive_settings_are_refused():
    with pytest.raises(PrivacyParameterError, match="must lie in"):
        make_rule("bounded-adapt", clip=10.0, clip_lower=0.5, clip_upper=5.0)
    with pytest.raises(PrivacyParameterError, match="quantile"):
        make_rule("bounded-adapt", clip=1.0, quantile=1.5)
    with pytest.raises(PrivacyParameterError, match="lower clip bound"):
        make_rule("bounded-adapt", clip=1.0, clip_lower=0.0)
