"""``pifair dp-train`` settings. Unset method settings take the fair-dp MNIST script's values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ..config_types import check_settings, setting, settings_from_dict
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

    val_fraction: float = setting(  # the fair-dp protocol trains on the whole training set
        0.0, help="fraction of the training set held out for validation", ge=0, lt=1
    )
    method: MethodName = setting(
        "global-adapt", help="nonprivate, dpsgd, global, global-adapt, dpsgd-f or bounded-adapt"
    )
    model: str = setting(
        "fairdp_cnn", help="model without batch norm: fairdp_cnn, mlp, resnet18_gn, lenet, he_cnn"
    )
    act: str | None = setting(
        None, help="activation of the model (fairdp_cnn: tanh; mlp: relu, or tanh as in fair-dp)"
    )
    epochs: int = setting(20, help="training epochs (the noise is derived for this many)", ge=1)
    batch_size: int = setting(256, help="expected (Poisson) batch size", ge=1)
    lr: float | None = setting(
        None, help="SGD learning rate (unset: the method's fair-dp default)", gt=0
    )
    momentum: float = setting(0.0, help="SGD momentum", ge=0)
    clip: float | None = setting(
        None,
        help="clip bound C (DPSGD-F: C0; bounded-adapt: the starting bound); unset: the method's",
        gt=0,
        error=PrivacyParameterError,
    )
    z: float | None = setting(
        None, help="Z of DPSGD-Global, Z0 of Global-Adapt", gt=0, error=PrivacyParameterError
    )
    tau: float | None = setting(
        None, help="Global-Adapt counts the gradients above tau * Z_t", gt=0
    )
    eta_z: float = setting(0.1, help="Global-Adapt's learning rate of Z_t", gt=0)
    count_noise: float | None = setting(
        None,
        help="noise of the released counts: s_b (Global-Adapt, bounded-adapt), sigma_1 (DPSGD-F)",
        gt=0,
        error=PrivacyParameterError,
    )
    clip_lower: float = setting(
        0.5, help="bounded-adapt: the clip bound never goes below this", gt=0
    )
    clip_upper: float = setting(5.0, help="bounded-adapt: nor above this", gt=0)
    quantile: float = setting(
        0.5, help="bounded-adapt: the fraction of unclipped gradients the bound aims at", gt=0, lt=1
    )
    eta_c: float = setting(
        0.2, help="bounded-adapt: the clip bound's geometric learning rate", gt=0
    )
    epsilon: float | None = setting(
        None,
        help="target epsilon: the noise multiplier is derived from it",
        gt=0,
        error=PrivacyParameterError,
    )
    delta: float = setting(1e-6, help="delta, below 1/N", gt=0, lt=1, error=PrivacyParameterError)
    noise_multiplier: float | None = setting(
        None,
        help="noise multiplier instead of --epsilon (epsilon is reported)",
        gt=0,
        error=PrivacyParameterError,
    )
    # all paths give the same step (resolve_grad_path picks the faster for the model)
    grad_path: Literal["auto", "ghost", "hooks"] = setting(
        "auto",
        help="auto: hooks for small conv nets, ghost otherwise; ghost: norms first, then a "
        "second backward; hooks: Opacus' per-sample gradients. Same step on all",
    )
    secure_noise: bool = setting(
        False, help="noise seeded from the OS with Opacus' secure_mode (not reproducible)"
    )
    # bf16: the forward pass under bfloat16 autocast (per-sample norms, clipping, noise and the
    # update stay in float32); meant for CUDA, runs but is slower on most CPUs
    precision: Literal["fp32", "bf16"] = setting(
        "fp32", help="bf16: the forward pass under bfloat16 autocast (for CUDA)"
    )
    # the measurements read the private training data without noise: NOT covered by epsilon
    diag_every: int = setting(
        0,
        help="steps between misalignment measurements (0: never); NOT covered by epsilon",
        ge=0,
    )
    baseline: str | None = setting(
        None, help="a non-private run folder: the privacy cost per group"
    )
    seed: int = setting(0, help="seed of the batches, the noise and the initialisation")
    device: str = setting("auto", help="auto (CUDA when present), cpu or cuda[:N]")

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
        check_settings(self)
        if self.baseline is not None:  # absolute: found from any working directory
            self.baseline = str(Path(self.baseline).resolve())
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
        elif self.epsilon is not None or self.noise_multiplier is not None:
            raise ConfigError(
                "the non-private baseline adds no noise: drop --epsilon / --noise-multiplier, or "
                "choose a private --method"
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
