"""Layer-wise ReLU budgets from ReLU sensitivity (after SENet, Ruan et al. ICLR 2023).

A global top-k over SNL's masks lets one layer's scale decide how many ReLUs every layer keeps.
SENet instead measures how much each layer's ReLUs matter -- here: the KL divergence between
the dense model's outputs and those of the same model with that one site made linear -- and
gives each site a share of the budget that grows with it. Within a site the scores still pick
which ReLUs stay (:func:`pifair.relu.selection.select_pixels_per_site`).

SENet's code allocates by its own sensitivity formula; this module writes the idea with what
pifair's sites offer (a forward hook makes a site linear), so it works on any registered model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset, ResidentLoader
from ..errors import BudgetError
from ..relu.sites import DenseReLU, iter_sites

__all__ = ["relu_sensitivity", "allocate_by_sensitivity"]


@torch.no_grad()
def relu_sensitivity(
    model: nn.Module,
    data: Dataset,
    *,
    device: torch.device,
    batches: int = 4,
    batch_size: int = 256,
) -> dict[str, float]:
    """KL(dense || dense with one site linear) per dense ReLU site, on training batches."""
    model.to(device).eval()
    loader = ResidentLoader(
        data, "train", batch_size=batch_size, device=device, shuffle=True, seed=2468
    )
    xs = [x for i, (x, _, _) in zip(range(batches), loader)]
    dense_logp = [F.log_softmax(model(x).float(), 1) for x in xs]
    sensitivity: dict[str, float] = {}
    for name, site in iter_sites(model):
        if not isinstance(site, DenseReLU):
            continue
        handle = site.register_forward_hook(lambda m, inputs, output: inputs[0])
        try:
            kl = sum(
                F.kl_div(F.log_softmax(model(x).float(), 1), lp, log_target=True, reduction="sum")
                for x, lp in zip(xs, dense_logp)
            )
        finally:
            handle.remove()
        sensitivity[name] = float(kl) / sum(len(x) for x in xs)
    return sensitivity


def allocate_by_sensitivity(
    sensitivity: dict[str, float], sizes: dict[str, int], budget: int
) -> dict[str, int]:
    """Per-site budgets summing to exactly ``budget``: each site keeps a fraction
    ``min(1, c * sensitivity)`` of its ``sizes[name]`` ReLUs, ``c`` found by bisection, then
    rounded by largest remainder (never above a site's size)."""
    total = sum(sizes.values())
    if not 0 <= budget <= total:
        raise BudgetError(f"budget {budget:,} is outside 0..{total:,} (the model's ReLU count)")
    floor = 1e-12  # a site that never mattered on the calibration batches still ranks
    sens = {n: max(float(sensitivity.get(n, 0.0)), floor) for n in sizes}

    def kept(c: float) -> float:
        return sum(min(1.0, c * sens[n]) * sizes[n] for n in sizes)

    low, high = 0.0, 1.0
    while kept(high) < budget:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if kept(mid) < budget else (low, mid)
    shares = {n: min(1.0, high * sens[n]) * sizes[n] for n in sizes}
    counts = {n: min(sizes[n], int(shares[n])) for n in sizes}
    left = budget - sum(counts.values())
    for n in sorted(sizes, key=lambda n: (counts[n] - shares[n], n)):
        if left <= 0:
            break
        if counts[n] < sizes[n]:
            counts[n] += 1
            left -= 1
    while left > 0:  # rounding left room only where sites are not full
        n = next(n for n in sizes if counts[n] < sizes[n])
        take = min(left, sizes[n] - counts[n])
        counts[n] += take
        left -= take
    return counts
