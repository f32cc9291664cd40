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

from ..data import Dataset, ResidentLoader
from ..training.distill import DistillationLoss
from ..training.loop import autocast_for
from .snl import SearchSettings, SNLSite, mask_optimizer, snl_sites

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
    loader = ResidentLoader(
        data,
        "train",
        batch_size=settings.batch_size,
        device=device,
        shuffle=True,
        augment=True,
        drop_last=True,
        seed=settings.seed + 7919,
        channels_last=device.type == "cuda",
    )
    total_steps = max(1, math.ceil(settings.harden_epochs * len(loader)))
    history: list[dict] = []
    masks = _refresh(sites, make_masks, 0.0)
    step, t0, flips = 0, time.perf_counter(), 0
    try:
        epoch = 0
        while step < total_steps:
            loader.set_epoch(epoch)
            model.train()
            bar = tqdm(
                loader,
                desc=f"hardening {epoch + 1}",
                leave=False,
                disable=None if progress else True,
            )
            loss_sum, batches = torch.zeros((), device=device), 0
            for x, y, g in bar:
                if step >= total_steps:
                    break
                if step and step % settings.harden_refresh == 0:
                    new = _refresh(sites, make_masks, settings.hysteresis)
                    flips += sum(int((new[n] != masks[n]).sum()) for n in new)
                    masks = new
                weight = 1.0 if settings.harden_mode == "ste" else (step + 1) / total_steps
                for s in sites.values():
                    s.hard_weight = weight
                with autocast_for(device):
                    loss = loss_fn(model(x), y, x, g)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                batches += 1
                step += 1
            epoch += 1
            history.append(
                {
                    "epoch": epoch,
                    "steps": step,
                    "loss": float(loss_sum) / max(batches, 1),
                    "mask_flips": flips,
                    "seconds": time.perf_counter() - t0,
                }
            )
    finally:
        for s in sites.values():
            s.hard_mask, s.hard_weight = None, 1.0
    return masks, history
