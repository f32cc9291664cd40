"""The ledger's epsilon equals Opacus' RDP accountant fed the same releases; target search."""

from __future__ import annotations

import pytest

pytest.importorskip("opacus")

from opacus.accountants import RDPAccountant  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402

from pifair.dp.accounting import PrivacyLedger, check_privacy_target, noise_for_target  # noqa: E402
from pifair.errors import PrivacyParameterError  # noqa: E402


def test_ledger_matches_opacus_fed_step_by_step():
    q, steps = 256 / 54_000, 60
    ledger, acc = PrivacyLedger(), RDPAccountant()
    for _ in range(steps):  # alternating releases, as Global-Adapt makes them
        ledger.charge(0.8, q)
        acc.step(noise_multiplier=0.8, sample_rate=q)
        ledger.charge(10.0, q)
        acc.step(noise_multiplier=10.0, sample_rate=q)
    assert len(acc.history) == 2 * steps  # Opacus merges only consecutive equal steps
    assert ledger.steps == 2 * steps
    assert ledger.epsilon(1e-6) == pytest.approx(acc.get_epsilon(1e-6), rel=1e-9)
    again = PrivacyLedger.from_state(ledger.state())
    assert again.epsilon(1e-6) == ledger.epsilon(1e-6)


def test_target_without_extra_releases_is_opacus_get_noise_multiplier():
    q, steps = 256 / 54_000, 2000
    ours = noise_for_target(6.0, 1e-6, sample_rate=q, steps=steps)
    assert ours == get_noise_multiplier(
        target_epsilon=6.0, target_delta=1e-6, sample_rate=q, steps=steps, epsilon_tolerance=0.01
    )


def test_target_with_count_releases_spends_the_whole_budget():
    q, steps = 256 / 54_000, 2000
    plain = noise_for_target(6.0, 1e-6, sample_rate=q, steps=steps)
    sigma = noise_for_target(6.0, 1e-6, sample_rate=q, steps=steps, extra_releases=[2.0])
    ledger = PrivacyLedger()
    ledger.charge(sigma, q, steps)
    ledger.charge(2.0, q, steps)
    eps = ledger.epsilon(1e-6)
    assert 6.0 - 0.01 <= eps <= 6.0  # the counts are paid for: total within the target
    assert sigma > plain


def test_counts_that_alone_exceed_the_target_are_refused():
    with pytest.raises(PrivacyParameterError, match="count releases alone"):
        noise_for_target(0.5, 1e-6, sample_rate=0.5, steps=5000, extra_releases=[0.3])


@pytest.mark.parametrize(
    "epsilon, delta, match",
    [
        (0.0, 1e-6, "epsilon must be > 0"),
        (-1.0, 1e-6, "epsilon must be > 0"),
        (3.0, 1e-3, "delta must be in"),
    ],
)
def test_bad_privacy_targets(epsilon, delta, match):
    with pytest.raises(PrivacyParameterError, match=match):
        check_privacy_target(epsilon, delta, dataset_size=60_000)
