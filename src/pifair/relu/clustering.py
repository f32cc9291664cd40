"""Groups of activations whose signs agree on a calibration set (ReLU sharing by clustering).

Each element of a site's feature map has a sign pattern over N calibration samples. Prototypes
are chosen by farthest-point sampling in Hamming distance between patterns; every element
joins its nearest prototype and copies that prototype's sign decision (the ``representative``
rule with the prototypes as representatives).
"""

from __future__ import annotations

import torch

__all__ = ["sign_patterns", "farthest_point_order", "cluster_groups"]


def sign_patterns(x: torch.Tensor) -> torch.Tensor:
    """(E, N) 0/1 float patterns of a (N, *feature_shape) batch of pre-activations."""
    return (x.flatten(1) > 0).T.float()


def _hamming_to(patterns: torch.Tensor, index: int, ones: torch.Tensor) -> torch.Tensor:
    """Hamming distance of every 0/1 pattern to pattern ``index``, as one matrix-vector
    product (|a| + |b| - 2 a.b): several times faster than comparing element by element."""
    p = patterns[index]
    return ones + ones[index] - 2 * (patterns @ p)


def farthest_point_order(patterns: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` prototypes by farthest-point sampling (starting at the element whose
    sign is most balanced, i.e. the most informative comparison)."""
    n = patterns.shape[0]
    k = min(k, n)
    balance = (patterns.mean(1) - 0.5).abs()
    ones = patterns.sum(1)
    order = [int(balance.argmin())]
    dist = _hamming_to(patterns, order[0], ones)
    for _ in range(1, k):
        nxt = int(dist.argmax())
        order.append(nxt)
        dist = torch.minimum(dist, _hamming_to(patterns, nxt, ones))
    return torch.tensor(order, dtype=torch.long)


def cluster_groups(
    patterns: torch.Tensor,
    prototypes: torch.Tensor,
    feature_shape: tuple[int, ...],
    *,
    chunk: int = 4096,
) -> torch.Tensor:
    """Group index of each element: its nearest prototype (Hamming), shaped ``feature_shape``.

    Group ``g`` is prototype ``prototypes[g]``, so the prototypes are the representatives.
    """
    protos = patterns[prototypes]  # (K, N)
    n_samples = patterns.shape[1]
    assign = []
    for i in range(0, patterns.shape[0], chunk):
        block = patterns[i : i + chunk]
        agree = block @ protos.T + (1 - block) @ (1 - protos).T  # matching signs
        assign.append((n_samples - agree).argmin(1))
    groups = torch.cat(assign)
    prototypes = prototypes.to(groups.device)
    groups[prototypes] = torch.arange(
        len(prototypes), device=groups.device
    )  # a prototype is in its own group
    return groups.view(feature_shape)
