"""Per-sample gradients through torch.func (vmap over grad), without Opacus.

Used for analysis: the fairness audit's gradient norms and the DP misalignment diagnostics.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["iter_per_sample_grads"]


def iter_per_sample_grads(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, chunk: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Per chunk of ``chunk`` samples: each trainable parameter's cross-entropy gradients,
    one row per sample (the model runs as it is: put it in eval mode for batch norm)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    for i in range(0, len(x), chunk):
        yield per_sample(params, x[i : i + chunk], y[i : i + chunk])
