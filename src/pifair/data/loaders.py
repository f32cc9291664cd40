"""Batch iterators: a device-resident loader for small sets and the standard DataLoader path.

:class:`ResidentLoader` keeps the whole split on the device (CIFAR-10 as uint8 is 150 MB) and
builds each batch there, augmentation included, so a GPU epoch never waits for the host.
torchvision's transforms work per image on the host, hence the vectorised crop/flip here.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..errors import ConfigError
from ._base import Dataset, Split

__all__ = ["ResidentLoader", "make_dataloader", "random_crop_flip"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def random_crop_flip(
    x: torch.Tensor, *, padding: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, per image, vectorised on x's device."""
    n, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, :, None]  # n, h, 1
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, :]  # n, 1, w
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=dev)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


class ResidentLoader:
    """Iterate over a split held on ``device``: shuffled batches, normalised and augmented there.

    Yields ``(x, y, groups)``; ``x`` is float32 in ``channels_last`` when asked. The permutation
    and the augmentation draw from a generator seeded from ``seed`` and the epoch, so a resumed
    run sees the same batches.
    """

    def __init__(
        self,
        data: Dataset,
        split: str | Split,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be > 0, got {batch_size}")
        self.data, self.device = data, torch.device(device)
        self.split = (data.split(split) if isinstance(split, str) else split).to(self.device)
        self.batch_size, self.shuffle, self.drop_last, self.seed = (
            batch_size,
            shuffle,
            drop_last,
            seed,
        )
        self.augment = augment and data.augment == "crop-flip" and data.is_image
        self.channels_last = channels_last and data.is_image
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.split)
        seed = self.seed * 100_003 + self.epoch
        gen = torch.Generator(device=self.device).manual_seed(seed)
        # the order is drawn on the CPU: the same batches on every device
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(self.device)
            if self.shuffle
            else torch.arange(n, device=self.device)
        )
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.split.x[idx]
            if self.augment:
                x = random_crop_flip(x.float().div_(255), generator=gen)
            x = self.data.normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.split.y[idx], self.split.groups[idx]


def make_dataloader(
    data: Dataset,
    split: str,
    *,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoader:
    """The standard PyTorch path: a DataLoader over the split's tensors (normalise per batch with
    ``data.normalize``). Use it with samplers of your own, Opacus' Poisson sampling, or DDP."""
    s = data.split(split)
    return DataLoader(
        TensorDataset(s.x, s.y, s.groups),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available(),
    )
