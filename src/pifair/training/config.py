"""Training configuration: every field has a default and a CLI flag of the same name."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from ..config_types import check_settings, setting, settings_from_dict
from ..data import list_datasets
from ..models import list_models

__all__ = ["DataConfig", "TrainConfig"]


@dataclass
class DataConfig:
    """Which data set, how it is split and grouped (see :func:`pifair.data.load_dataset`)."""

    data: str = setting("fashion-mnist", help="data set: " + ", ".join(list_datasets()))
    data_dir: str | None = setting(
        None, help="the data set's folder; unset: where its package or the project puts it"
    )
    val_fraction: float = setting(
        0.1, help="fraction of the training set held out for validation", ge=0, lt=1
    )
    keep: str | None = setting(
        None, help="subsample classes of the training set, e.g. 8:0.09 or 0-4:0.9,5-9:0.1"
    )
    keep_test: bool = setting(False, help="subsample the test set the same way")
    group_by: str = setting(
        "class", help="the groups of fairness metrics: class, or sex / race for adult"
    )
    limit: int | None = setting(None, help="evenly spaced samples of each set (quick looks)", ge=10)
    download: bool = setting(False, help="allow downloading a data set that is not on disk")

    def load_kwargs(self, seed: int) -> dict[str, Any]:
        d = asdict(self)
        d["name"] = d.pop("data")
        return d | {"seed": seed}


@dataclass
class TrainConfig(DataConfig):
    """A training run: data, model, optimisation. ``pifair train`` takes each as ``--flag``."""

    # training validates after every epoch (and the reductions select on it): never empty
    val_fraction: float = setting(
        0.1, help="fraction of the training set held out for validation", gt=0, lt=1
    )
    model: str = setting(
        "lenet",
        help="model: "
        + ", ".join(list_models())
        + ", or torchvision:NAME, timm:NAME, FILE.py:ClassName (your own architecture)",
    )
    snl_variant: bool = setting(False, help="resnet18 without the stem ReLU, as in SNL's code")
    width: int | None = setting(
        None, help="channels of the first stage, for models that take it (resnet18)", ge=1
    )
    act: str | None = setting(
        None, help="activation of the model, for models that take one (relu, tanh, ...)"
    )
    epochs: int = setting(10, help="training epochs", ge=1)
    batch_size: int = setting(128, help="batch size", ge=1)
    lr: float = setting(0.1, help="peak learning rate", gt=0)
    momentum: float = setting(0.9, help="SGD momentum", ge=0)
    weight_decay: float = setting(5e-4, help="SGD weight decay", ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = setting(
        "cosine", help="learning-rate schedule"
    )
    label_smoothing: float = setting(0.0, help="label smoothing of the cross-entropy", ge=0, lt=1)
    seed: int = setting(0, help="seed of the split, the initialisation and the batches")
    device: str = setting("auto", help="auto (CUDA when present), cpu or cuda[:N]")
    loader: Literal["resident", "dataloader"] = setting(
        "resident", help="resident: the data stays on the device; dataloader: torch DataLoader"
    )

    def __post_init__(self) -> None:
        check_settings(self)

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
