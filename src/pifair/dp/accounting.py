"""Privacy accounting: every noisy release of a run, charged to Opacus' RDP accountant.

A DP-SGD step is one sampled-Gaussian release (noise multiplier sigma, sampling rate q).
Global-Adapt's threshold count and DPSGD-F's group counts are further releases on the same
batch. The ledger keeps a count per (noise multiplier, rate) pair: composition does not depend
on order, and Opacus' accountant only merges *consecutive* equal steps, so alternating gradient
and count releases would otherwise grow its history by two entries per step.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..errors import PrivacyParameterError
from ..extras import require

__all__ = ["PrivacyLedger", "check_privacy_target", "noise_for_target"]

_MAX_SIGMA = 1e4


def _rdp_accountant():
    accountants = require("opacus.accountants", extra="dp", purpose="DP-SGD accounting")
    return accountants.RDPAccountant()


class PrivacyLedger:
    """Counts of sampled-Gaussian releases; epsilon from Opacus' RDP accountant."""

    def __init__(self) -> None:
        self.releases: Counter[tuple[float, float]] = Counter()

    def charge(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        self.releases[(float(noise_multiplier), float(sample_rate))] += int(steps)

    @property
    def steps(self) -> int:
        return sum(self.releases.values())

    def accountant(self):
        """An Opacus ``RDPAccountant`` holding every release of this ledger."""
        acc = _rdp_accountant()
        acc.history = [(s, q, n) for (s, q), n in sorted(self.releases.items())]
        return acc

    def epsilon(self, delta: float) -> float:
        if not self.releases:
            return 0.0
        return float(self.accountant().get_epsilon(delta=delta))

    def state(self) -> list[list[float]]:
        return [[s, q, n] for (s, q), n in sorted(self.releases.items())]

    @classmethod
    def from_state(cls, state: list[list[Any]]) -> PrivacyLedger:
        ledger = cls()
        for s, q, n in state:
            ledger.charge(s, q, int(n))
        return ledger


def check_privacy_target(epsilon: float | None, delta: float, dataset_size: int) -> None:
    """Refuse settings that give no meaningful guarantee."""
    if epsilon is not None and not epsilon > 0:
        raise PrivacyParameterError(f"epsilon must be > 0, got {epsilon}")
    if not 0 < delta < 1.0 / dataset_size:
        raise PrivacyParameterError(
            f"delta must be in (0, 1/N) = (0, {1.0 / dataset_size:.3g}) for N = {dataset_size} "
            f"training samples, got {delta}; a delta of 1/N or more allows releasing a whole "
            f"record. Use e.g. --delta {10 ** -len(str(dataset_size)):.0e}"
        )


def _epsilon(
    sigma: float, sample_rate: float, steps: int, extras: list[float], delta: float
) -> float:
    ledger = PrivacyLedger()
    ledger.charge(sigma, sample_rate, steps)
    for s in extras:
        ledger.charge(s, sample_rate, steps)
    return ledger.epsilon(delta)


def noise_for_target(
    epsilon: float,
    delta: float,
    *,
    sample_rate: float,
    steps: int,
    extra_releases: list[float] | None = None,
    tolerance: float = 0.01,
) -> float:
    """The gradient noise multiplier that spends ``epsilon`` over ``steps`` steps in total.

    Without extra releases this is Opacus' ``get_noise_multiplier``. With them (one release per
    step for each entry of ``extra_releases``), Opacus has no search over a mixed history, so
    the same bisection runs here over the ledger's epsilon.
    """
    extras = list(extra_releases or [])
    if not extras:
        utils = require("opacus.accountants.utils", extra="dp", purpose="DP-SGD accounting")
        try:
            return float(
                utils.get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant="rdp",
                    epsilon_tolerance=tolerance,
                )
            )
        except ValueError as err:
            raise PrivacyParameterError(
                f"epsilon {epsilon} cannot be reached in {steps} steps at sampling rate "
                f"{sample_rate:.4g}: {err}; raise epsilon or train fewer steps"
            ) from err
    floor = _epsilon(_MAX_SIGMA, sample_rate, steps, extras, delta)
    if floor >= epsilon:
        raise PrivacyParameterError(
            f"the count releases alone (noise multipliers {extras}, {steps} steps) spend "
            f"epsilon {floor:.3g} >= the target {epsilon}; raise --count-noise or epsilon"
        )
    low, high = 0.0, 10.0
    while _epsilon(high, sample_rate, steps, extras, delta) > epsilon:
        low, high = high, 2 * high
        if high > _MAX_SIGMA:
            raise PrivacyParameterError(f"epsilon {epsilon} is too small for {steps} steps")
    while True:
        mid = (low + high) / 2
        eps = _epsilon(mid, sample_rate, steps, extras, delta)
        if eps < epsilon:
            high = mid
            if epsilon - eps <= tolerance:
                return high
        else:
            low = mid
