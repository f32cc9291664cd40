"""Training configuration: every field has a default and a CLI flag of the same name."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from ..config_types import settings_from_dict
from ..errors import ConfigError

__all__ = ["DataConfig", "TrainConfig"]


@dataclass
class DataConfig:
    """Which data set, how it is split and grouped (see :func:`pifair.data.load_dataset`)."""

    data: str = "fashion-mnist"
    data_dir: str | None = None
    val_fraction: float = 0.1
    keep: str | None = None
    keep_test: bool = False
    group_by: str = "class"
    limit: int | None = None
    download: bool = False

    def load_kwargs(self, seed: int) -> dict[str, Any]:
        d = asdict(self)
        d["name"] = d.pop("data")
        return d | {"seed": seed}


@dataclass
class TrainConfig(DataConfig):
    """A training run: data, model, optimisation. ``pifair train`` takes each as ``--flag``."""

    model: str = "lenet"
    snl_variant: bool = False
    width: int | None = None  # channels of the first stage, for models that take it (resnet18)
    act: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    loader: Literal["resident", "dataloader"] = "resident"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in ("cosine", "onecycle", "constant"):
            raise ConfigError(
                f"schedule must be cosine, onecycle or constant, got {self.schedule!r}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.loader not in ("resident", "dataloader"):
            raise ConfigError(f"loader must be resident or dataloader, got {self.loader!r}")

    @property
    def data_config(self) -> DataConfig:
        return DataConfig(**{f.name: getattr(self, f.name) for f in fields(DataConfig)})

    def model_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.snl_variant:
            opts["snl_variant"] = True
        if self.width is not None:
            opts["width"] = self.width
        if self.act:
            opts["act_layer"] = self.act
        return opts

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From a config.yaml or flags: an unknown key is refused by name."""
        return settings_from_dict(cls, d)
