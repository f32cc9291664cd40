"""ReLU counts per site, exact on any model: the first question a user asks.

:func:`count_relus` runs one forward pass that records every non-linear call
(:mod:`pifair.relu.calls`). When the model still has ReLU calls that are not sites (a plain
PyTorch model, an ``F.relu`` in a forward) or a site applied twice, it counts a converted copy
(:func:`pifair.relu.convert.convert_activations`) and says so. Non-linear layers that no pifair
reduction touches (ReLU6, GELU, max pooling, ...) are listed by name beside the sites, never
counted as ReLUs; a count of 0 always comes with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError, UnsupportedLayerError
from .calls import CallRecord, NonlinearCall, record_calls
from .convert import convert_activations, trace
from .sites import FeatureShape, iter_sites

__all__ = ["SiteCount", "ReluCount", "count_relus", "record_feature_shapes"]


@dataclass(frozen=True)
class SiteCount:
    """One row of :class:`ReluCount`: a site, its feature shape, its comparisons."""

    name: str
    kind: str
    feature_shape: FeatureShape
    elements: int
    relus: int


@dataclass(frozen=True)
class ReluCount:
    """Comparisons per sample of a model, in total and per site, plus the non-linear layers a
    reduction does not touch (``untouched``) and a note when the count needs one."""

    total: int
    sites: list[SiteCount] = field(default_factory=list)
    untouched: list[NonlinearCall] = field(default_factory=list)
    note: str = ""

    @property
    def elements(self) -> int:
        """Elements that pass through an activation site (the dense count)."""
        return sum(s.elements for s in self.sites)

    def table(self) -> str:
        """The per-layer table as aligned text."""
        rows = [("site", "kind", "shape", "elements", "relus")]
        rows += [
            (s.name, s.kind, "x".join(map(str, s.feature_shape)), f"{s.elements:,}", f"{s.relus:,}")
            for s in self.sites
        ]
        rows.append(("total", "", "", f"{self.elements:,}", f"{self.total:,}"))
        untouched = [
            (
                c.module or "<forward>",
                c.op,
                "x".join(map(str, c.feature_shape)),
                f"{c.elements:,}",
                "not reduced",
            )
            for c in self.untouched
        ]
        widths = [max(len(r[i]) for r in rows + untouched) for i in range(5)]

        def line(r: tuple[str, ...]) -> str:
            return "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
            )

        lines = [line(r) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        if untouched:
            lines += ["", "other non-linear layers (no pifair reduction touches them):"]
            lines += [line(r) for r in untouched]
        if self.note:
            lines += ["", f"note: {self.note}"]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "elements": self.elements,
            "sites": [s.__dict__ | {"feature_shape": list(s.feature_shape)} for s in self.sites],
            "untouched": [
                {"module": c.module, "op": c.op, "feature_shape": list(c.feature_shape)}
                for c in self.untouched
            ],
            "note": self.note,
        }

    def __str__(self) -> str:
        return self.table()


def record_feature_shapes(model: nn.Module, input_shape: Sequence[int]) -> CallRecord:
    """Run one zero sample through ``model`` so each site learns its shape; refuse a model
    whose sites do not cover its ReLUs (a count or a mask on it would be wrong)."""
    calls = record_calls(model, input_shape)
    if not calls.exact:
        raise UnsupportedLayerError(
            f"{type(model).__name__}: {calls.problem()}; convert it first: "
            "model = pifair.convert_activations(model)"
        )
    return calls


def count_relus(model: nn.Module, input_shape: Sequence[int] | None = None) -> ReluCount:
    """Exact number of comparisons per sample of ``model``, with a per-site table.

    ``input_shape`` is the per-sample input shape, e.g. ``(3, 32, 32)``; with it, one forward
    pass records each site's feature shape and every other non-linear call, and a model with
    plain torch ReLUs is counted on a converted copy. A model torch.fx cannot trace is refused
    (:class:`~pifair.relu.convert.UntraceableModelError`): Python control flow on tensor values
    could apply ReLUs that one forward pass does not show. Without it, every site must already know
    its shape (it has seen an input, or was built with one).

    Examples
    --------
    >>> import pifair
    >>> model = pifair.create_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    >>> count = pifair.count_relus(model, (1, 28, 28))
    >>> count.total, [s.relus for s in count.sites]
    (18944, [12544, 6272, 128])
    """
    note = ""
    untouched: list[NonlinearCall] = []
    if input_shape is not None:
        trace(model)  # control flow on tensor values could hide ReLUs from one forward pass
        calls = record_calls(model, input_shape)
        if not calls.exact:
            note = f"counted on a converted copy ({calls.problem()} in the model as given)"
            model = convert_activations(model)
            calls = record_feature_shapes(model, input_shape)
        untouched = calls.others
    elif not iter_sites(model) and any(type(m) is nn.ReLU for m in model.modules()):
        raise ConfigError(
            "the model has plain torch ReLUs; pass input_shape=(C, H, W) to count_relus so that "
            "it can convert and count them"
        )
    rows = []
    for name, site in iter_sites(model):
        if site.feature_shape is None:
            raise ConfigError(
                f"site {name!r} has not seen an input yet; pass input_shape=(C, H, W) to "
                "count_relus"
            )
        shape = site.feature_shape
        rows.append(SiteCount(name, site.kind, shape, math.prod(shape), site.relu_count(shape)))
    total = sum(r.relus for r in rows)
    if total == 0 and not note:
        if untouched:
            kinds = sorted({c.op for c in untouched})
            note = f"no ReLU; its non-linear layers ({', '.join(kinds)}) are not ReLUs"
        elif rows:
            note = "no comparison: every activation site is linear, polynomial or smooth"
        elif input_shape is not None:
            note = "no ReLU and no other non-linear layer: the model is linear"
        else:
            note = "no activation site; pass input_shape to find and count plain torch ReLUs"
    return ReluCount(total=total, sites=rows, untouched=untouched, note=note)
