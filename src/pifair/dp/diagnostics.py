"""Per-group gradient misalignment (Esipova et al. 2023): how clipping bends each group's step.

For the samples of group k in a batch, the unclipped mean gradient g_k = mean_i g_i and the
released (clipped, before noise) mean c_k = mean_i s_i g_i. The direction error is
cos(g_k, c_k) (1 = aligned) and the magnitude error |c_k| / |g_k|. Per-sample gradients come
from torch.func here, apart from either Opacus path, so the diagnostic does not depend on the
path it checks. These values are computed on private data and are not themselves private:
they are for analysing a method, not for release.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..fairness.audit import minority_gap
from ..training.per_sample import iter_per_sample_grads

__all__ = [
    "per_sample_grads",
    "GroupAlignment",
    "group_alignment",
    "privacy_cost",
    "privacy_cost_summary",
]


def per_sample_grads(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, chunk: int = 128
) -> torch.Tensor:
    """(N, P) per-sample cross-entropy gradients over the trainable parameters, flattened."""
    rows = [
        torch.cat([t.flatten(1) for t in grads.values()], dim=1)
        for grads in iter_per_sample_grads(model, x, y, chunk=chunk)
    ]
    return torch.cat(rows)


@dataclass
class GroupAlignment:
    group: int
    count: int
    cosine: float  # direction error: cos(unclipped mean, clipped mean)
    norm_ratio: float  # magnitude error: |clipped mean| / |unclipped mean|


def group_alignment(
    grads: torch.Tensor, factors: torch.Tensor, groups: torch.Tensor
) -> list[GroupAlignment]:
    """Direction and magnitude error of every group present in the batch."""
    out = []
    for k in torch.unique(groups).tolist():
        mask = groups == k
        g = grads[mask]
        s = factors[mask].to(g.dtype)
        raw = g.mean(0)
        clipped = (s[:, None] * g).mean(0)
        cos = F.cosine_similarity(raw, clipped, dim=0, eps=1e-12).clamp(-1.0, 1.0)
        ratio = clipped.norm() / raw.norm().clamp(min=1e-12)
        out.append(
            GroupAlignment(
                group=int(k),
                count=int(mask.sum()),
                cosine=float(cos),
                norm_ratio=float(ratio),
            )
        )
    return out


def privacy_cost(nonprivate: dict[str, float], private: dict[str, float]) -> dict[str, float]:
    """pi_g = acc_nonprivate,g - acc_private,g for every group both dicts hold."""
    return {g: nonprivate[g] - private[g] for g in private if g in nonprivate}


def privacy_cost_summary(nonprivate: dict, private: dict, minority: set[str]) -> dict:
    """Each group's privacy cost and the gaps, each named for what it is.

    ``nonprivate`` and ``private`` are two runs' test metrics (``GroupMetrics.as_dict()``).
    Costs: on accuracy, ``acc_nonprivate,g - acc_private,g`` (points lost); on loss,
    ``loss_private,g - loss_nonprivate,g`` (it does not saturate when a group is near 0 %
    already). Gaps: the **minority-majority gap** (the minority groups' mean cost minus the
    majority's, weighted by test size, and unweighted) and the **max-min spread** over all
    groups (which any one hard group can drive).
    """
    base = {g["name"]: g for g in nonprivate["groups"]}
    groups = [g for g in private["groups"] if g["name"] in base]
    names = [g["name"] for g in groups]
    counts = [int(g["count"]) for g in groups]
    flags = [name in minority for name in names]
    accuracy = privacy_cost(
        {n: g["accuracy"] for n, g in base.items()}, {g["name"]: g["accuracy"] for g in groups}
    )
    out: dict = {
        "privacy_cost": accuracy,
        "privacy_cost_max_min_spread": max(accuracy.values()) - min(accuracy.values()),
        "minority_groups": [n for n, f in zip(names, flags, strict=True) if f],
    }
    costs = {"": accuracy}
    if all(g.get("loss") is not None and base[g["name"]].get("loss") is not None for g in groups):
        loss = {g["name"]: g["loss"] - base[g["name"]]["loss"] for g in groups}
        costs["_loss"] = loss
        out["privacy_cost_loss"] = loss
        out["privacy_cost_loss_max_min_spread"] = max(loss.values()) - min(loss.values())
    for suffix, cost in costs.items():
        values = [cost[n] for n in names]
        key = f"privacy_cost{suffix}_minority_majority_gap"
        out[key] = minority_gap(values, counts, flags, weighted=True)
        out[key + "_unweighted"] = minority_gap(values, counts, flags, weighted=False)
    return out
