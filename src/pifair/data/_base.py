"""What every data set yields: tensors of inputs, labels and group labels, split three ways."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..errors import ConfigError

__all__ = ["Split", "Dataset", "hold_out_validation"]


@dataclass(frozen=True)
class Split:
    """One split of a data set, held as tensors.

    ``x`` is uint8 (N, C, H, W) for images (normalised batch by batch, on the device) or float32
    (N, F) for tables; ``y`` the class labels and ``groups`` the group labels (int64, N).
    """

    x: torch.Tensor
    y: torch.Tensor
    groups: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.x)
        if len(self.y) != n or len(self.groups) != n:
            raise ConfigError(
                f"split sizes differ: x {n}, y {len(self.y)}, groups {len(self.groups)}"
            )

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: torch.Tensor) -> Split:
        """The samples at ``index`` (a 1-D index tensor)."""
        return Split(self.x[index], self.y[index], self.groups[index])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device), self.groups.to(device))


@dataclass(frozen=True)
class Dataset:
    """A data set ready for training: train / validation / test splits and their metadata.

    ``mean``/``std`` normalise image channels (after scaling uint8 to [0, 1]); ``augment`` names
    the training augmentation (``"none"`` or ``"crop-flip"``).
    """

    name: str
    train: Split
    val: Split
    test: Split
    classes: list[str]
    group_names: list[str]
    group_by: str = "class"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: str = "none"
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.train.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.train.x.dim() == 4

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise ConfigError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Float inputs for the model: uint8 images scaled to [0, 1] and standardised."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if self.mean is not None and x.dim() == 4:
            mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def with_splits(self, **splits: Split) -> Dataset:
        return replace(self, **splits)  # type: ignore[arg-type]  # only Split fields are given

    def summary(self) -> dict:
        """Sizes and per-group counts, for run configs and reports."""

        def counts(s: Split) -> dict[str, int]:
            c = torch.bincount(s.groups, minlength=len(self.group_names)).tolist()
            return dict(zip(self.group_names, c))

        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "group_by": self.group_by,
            "sizes": {k: len(self.split(k)) for k in ("train", "val", "test")},
            "train_groups": counts(self.train),
            "test_groups": counts(self.test),
        } | self.info


def hold_out_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split ``train`` into (train, validation) with a seeded permutation.

    The validation split selects models (early stopping, SNL checkpoints); the test split is
    only for the final report.
    """
    if not 0 <= fraction < 1:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    n_val = round(len(train) * fraction)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[n_val:].sort().values), train.subset(perm[:n_val].sort().values)
