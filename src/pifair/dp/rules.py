"""Per-sample scaling rules of the DP-SGD variants, as pure tensor functions of gradient norms.

Each rule turns the per-sample gradient norms ``|g_i|`` of one batch (and the samples' groups)
into scale factors ``s_i``: the optimizer releases ``sum_i s_i g_i + N(0, (sigma * S)^2)`` where
``S`` (the rule's sensitivity) bounds every ``|s_i g_i|``. Rules that adapt (Global-Adapt's
threshold Z_t, DPSGD-F's per-group bounds) do so from noisy counts; each such release is listed
in ``StepScale.releases`` so the accountant charges it.

The rules are kept apart from Opacus so that both gradient paths (Opacus hooks, and ghost
clipping where the factors scale the per-sample losses) share one definition, and so the tests
can check them on hand-made norms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import torch

from ..errors import ConfigError, PrivacyParameterError, UnknownNameError

__all__ = [
    "StepScale",
    "ClippingRule",
    "FlatClipping",
    "GlobalClipping",
    "GlobalAdaptClipping",
    "GroupAdaptiveClipping",
    "BoundedAdaptiveClipping",
    "METHODS",
    "make_rule",
]

_EPS = 1e-6  # Opacus' guard against division by a zero norm


@dataclass
class StepScale:
    """What a rule decided for one batch: the factors, the noise scale and the extra releases."""

    factors: torch.Tensor
    sensitivity: float
    releases: list[float] = field(default_factory=list)  # noise multipliers, sensitivity 1


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise PrivacyParameterError(f"{name} must be > 0, got {value}")
    return float(value)


class ClippingRule:
    """Base class: ``scale`` returns the factors for one batch and updates the rule's state."""

    name: ClassVar[str]
    clip: float

    @staticmethod
    def reduce_counts(counts: torch.Tensor) -> torch.Tensor:
        """Sum of a count across data-parallel ranks (set by the distributed optimizers)."""
        return counts

    def scale(
        self,
        norms: torch.Tensor,
        groups: torch.Tensor | None,
        *,
        expected_batch_size: int,
        generator: torch.Generator | None = None,
    ) -> StepScale:
        raise NotImplementedError

    def releases_per_step(self) -> list[float]:
        """Noise multipliers of the extra releases every step makes (for target-epsilon search)."""
        return []

    def state(self) -> dict[str, Any]:
        """What the rule carries between steps (checkpointed, and logged per epoch)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


class FlatClipping(ClippingRule):
    """DPSGD (Abadi et al. 2016): clip every per-sample gradient to norm C."""

    name = "dpsgd"

    def __init__(self, clip: float) -> None:
        self.clip = _positive("clip bound C", clip)

    def scale(self, norms, groups, *, expected_batch_size, generator=None) -> StepScale:
        return StepScale((self.clip / (norms + _EPS)).clamp(max=1.0), self.clip)


class GlobalClipping(ClippingRule):
    """DPSGD-Global (Bu et al. 2021): gradients with norm > Z are dropped, the rest scaled by C/Z,
    so every kept gradient keeps its direction and its relative size."""

    name = "global"

    def __init__(self, clip: float, z: float) -> None:
        self.clip = _positive("clip bound C", clip)
        self.z = _positive("threshold Z", z)

    def scale(self, norms, groups, *, expected_batch_size, generator=None) -> StepScale:
        factors = torch.where(norms <= self.z, self.clip / self.z, 0.0).to(norms.dtype)
        return StepScale(factors, self.clip)


class GlobalAdaptClipping(ClippingRule):
    """DPSGD-Global-Adapt (Esipova et al. 2023): s_i = C/Z_t if |g_i| <= Z_t else C/|g_i|.

    After the batch, b = #{|g_i| > tau Z_t} / B, b~ = b + N(0, s_b^2) / B and
    Z_{t+1} = Z_t exp(b~ - eta_Z). B is the *expected* batch size: with Poisson sampling the
    real size depends on the data (the reference code divides by it), while the count has
    sensitivity 1 and its noise is one sampled-Gaussian release of multiplier s_b.
    """

    name = "global-adapt"

    def __init__(
        self, clip: float, z0: float, *, count_noise: float, eta_z: float, tau: float
    ) -> None:
        self.clip = _positive("clip bound C", clip)
        self.z = _positive("initial threshold Z0", z0)
        self.count_noise = _positive("count noise s_b", count_noise)
        self.eta_z = float(eta_z)
        self.tau = _positive("tau", tau)

    def scale(self, norms, groups, *, expected_batch_size, generator=None) -> StepScale:
        z = self.z
        factors = torch.where(norms <= z, self.clip / z, self.clip / (norms + _EPS)).to(norms.dtype)
        over = float(self.reduce_counts((norms > self.tau * z).sum().float()))
        noise = float(torch.normal(0.0, self.count_noise, (1,), generator=generator))
        noisy_fraction = (over + noise) / expected_batch_size
        self.z = z * math.exp(noisy_fraction - self.eta_z)
        return StepScale(factors, self.clip, [self.count_noise])

    def releases_per_step(self) -> list[float]:
        return [self.count_noise]

    def state(self) -> dict[str, Any]:
        return {"z": self.z}

    def load_state(self, state: dict[str, Any]) -> None:
        self.z = float(state["z"])


class GroupAdaptiveClipping(ClippingRule):
    """DPSGD-F (Xu et al. 2021): per-group clip bounds from noisy per-group counts.

    m_k counts group k's gradients with norm > C0 and o_k the others; both get N(0, sigma_1^2)
    (one release: each sample sits in exactly one cell, so the count vector has sensitivity 1).
    With a_k = m~_k / (m~_k + o~_k), C_k = C0 (1 + a_k / mean(a)). The noise uses the largest
    C_k over *all* groups, not over the groups present in the batch (which would leak them).
    """

    name = "dpsgd-f"

    def __init__(self, clip: float, num_groups: int, *, count_noise: float) -> None:
        self.clip = _positive("base clip bound C0", clip)
        self.count_noise = _positive("count noise sigma_1", count_noise)
        if num_groups < 1:
            raise PrivacyParameterError(f"DPSGD-F needs at least one group, got {num_groups}")
        self.num_groups = int(num_groups)
        self.bounds = torch.full((self.num_groups,), self.clip)

    def scale(self, norms, groups, *, expected_batch_size, generator=None) -> StepScale:
        if groups is None:
            raise ConfigError("DPSGD-F needs the group of every sample: call set_groups(groups)")
        k = self.num_groups
        groups = groups.to(norms.device)
        over = self.reduce_counts(torch.bincount(groups[norms > self.clip], minlength=k).float())
        under = self.reduce_counts(torch.bincount(groups[norms <= self.clip], minlength=k).float())
        over, under = over.cpu(), under.cpu()
        noise = torch.normal(0.0, self.count_noise, (2, k), generator=generator)
        m = (over + noise[0]).floor().clamp(min=0)
        o = (under + noise[1]).floor().clamp(min=0)
        total = m + o
        a = torch.where(total > 0, m / total.clamp(min=1), torch.ones_like(m))
        self.bounds = self.clip * (1 + a / (a.mean() + 1e-8))
        per_sample = self.bounds.to(norms.device, norms.dtype)[groups]
        factors = (per_sample / (norms + _EPS)).clamp(max=1.0)
        return StepScale(factors, float(self.bounds.max()), [self.count_noise])

    def releases_per_step(self) -> list[float]:
        return [self.count_noise]

    def state(self) -> dict[str, Any]:
        return {"bounds": [float(b) for b in self.bounds]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.bounds = torch.tensor(state["bounds"], dtype=torch.float32)


class BoundedAdaptiveClipping(ClippingRule):
    """Bounded adaptive clipping (Zhao et al. 2025, arXiv 2506.01396): flat clipping at a bound
    C_t that follows Andrew et al.'s (2021) quantile rule but stays within [lower, upper].

    After the batch, b = #{|g_i| <= C_t} / B, b~ = b + N(0, s_b^2) / B and
    C_{t+1} = clamp(C_t exp(-eta (b~ - gamma)), lower, upper): C moves towards the gamma-quantile
    of the norms, and the lower bound keeps it from shrinking to the well-fitting majority's
    tiny gradients (which would mute the minority's). B is the expected batch size and the count
    one release of multiplier s_b (sensitivity 1), as Global-Adapt's.
    """

    name = "bounded-adapt"

    def __init__(
        self,
        clip: float,
        *,
        lower: float,
        upper: float,
        quantile: float,
        eta: float,
        count_noise: float,
    ) -> None:
        self.lower = _positive("lower clip bound", lower)
        self.upper = _positive("upper clip bound", upper)
        if not self.lower <= clip <= self.upper:
            raise PrivacyParameterError(
                f"the initial clip bound {clip} must lie in [lower, upper] = [{lower}, {upper}]"
            )
        if not 0 < quantile < 1:
            raise PrivacyParameterError(f"target quantile must be in (0, 1), got {quantile}")
        self.clip = _positive("clip bound C0", clip)
        self.quantile = float(quantile)
        self.eta = _positive("clip learning rate eta", eta)
        self.count_noise = _positive("count noise s_b", count_noise)

    def scale(self, norms, groups, *, expected_batch_size, generator=None) -> StepScale:
        clip = self.clip
        factors = (clip / (norms + _EPS)).clamp(max=1.0)
        unclipped = float(self.reduce_counts((norms <= clip).sum().float()))
        noise = float(torch.normal(0.0, self.count_noise, (1,), generator=generator))
        noisy_fraction = (unclipped + noise) / expected_batch_size
        updated = clip * math.exp(-self.eta * (noisy_fraction - self.quantile))
        self.clip = min(self.upper, max(self.lower, updated))
        return StepScale(factors, clip, [self.count_noise])

    def releases_per_step(self) -> list[float]:
        return [self.count_noise]

    def state(self) -> dict[str, Any]:
        return {"clip": self.clip}

    def load_state(self, state: dict[str, Any]) -> None:
        self.clip = float(state["clip"])


MethodName = Literal["nonprivate", "dpsgd", "global", "global-adapt", "dpsgd-f", "bounded-adapt"]
METHODS: tuple[str, ...] = get_args(MethodName)


def make_rule(
    method: str,
    *,
    clip: float,
    z: float = 100.0,
    count_noise: float = 10.0,
    eta_z: float = 0.1,
    tau: float = 1.0,
    num_groups: int = 1,
    clip_lower: float = 0.5,
    clip_upper: float = 5.0,
    quantile: float = 0.5,
    eta_c: float = 0.2,
) -> ClippingRule:
    """The rule of ``method`` (one of :data:`METHODS` but ``nonprivate``)."""
    if method == "dpsgd":
        return FlatClipping(clip)
    if method == "global":
        return GlobalClipping(clip, z)
    if method == "global-adapt":
        return GlobalAdaptClipping(clip, z, count_noise=count_noise, eta_z=eta_z, tau=tau)
    if method == "dpsgd-f":
        return GroupAdaptiveClipping(clip, num_groups, count_noise=count_noise)
    if method == "bounded-adapt":
        return BoundedAdaptiveClipping(
            clip,
            lower=clip_lower,
            upper=clip_upper,
            quantile=quantile,
            eta=eta_c,
            count_noise=count_noise,
        )
    raise UnknownNameError("DP method", method, [m for m in METHODS if m != "nonprivate"])
