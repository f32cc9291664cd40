"""Choosing which ReLUs to keep under an exact budget (pure functions on scores).

Pixel-wise: the ``budget`` highest scores over all sites (ties broken by position), so the
reduced model keeps exactly ``budget`` ReLUs. Channel-wise: whole channels, each costing its
H x W elements; the kept count is the largest sum of channel sizes <= budget (a bounded
subset-sum, solved exactly with bitsets), and among the channel sets reaching it the choice
follows the scores greedily: a channel is taken, best first, whenever the rest of the target
stays reachable with the channels not yet considered.
"""

from __future__ import annotations

from collections import Counter

import torch

from ..errors import BudgetError

__all__ = ["select_pixels", "select_pixels_per_site", "select_channels", "largest_reachable"]


def _check_budget(budget: int, total: int) -> None:
    if not isinstance(budget, int) or budget < 0:
        raise BudgetError(f"budget must be a whole number >= 0, got {budget!r}")
    if budget > total:
        raise BudgetError(
            f"budget {budget:,} is above the model's ReLU count of {total:,}; choose at most "
            f"{total:,}"
        )


def select_pixels(scores: dict[str, torch.Tensor], budget: int) -> dict[str, torch.Tensor]:
    """0/1 masks (same shapes as ``scores``) keeping the ``budget`` highest scores overall."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().float().flatten().cpu() for n in names])
    _check_budget(budget, flat.numel())
    keep = torch.zeros_like(flat)
    if budget:
        # stable ranking: descending score, ties by position, so equal scores give one answer
        order = torch.sort(flat, descending=True, stable=True).indices
        keep[order[:budget]] = 1
    masks, start = {}, 0
    for n in names:
        size = scores[n].numel()
        masks[n] = keep[start : start + size].view_as(scores[n])
        start += size
    return masks


def select_pixels_per_site(
    scores: dict[str, torch.Tensor], site_budgets: dict[str, int]
) -> dict[str, torch.Tensor]:
    """0/1 masks keeping, in each site, its ``site_budgets[name]`` highest scores (layer-wise
    allocation; the total kept is the sum of the site budgets)."""
    return {n: select_pixels({n: scores[n]}, site_budgets[n])[n] for n in scores}


def _reachable(counts: dict[int, int], limit: int) -> int:
    """Bitset of the sums <= limit of a sub-multiset of sizes (size -> how many)."""
    bits, mask = 1, (1 << (limit + 1)) - 1
    for size, count in counts.items():
        chunk = 1
        while count > 0:  # binary splitting: chunks 1, 2, 4, ... reach every 0..count
            take = min(chunk, count)
            bits |= (bits << (size * take)) & mask
            count -= take
            chunk *= 2
    return bits


def largest_reachable(sizes: list[int], budget: int) -> int:
    """The largest sum <= budget of a subset of ``sizes``."""
    return _reachable(Counter(sizes), budget).bit_length() - 1


def select_channels(
    scores: dict[str, torch.Tensor], channel_sizes: dict[str, int], budget: int
) -> dict[str, torch.Tensor]:
    """0/1 masks over channels (shape of each score tensor, one entry per channel).

    ``channel_sizes[name]`` is the ReLUs one channel of that site holds (H x W). The kept total
    is :func:`largest_reachable` of all channel sizes and ``budget``: never over the budget.
    """
    entries = [
        (float(s), n, i)
        for n in scores
        for i, s in enumerate(scores[n].detach().float().flatten().cpu().tolist())
    ]
    total = sum(channel_sizes[n] * scores[n].numel() for n in scores)
    _check_budget(budget, total)
    remaining = Counter(channel_sizes[n] for _, n, _ in entries)
    target = _reachable(remaining, budget).bit_length() - 1
    masks = {n: torch.zeros(scores[n].numel()) for n in scores}
    order = sorted(range(len(entries)), key=lambda k: (-entries[k][0], k))
    for k in order:
        if target == 0:
            break
        _, name, index = entries[k]
        size = channel_sizes[name]
        remaining[size] -= 1
        if size <= target and (_reachable(remaining, target - size) >> (target - size)) & 1:
            masks[name][index] = 1
            target -= size
    if target != 0:  # cannot happen: the target stays reachable by construction
        raise RuntimeError("channel selection failed to reach its target")
    return {n: masks[n].view_as(scores[n]) for n in scores}


def kept_count(masks: dict[str, torch.Tensor], sizes: dict[str, int]) -> int:
    """ReLUs kept by ``masks`` (each mask entry costs ``sizes[name]``)."""
    return sum(int(masks[n].sum().item()) * sizes[n] for n in masks)
