"""Hardening: continue SNL's search at one budget with the exact binary mask in the forward pass.

SNL binarizes its soft masks once, after the search: every ``a`` in (0, 1) becomes 0 or 1 and
the network that was trained is no longer the one that runs, so accuracy falls at that step
and fine-tuning has to rebuild it. Hardening closes the gap before binarization (after
AutoReP's hysteresis mask, Peng et al. ICCV 2023): for a fraction of an epoch or more, each
site computes ``x + m * (relu(x) - x)`` with ``m`` the exact top-k mask of the budget, the
gradient passes straight through ``m`` to ``a`` (so the ranking keeps learning), and ``m`` is
recomputed from ``a`` every few steps with a small bonus (hysteresis) for the entries already
kept, so that masks do not flicker. The mask the network ends with is the binarized model's
mask: what was trained is what runs. ``mode="progressive"`` blends the soft ``a`` into ``m``
linearly over the hardening steps instead of switching at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import Dataset
from ..training.distill import DistillationLoss
from ..training.loop import autocast_for
from .snl import SearchSettings, SNLSite, mask_optimizer, mask_training_loader, snl_sites

__all__ = ["harden"]

MaskMaker = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _refresh(
    sites: dict[str, SNLSite], make_masks: MaskMaker, hysteresis: float
) -> dict[str, torch.Tensor]:
    scores = {}
    for n, s in sites.items():
        a = s.alpha.detach().float().cpu()
        kept = s.hard_mask.cpu() if s.hard_mask is not None else torch.zeros_like(a)
        scores[n] = a + hysteresis * kept
    masks = make_masks(scores)
    for n, s in sites.items():
        s.hard_mask = masks[n].to(s.alpha.device)
    return masks


class _HardeningSteps:
    """The hardening's optimizer steps: each refreshes the masks when due (with hysteresis),
    sets the hard weight, and takes one step of ``loss_fn``."""

    def __init__(
        self,
        sites: dict[str, SNLSite],
        make_masks: MaskMaker,
        settings: SearchSettings,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable,
        total: int,
    ) -> None:
        self.sites, self.make_masks, self.settings = sites, make_masks, settings
        self.optimizer, self.loss_fn, self.total = optimizer, loss_fn, total
        self.done, self.flips = 0, 0
        self.masks = _refresh(sites, make_masks, 0.0)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor):
        """One optimizer step on a batch; returns its (detached) loss."""
        if self.done and self.done % self.settings.harden_refresh == 0:
            new = _refresh(self.sites, self.make_masks, self.settings.hysteresis)
            self.flips += sum(int((new[n] != self.masks[n]).sum()) for n in new)
            self.masks = new
        progressive = self.settings.harden_mode != "ste"
        weight = (self.done + 1) / self.total if progressive else 1.0
        for s in self.sites.values():
            s.hard_weight = weight
        with autocast_for(x.device):
            loss = self.loss_fn(model(x), y, x, g)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.done += 1
        return loss.detach()


def harden(
    model: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    make_masks: MaskMaker,
    settings: SearchSettings,
    *,
    device: torch.device,
    progress: bool = True,
    loss_fn: Callable | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Train ``model`` (holding :class:`SNLSite` s) with the hard masks ``make_masks`` gives
    for ``settings.harden_epochs`` epochs; return the masks the last step ran with (the
    binarized model's) and a per-epoch history.

    ``make_masks(scores)`` must return 0/1 masks at the budget (top-k, channel or layer-wise).
    The sites are left in their soft state; the returned masks are what the binarized model
    must use.
    """
    sites = dict(snl_sites(model))
    model.to(device)
    teacher = teacher.to(device).eval()
    if loss_fn is None:
        loss_fn = DistillationLoss(
            teacher, temperature=settings.temperature, weight=settings.kd_weight
        )
    # the masks move slowly here (a step of mask_lr would reorder thousands of entries between
    # refreshes and the hysteresis could not hold them)
    optimizer = mask_optimizer(
        model, list(sites.values()), lr=settings.lr, mask_lr=settings.harden_mask_lr or settings.lr
    )
    loader = mask_training_loader(data, settings, device, seed=settings.seed + 7919)
    total = max(1, math.ceil(settings.harden_epochs * len(loader)))
    steps = _HardeningSteps(sites, make_masks, settings, optimizer, loss_fn, total)
    history: list[dict] = []
    t0 = time.perf_counter()
    try:
        while steps.done < total:
            loader.set_epoch(len(history))
            model.train()
            bar = tqdm(
                loader,
                desc=f"hardening {len(history) + 1}",
                leave=False,
                disable=None if progress else True,
            )
            losses = [steps.step(model, x, y, g) for x, y, g in _until(bar, steps, total)]
            history.append(
                {
                    "epoch": len(history) + 1,
                    "steps": steps.done,
                    "loss": float(torch.stack(losses).mean()) if losses else 0.0,
                    "mask_flips": steps.flips,
                    "seconds": time.perf_counter() - t0,
                }
            )
    finally:
        for s in sites.values():
            s.hard_mask, s.hard_weight = None, 1.0
    return steps.masks, history


def _until(batches, steps: _HardeningSteps, total: int):
    """The batches while the hardening has steps left."""
    for batch in batches:
        if steps.done >= total:
            return
        yield batch
