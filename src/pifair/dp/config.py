"""``pifair dp-train`` settings. Unset method settings take the fair-dp MNIST script's values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ..config_types import settings_from_dict
from ..errors import ConfigError, PrivacyParameterError, UnknownNameError
from ..training.config import DataConfig
from .rules import METHODS, MethodName, make_rule

__all__ = ["DPConfig", "METHOD_DEFAULTS"]

# From layer6ai-labs/fair-dp experiment_scripts/mnist_script.sh (the protocol we reproduce).
METHOD_DEFAULTS: dict[str, dict[str, float]] = {
    "nonprivate": {"lr": 0.01, "clip": 1.0},
    "dpsgd": {"lr": 0.01, "clip": 1.0},
    "global": {"lr": 0.01, "clip": 20.0, "z": 100.0},
    "global-adapt": {"lr": 0.1, "clip": 1.0, "z": 50.0, "tau": 0.7, "count_noise": 10.0},
    "dpsgd-f": {"lr": 0.01, "clip": 1.0, "count_noise": 8.0},
    # not in fair-dp: Global-Adapt's lr and count noise; Andrew et al.'s quantile 0.5 and eta 0.2
    "bounded-adapt": {"lr": 0.1, "clip": 1.0, "count_noise": 10.0},
}


@dataclass
class DPConfig(DataConfig):
    """A DP training run; every field is a ``pifair dp-train --flag``."""

    val_fraction: float = 0.0  # the fair-dp protocol trains on the whole training set
    method: MethodName = "global-adapt"
    model: str = "fairdp_cnn"
    # activation of the model (fairdp_cnn: tanh; mlp: relu, or tanh as in fair-dp)
    act: str | None = None
    epochs: int = 20
    batch_size: int = 256  # expected (Poisson) batch size
    lr: float | None = None
    momentum: float = 0.0
    clip: float | None = None  # C (DPSGD-F: C0)
    z: float | None = None  # Z (Global) or Z0 (Global-Adapt)
    tau: float | None = None  # Global-Adapt: count gradients above tau * Z_t
    eta_z: float = 0.1
    count_noise: float | None = None  # s_b (Global-Adapt, bounded-adapt) or sigma_1 (DPSGD-F)
    clip_lower: float = 0.5  # bounded-adapt: the clip bound never goes below this
    clip_upper: float = 5.0  # bounded-adapt: nor above this
    quantile: float = 0.5  # bounded-adapt: the fraction of unclipped gradients C aims at
    eta_c: float = 0.2  # bounded-adapt: the clip bound's geometric learning rate
    epsilon: float | None = None
    delta: float = 1e-6
    noise_multiplier: float | None = None
    # auto (the faster for the model, see resolve_grad_path), ghost (norms, second backward) or
    # hooks (Opacus' per-sample gradients); all give the same step
    grad_path: Literal["auto", "ghost", "hooks"] = "auto"
    secure_noise: bool = False  # noise seeded from the OS and Opacus' secure_mode; not reproducible
    # fp32, or bf16: the forward pass under bfloat16 autocast (per-sample norms, clipping, noise
    # and the update stay in float32); meant for CUDA, runs but is slower on most CPUs
    precision: Literal["fp32", "bf16"] = "fp32"
    # steps between misalignment measurements (0: never, the default). They read the private
    # training data without noise, so they are NOT covered by epsilon: research use only.
    diag_every: int = 0
    baseline: str | None = None  # a non-private run folder: privacy cost per group
    seed: int = 0
    device: str = "auto"

    @property
    def releases_unaccounted_diagnostics(self) -> bool:
        """Misalignment diagnostics on a private run: statistics of the private data that
        epsilon does not cover."""
        return self.private and self.diag_every > 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UnknownNameError("DP method", self.method, list(METHODS))
        for key, value in METHOD_DEFAULTS[self.method].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.z = 100.0 if self.z is None else self.z
        self.count_noise = 10.0 if self.count_noise is None else self.count_noise
        self.tau = 1.0 if self.tau is None else self.tau
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(
                f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            )
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.baseline is not None:  # absolute: found from any working directory
            self.baseline = str(Path(self.baseline).resolve())
        if self.diag_every < 0:
            raise ConfigError(f"diag_every must be >= 0 (0: no diagnostics), got {self.diag_every}")
        if not self.clip > 0:
            raise PrivacyParameterError(f"clip bound must be > 0, got {self.clip}")
        if self.grad_path not in ("auto", "ghost", "hooks"):
            raise ConfigError(f"grad_path must be auto, ghost or hooks, got {self.grad_path!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.private:
            # builds the rule once so that bad thresholds fail here, before any run folder
            make_rule(self.method, **self.rule_settings())
            if self.epsilon is not None and self.noise_multiplier is not None:
                raise PrivacyParameterError(
                    "give --epsilon (the noise is derived) or --noise-multiplier (epsilon is "
                    "reported), not both"
                )
            if self.epsilon is None and self.noise_multiplier is None:
                raise PrivacyParameterError(
                    f"{self.method} needs a privacy level: --epsilon 6 (noise derived from it) or "
                    f"--noise-multiplier 0.8 (epsilon reported)"
                )
            if self.epsilon is not None and not self.epsilon > 0:
                raise PrivacyParameterError(f"epsilon must be > 0, got {self.epsilon}")
            if self.noise_multiplier is not None and not self.noise_multiplier > 0:
                raise PrivacyParameterError(
                    f"noise multiplier must be > 0, got {self.noise_multiplier}"
                )

    def rule_settings(self) -> dict[str, Any]:
        """The keyword arguments of :func:`make_rule` this config sets (all but the groups)."""
        return dict(
            clip=self.clip,
            z=self.z,
            count_noise=self.count_noise,
            eta_z=self.eta_z,
            tau=self.tau,
            clip_lower=self.clip_lower,
            clip_upper=self.clip_upper,
            quantile=self.quantile,
            eta_c=self.eta_c,
        )

    @property
    def private(self) -> bool:
        return self.method != "nonprivate"

    def model_options(self) -> dict[str, Any]:
        return {"act_layer": self.act} if self.act else {}

    @property
    def data_config(self) -> DataConfig:
        return DataConfig(**{f.name: getattr(self, f.name) for f in fields(DataConfig)})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DPConfig:
        """From a config.yaml or flags: an unknown key is refused by name."""
        return settings_from_dict(cls, d)
