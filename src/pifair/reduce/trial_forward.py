"""Forward passes on one fixed batch where only one activation site differs from the last full
pass: the nodes of the model's graph that do not depend on that site keep their values.

The sharing allocation (:mod:`pifair.reduce.share`) scores every site's next grouping with a
forward pass on the same calibration batch, one site changed at a time. A site in the middle of
a network leaves everything before it unchanged, so recomputing only its downstream nodes
halves the work on average. torch.fx's ``Interpreter`` runs a graph from a partly filled
environment but has no notion of which values a change makes stale, nor of in-place operations
that would overwrite a value kept for the next pass (``out += identity`` in a residual block):
that bookkeeping is what this module adds. The values are the same bits as a full forward
(same kernels, same inputs); :meth:`TrialForward.full` is the check.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn

from ..relu.convert import trace

__all__ = ["TrialForward"]

_INPLACE_OPERATORS = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ifloordiv,
    operator.imod,
    operator.ipow,
    operator.iand,
    operator.ior,
    operator.ixor,
}


def _mutates_input(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` may write into its first argument (in-place operators, ``x.add_``,
    ``F.relu(x, inplace=True)``, a module with ``inplace=True``)."""
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target in _INPLACE_OPERATORS or (
            name.endswith("_") and not name.startswith("_")
        )
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("_")
    if node.op == "call_module":
        module = modules.get(str(node.target))
        return bool(getattr(module, "inplace", False))
    return False


class _Runner(fx.Interpreter):
    """An interpreter that hands in-place nodes a copy of the value they would overwrite."""

    def __init__(self, module: nn.Module, graph: fx.Graph, mutating: set[fx.Node]) -> None:
        super().__init__(module, garbage_collect_values=False, graph=graph)
        self.mutating = mutating

    def run_node(self, n: fx.Node) -> Any:
        if n not in self.mutating:
            return super().run_node(n)
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            if args and isinstance(args[0], torch.Tensor):
                args = (args[0].clone(), *args[1:])
            return getattr(self, n.op)(n.target, args, kwargs)


class TrialForward:
    """``model`` on the fixed input ``x``: :meth:`full` computes and keeps every node's value;
    :meth:`with_site_changed` recomputes only what depends on one site (swapped into ``model``
    since the last :meth:`full`) and returns the output.

    The sites must be swapped in place (:func:`pifair.relu.sites.swap_sites`): the graph calls
    them by name, so it runs whatever module holds that name now.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model, self.x = model, x
        self.graph = trace(model)
        modules = dict(model.named_modules())
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        mutating = {n for n in self.graph.nodes if _mutates_input(n, modules)}
        # an in-place node whose target is read again afterwards (``a.add_(b); f(a)``): the
        # graph relies on the mutation, so kept values cannot be trusted -- full passes only.
        # Otherwise (``a = a + b`` traced as ``iadd``, ``relu_``) the target is read by no one
        # later, and the mutation runs on a copy so that the kept value stays as computed.
        self.partial = not any(
            isinstance(m.args[0], fx.Node)
            and any(order[u] > order[m] for u in m.args[0].users if u is not m)
            for m in mutating
            if m.args
        )
        self.mutating = mutating if self.partial else set()
        self.values: dict[fx.Node, Any] = {}
        self._downstream: dict[str, set[fx.Node]] = {}  # per site: the graph does not change

    @torch.no_grad()
    def full(self) -> Any:
        """The output of a full pass; every node's value is kept for the trials."""
        runner = _Runner(self.model.eval(), self.graph, self.mutating)
        out = runner.run(self.x)
        self.values = dict(runner.env) if self.partial else {}
        return out

    def _stale(self, site: str) -> set[fx.Node]:
        """The nodes whose value depends on the call of ``site`` (found once per site)."""
        if site in self._downstream:
            return self._downstream[site]
        start = [n for n in self.graph.nodes if n.op == "call_module" and n.target == site]
        stale, todo = set(start), list(start)
        while todo:
            for user in todo.pop().users:
                if user not in stale:
                    stale.add(user)
                    todo.append(user)
        self._downstream[site] = stale
        return stale

    @torch.no_grad()
    def with_site_changed(self, site: str) -> Any:
        """The output with ``site`` as it is now in the model, the rest as in the last
        :meth:`full` pass (a full pass when none was made or the site is not in the graph)."""
        stale = self._stale(site)
        if not self.partial or not self.values or not stale:
            return _Runner(self.model.eval(), self.graph, self.mutating).run(self.x)
        kept = {n: v for n, v in self.values.items() if n not in stale}
        runner = _Runner(self.model.eval(), self.graph, self.mutating)
        return runner.run(self.x, initial_env=kept)
