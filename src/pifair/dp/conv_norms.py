"""Per-sample gradient norms of ``nn.Conv2d`` without per-sample gradients (mixed ghost norms).

Opacus' fast gradient clipping has norm samplers for Linear, Embedding and a few norms, but
not for Conv2d: a convolution falls back to instantiating every sample's gradient. For a
sample with unfolded input ``A`` (D = in-channels x kernel, T positions) and output gradient
``G`` (P out-channels, T positions), the weight gradient is ``G A^T`` and

    ||G A^T||_F^2 = sum_{t,s} (A^T A)_{ts} (G^T G)_{ts}

(the ghost norm: two T x T Gram matrices, Li et al. 2021, Bu et al. 2022). It costs about
``T^2 (D + P)`` per sample against ``P D T`` for the instantiated gradient, so each layer takes
the cheaper of the two (mixed ghost clipping, Bu et al. 2022): ghost when ``T (D + P) < P D``.
Groups are handled per group; the bias gradient's norm is that of ``sum_t G``.

Why by hand: Opacus registers no norm sampler for Conv2d; this one is registered in its
``NORM_SAMPLERS`` (:func:`install`), so every method's factors apply through Opacus' ghost path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..extras import require

__all__ = ["conv2d_norm_sample", "ghost_is_cheaper", "install", "unfold"]


def ghost_is_cheaper(positions: int, inputs: int, outputs: int) -> bool:
    """Bu et al.'s rule: Gram matrices over positions (T^2 (D + P)) cost less than the
    per-sample gradient (P D T)."""
    return positions * (inputs + outputs) < inputs * outputs


def unfold(
    a: torch.Tensor,
    kernel: tuple[int, ...],
    *,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """``F.unfold`` as one strided view and one copy: the same (n, C kh kw, T) columns, about
    twice as fast on CPU as im2col (which dominated the ghost path's profile)."""
    a = F.pad(a, (padding[1], padding[1], padding[0], padding[0]))
    n, c, h, w = a.shape
    rows = (h - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    cols = (w - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    sn, sc, sh, sw = a.stride()
    windows = a.as_strided(
        (n, c, kernel[0], kernel[1], rows, cols),
        (sn, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1]),
    )
    return windows.reshape(n, c * kernel[0] * kernel[1], rows * cols)


def _squared_weight_norms(
    layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, ghost: bool | None
) -> torch.Tensor:
    n, groups = len(a), layer.groups
    assert not isinstance(layer.padding, str)  # "same"/"valid" take the instantiated way
    cols = unfold(
        a,
        layer.kernel_size,
        dilation=layer.dilation,
        padding=layer.padding,  # a tuple: str padding is refused above
        stride=layer.stride,
    )  # (n, C_in / groups x kh x kw x groups, T)
    positions = cols.shape[2]
    cols = cols.view(n, groups, -1, positions)
    grads = g.reshape(n, groups, -1, positions)  # (n, groups, P, T)
    if ghost is None:
        ghost = ghost_is_cheaper(positions, cols.shape[2], grads.shape[2])
    if ghost:
        aa = torch.einsum("ngdt,ngds->ngts", cols, cols)
        gg = torch.einsum("ngpt,ngps->ngts", grads, grads)
        return (aa * gg).sum(dim=(1, 2, 3)).clamp(min=0)
    per_sample = torch.einsum("ngpt,ngdt->ngpd", grads, cols)
    return per_sample.pow(2).sum(dim=(1, 2, 3))


def conv2d_norm_sample(
    layer: nn.Conv2d,
    activations: list[torch.Tensor],
    backprops: torch.Tensor,
    *,
    ghost: bool | None = None,
) -> dict[torch.Tensor, torch.Tensor]:
    """Per-sample gradient norms of ``layer``'s parameters (Opacus' norm-sampler signature);
    ``ghost`` forces one way (None: the cheaper)."""
    a = activations[0].to(backprops.dtype)
    out: dict[torch.Tensor, torch.Tensor] = {}  # parameter -> its per-sample norms
    if layer.weight.requires_grad:
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            conv = require("opacus.grad_sample.conv", extra="dp", purpose="DP-SGD")
            per_sample = conv.compute_conv_grad_sample(layer, activations, backprops)
            out[layer.weight] = per_sample[layer.weight].flatten(1).norm(dim=1)
        else:
            out[layer.weight] = _squared_weight_norms(layer, a, backprops, ghost).sqrt()
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dim=(2, 3)).norm(dim=1)
    return out


def install() -> None:
    """Register :func:`conv2d_norm_sample` as Opacus' norm sampler of ``nn.Conv2d`` (idempotent)."""
    grad_sample = require("opacus.grad_sample", extra="dp", purpose="DP-SGD")
    grad_sample.register_norm_sampler(nn.Conv2d)(conv2d_norm_sample)
