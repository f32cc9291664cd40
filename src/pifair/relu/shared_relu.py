"""ReLU sharing: one sign decision serves a group of activations (docs/reductions.md).

``out = x * step(d_group)``: each group compares once (one DReLU) and every member copies the
bit. Groups are given by an index map over the per-sample feature shape, so every grouping is
the same site: spatial patches per channel (Helbitz & Avidan 2021; Block-ReLU, Gorski et al.
2023), channel groups at the same pixel, or any clustering. Decision rules: the sign of the
group mean (Block-ReLU), of a representative member, or of a learned linear combination.
Gradients flow through ``x``; the step bit is a constant.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from .clustering import cluster_groups, farthest_point_order
from .sites import SharedReLUSite, register_site

__all__ = ["SharedReLU", "patch_groups", "channel_groups", "grouping_options", "RULES"]

RULES = ("mean", "representative", "learned")
# (name, group index map, representatives or None, patch size or None)
GroupingOption = tuple[str, torch.Tensor, torch.Tensor | None, tuple[int, int] | None]


def patch_groups(feature_shape: tuple[int, ...], patch: tuple[int, int]) -> torch.Tensor:
    """Group index of each element: ``bh x bw`` spatial patches within each channel (edge
    patches are smaller). For 1-D features, runs of ``bh * bw`` consecutive units."""
    if len(feature_shape) == 1:
        size = patch[0] * patch[1]
        return torch.arange(feature_shape[0]) // size
    c, h, w = feature_shape
    bh, bw = patch
    if bh < 1 or bw < 1:
        raise ConfigError(f"patch sizes must be >= 1, got {patch}")
    ph, pw = math.ceil(h / bh), math.ceil(w / bw)
    rows = (torch.arange(h) // bh).view(1, h, 1)
    cols = (torch.arange(w) // bw).view(1, 1, w)
    chans = torch.arange(c).view(c, 1, 1)
    return chans * (ph * pw) + rows * pw + cols


def channel_groups(feature_shape: tuple[int, ...], size: int) -> torch.Tensor:
    """Group index: ``size`` consecutive channels at the same pixel share a decision."""
    if len(feature_shape) == 1:
        return torch.arange(feature_shape[0]) // size
    c, h, w = feature_shape
    if size < 1:
        raise ConfigError(f"channel group size must be >= 1, got {size}")
    pixel = torch.arange(h * w).view(1, h, w)
    return (torch.arange(c).view(c, 1, 1) // size) * (h * w) + pixel


@register_site
class SharedReLU(SharedReLUSite):
    """``x * step(d_g)`` with ``d_g`` the rule applied to group ``g``'s members.

    ``groups`` maps each element of the per-sample feature shape to a group id in
    ``[0, G)``; ``G`` is the site's comparison count.
    """

    kind = "shared_relu"
    # buffers (read by the engines' lowerings): each element's group id, the group sizes, the
    # representative member of each group, and the elements that stay linear (no group)
    groups: torch.Tensor
    sizes: torch.Tensor
    representatives: torch.Tensor
    linear: torch.Tensor
    weight: nn.Parameter | None  # the learned rule's per-element weights

    def __init__(
        self,
        groups: torch.Tensor,
        *,
        rule: str = "mean",
        representatives: torch.Tensor | None = None,
        patch: tuple[int, int] | None = None,
    ) -> None:
        """``groups`` < 0 marks an element that stays linear (the identity, no decision): the
        positions an SNL mask linearized, when sharing composes with linearization."""
        super().__init__()
        if rule not in RULES:
            raise ConfigError(f"unknown decision rule {rule!r}; choose one of {list(RULES)}")
        groups = torch.as_tensor(groups, dtype=torch.long)
        linear = groups < 0
        if bool(linear.all()):
            raise ConfigError("a shared ReLU site needs at least one non-linear element")
        ids = torch.unique(groups[~linear])
        # compact arbitrary ids (e.g. from clustering) to 0..G-1; a linear element reads group
        # 0's bit, then is passed through (its member weight is 0 in every decision)
        groups = torch.where(linear, 0, torch.searchsorted(ids, groups))
        # patch groupings with the mean rule take a pooling fast path (same bits, no scatter)
        self.patch = (
            tuple(patch) if patch is not None and groups.dim() == 3 and not linear.any() else None
        )
        self.rule = rule
        self.feature_shape = tuple(groups.shape)
        self.register_buffer("groups", groups)
        self.register_buffer("linear", linear)
        flat, kept = groups.flatten(), ~linear.flatten()
        self.register_buffer("sizes", torch.bincount(flat[kept], minlength=len(ids)).float())
        if representatives is None or linear.any():  # the first kept member of each group
            members = torch.nonzero(kept).flatten()
            order = members[torch.argsort(flat[members], stable=True)]
            counts = torch.bincount(flat[members], minlength=len(ids))
            representatives = order[torch.cumsum(counts, 0) - counts]
        self.register_buffer("representatives", torch.as_tensor(representatives, dtype=torch.long))
        self.weight = (
            nn.Parameter(torch.where(linear, 0.0, 1.0 / self.sizes[groups]))
            if rule == "learned"
            else None
        )
        self.temperature = 0.1  # of the straight-through surrogate (learned rule only)

    @property
    def num_decisions(self) -> int:
        return len(self.sizes)

    def num_groups(self, feature_shape: tuple[int, ...] | None = None) -> int:
        return self.num_decisions

    def decisions(self, x: torch.Tensor) -> torch.Tensor:
        """The per-group decision value ``d`` (batch, G)."""
        flat = x.flatten(1)
        idx = self.groups.flatten()
        if self.rule == "representative":
            return flat[:, self.representatives]
        if self.weight is not None:  # the learned rule
            flat = flat * self.weight.flatten().to(flat.dtype)
        elif bool(self.linear.any()):  # linear elements are in no group
            flat = flat * (~self.linear.flatten()).to(flat.dtype)
        sums = torch.zeros(
            flat.shape[0], self.num_decisions, dtype=flat.dtype, device=flat.device
        ).index_add(1, idx, flat)
        return sums / self.sizes.to(flat.dtype) if self.rule == "mean" else sums

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record_shape(x)
        if self.patch is not None and self.rule == "mean" and x.dim() == 4:
            return x * self._patch_bits(x)
        if self.rule == "learned" and self.training:
            # the weights learn through a sigmoid straight-through surrogate of the step; x
            # enters the decision detached, so its own gradient still sees a constant bit
            d = self.decisions(x.detach())
            soft = torch.sigmoid(d / self.temperature)
            bits = (d > 0).to(x.dtype) + (soft - soft.detach()).to(x.dtype)
        else:
            bits = (self.decisions(x) > 0).to(x.dtype).detach()  # the step bit: constant
        per_element = bits[:, self.groups.flatten()]
        if bool(self.linear.any()):  # the identity where the site stays linear
            per_element = torch.where(self.linear.flatten(), 1.0, per_element)
        return x * per_element.view_as(x)

    def _patch_bits(self, x: torch.Tensor) -> torch.Tensor:
        """Bits of patch groups by pooling: the sign of a patch's average is that of its mean,
        whatever the divisor of the smaller edge patches."""
        assert self.patch is not None  # forward takes this path for patch groupings only
        bh, bw = self.patch
        if (bh, bw) == (1, 1):
            return (x.detach() > 0).to(x.dtype)
        h, w = x.shape[-2:]
        pooled = torch.nn.functional.avg_pool2d(x.detach(), (bh, bw), ceil_mode=True)
        bits = (pooled > 0).to(x.dtype).repeat_interleave(bh, dim=2).repeat_interleave(bw, dim=3)
        return bits[..., :h, :w]

    def spec(self) -> dict:
        return {
            "kind": self.kind,
            "rule": self.rule,
            "feature_shape": list(self.feature_shape or ()),
            "num_groups": self.num_decisions,
            "patch": list(self.patch) if self.patch else None,
        }

    @classmethod
    def from_spec(cls, spec: dict) -> SharedReLU:
        # the group map, sizes, representatives and linear elements are buffers: the state
        # dict restores them (older models saved no linear buffer: none of theirs is linear)
        shape = tuple(spec["feature_shape"])
        groups = torch.arange(math.prod(shape)).view(shape) % spec["num_groups"]
        return cls(groups, rule=spec["rule"], patch=spec.get("patch"))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "linear", torch.zeros_like(self.linear))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def grouping_options(
    feature_shape: tuple[int, ...],
    scheme: str,
    *,
    patterns: torch.Tensor | None = None,
    max_clusters: int = 1024,
) -> list[GroupingOption]:
    """Candidate groupings of one site, from plain ReLU (one element per group) to coarse:
    ``(name, group index map, representatives or None, patch size or None)``.

    ``cluster`` needs the site's sign ``patterns`` (:func:`pifair.relu.clustering.sign_patterns`)
    and offers ``max_clusters``, half that, ... down to one prototype.
    """
    if scheme not in ("patch", "channel", "cluster"):
        raise ConfigError(f"unknown sharing scheme {scheme!r}; choose patch, channel or cluster")
    elements = math.prod(feature_shape)
    first_patch = (1, 1) if len(feature_shape) == 3 else None
    options: list[tuple] = [("1x1", torch.arange(elements).view(feature_shape), None, first_patch)]
    if scheme == "cluster":
        if patterns is None:
            raise ConfigError("the cluster scheme needs sign patterns from a calibration set")
        k = min(max_clusters, elements // 2)
        order = farthest_point_order(patterns, k) if k else torch.zeros(0, dtype=torch.long)
        while k >= 1:
            options.append(
                (
                    f"{k} clusters",
                    cluster_groups(patterns, order[:k], feature_shape),
                    order[:k],
                    None,
                )
            )
            k //= 2
        return options
    if len(feature_shape) == 1 or scheme == "channel":
        limit, size = feature_shape[0], 2
        while size < limit:
            options.append((f"{size}", channel_groups(feature_shape, size), None, None))
            size *= 2
        if limit > 1:
            options.append((f"{limit}", channel_groups(feature_shape, limit), None, None))
        return options
    _, h, w = feature_shape
    for bh, bw in [(1, 2), (2, 2), (2, 4), (4, 4), (4, 8), (8, 8), (16, 16)]:
        if bh < h and bw < w:
            options.append((f"{bh}x{bw}", patch_groups(feature_shape, (bh, bw)), None, (bh, bw)))
    options.append(
        (f"{h}x{w}", patch_groups(feature_shape, (h, w)), None, (h, w))
    )  # one decision per channel
    return options
