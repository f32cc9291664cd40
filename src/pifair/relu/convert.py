"""Any PyTorch model as a model of activation sites, by its graph (torch.fx), not its modules.

:func:`convert_activations` traces the model and gives every ReLU *call* a site of its own:
an ``nn.ReLU`` module (in place or not), the same module applied at two places (each call its
own site), ``F.relu``, ``torch.relu``, ``Tensor.relu`` / ``relu_``. Plain ``nn.Tanh`` modules
and tanh calls become :class:`~pifair.relu.sites.DenseTanh` sites. Everything else of the model
(its other layers, their names and weights) stays as it is, so a state dict of the original
loads into the converted model key for key.

Site names: an ``nn.ReLU`` module's first call keeps the module's name (``layer1.0.relu``),
its later calls get ``_2``, ``_3`` (``layer1.0.relu_2``); a functional call is named after the
module whose ``forward`` made it (``features.relu``, or ``relu`` in the model's own forward).
Conversion is deterministic, so rebuilding an architecture and converting it again gives the
same names: that is how saved models come back (``pifair.models.io``).

A model that torch.fx cannot trace is refused with the module where tracing stopped; nothing is
ever counted on a model whose ReLUs the graph does not show.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import UnsupportedLayerError
from .calls import record_calls
from .sites import ActivationSite, DenseReLU, DenseTanh, swap_sites

__all__ = [
    "UntraceableModelError",
    "as_site_model",
    "convert_activations",
    "replace_activations",
    "trace",
]

_RELU_FUNCTIONS: dict[Callable, bool] = {  # function -> always in place
    F.relu: False,
    torch.relu: False,
    torch.relu_: True,
    F.relu_: True,
}
_TANH_FUNCTIONS: tuple[Callable, ...] = (torch.tanh, F.tanh)
_PLAIN_SITE_TYPES: tuple[type[ActivationSite], ...] = (DenseReLU, DenseTanh)


class UntraceableModelError(UnsupportedLayerError):
    """torch.fx cannot trace the model, so its ReLU calls cannot be found and counted."""


class _ActivationTracer(fx.Tracer):
    """Sites and torch's own layers stay single nodes; each node remembers the module whose
    forward created it (``node.meta["pifair_module"]``), to name functional sites."""

    def __init__(self) -> None:
        super().__init__()
        self.module_path: list[str] = [""]
        self.failed_in: str | None = None  # the innermost module whose forward raised

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, ActivationSite) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Callable, args: Any, kwargs: Any) -> Any:
        self.module_path.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.module_path[-1]
            raise
        finally:
            self.module_path.pop()

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta["pifair_module"] = self.module_path[-1]
        return node


def trace(model: nn.Module) -> fx.Graph:
    """The fx graph of ``model`` (sites as leaves), or :class:`UntraceableModelError` naming the
    module where tracing failed and what to do."""
    tracer = _ActivationTracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:  # torch.fx raises TraceError, TypeError, AttributeError, ...
        where = tracer.failed_in or ""
        module = model.get_submodule(where) if where else model
        last = [n.name for n in tracer.graph.nodes] if hasattr(tracer, "graph") else []
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UntraceableModelError(
            f"torch.fx cannot trace {type(model).__name__}: it failed in module "
            f"{where or '<the model forward>'!r} ({type(module).__name__}) after node "
            f"{(last[-1] if last else '<none>')!r}: {type(err).__name__}: {first_line}. pifair "
            "finds and counts ReLUs on the traced graph; make that forward traceable (no Python "
            "control flow on tensor values) or make that module an nn.Module leaf"
        ) from None
    return graph


def _relu_call(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, bool] | None:
    """``(kind, in_place)`` when ``node`` computes a ReLU or tanh that should be a site."""
    if node.op == "call_module":
        module = modules[str(node.target)]
        if type(module) is nn.ReLU:
            return "relu", bool(module.inplace)
        if type(module) is nn.Tanh:
            return "tanh", False
        return None
    if node.op == "call_function":
        if node.target in _RELU_FUNCTIONS:
            inplace = _RELU_FUNCTIONS[node.target] or bool(
                node.kwargs.get("inplace", node.args[1] if len(node.args) > 1 else False)
            )
            return "relu", inplace
        if node.target in _TANH_FUNCTIONS:
            return "tanh", False
        return None
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu", node.target == "relu_"
    if node.op == "call_method" and node.target in ("tanh", "tanh_"):
        return "tanh", node.target == "tanh_"
    return None


def _free_name(wanted: str, taken: set[str]) -> str:
    """``wanted`` or ``wanted_2``, ``wanted_3``, ... whichever is not taken yet."""
    name, k = wanted, 2
    while name in taken:
        name, k = f"{wanted}_{k}", k + 1
    taken.add(name)
    return name


def _needs_graph(graph: fx.Graph, modules: dict[str, nn.Module]) -> bool:
    uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[str(node.target)], ActivationSite):
            uses[str(node.target)] = uses.get(str(node.target), 0) + 1
        elif _relu_call(node, modules) is not None:
            return True
    return any(n > 1 for n in uses.values())


def convert_activations(model: nn.Module, input_shape: Sequence[int] | None = None) -> nn.Module:
    """A copy of ``model`` in which every ReLU call is an activation site of its own.

    A model whose ReLUs are all sites, each applied once, comes back as a plain copy (no graph
    module). With ``input_shape``, the converted model is checked against the original on a
    random input (same outputs, every ReLU call a site). Refused: a model torch.fx cannot trace
    (:class:`UntraceableModelError`), and a reduced site (masked, shared, polynomial) applied
    at two places, whose one mask cannot serve two calls.

    Examples
    --------
    >>> import torch, pifair
    >>> class Block(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.relu = torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU()
    ...     def forward(self, x):
    ...         return torch.nn.functional.relu(self.conv(self.relu(x))) + self.relu(x)
    >>> converted = pifair.convert_activations(Block(), (1, 4, 4))
    >>> [name for name, _ in pifair.relu.iter_sites(converted)]
    ['relu', 'relu_2', 'relu_3']
    """
    source = copy.deepcopy(model)
    # traced in eval mode: Python branches on self.training (auxiliary heads, as GoogLeNet's)
    # take their inference path; layers such as batch norm and dropout stay leaves and keep
    # switching with train() / eval()
    source.eval()
    graph = trace(source)
    modules = dict(source.named_modules())
    if not _needs_graph(graph, modules):
        converted: nn.Module = source
    else:
        converted = _convert_graph(source, graph, modules)
    converted.train(model.training)
    if input_shape is not None:
        _check_conversion(model, converted, tuple(input_shape))
    return converted


def _convert_graph(
    source: nn.Module, graph: fx.Graph, modules: dict[str, nn.Module]
) -> fx.GraphModule:
    taken = set(modules) | {n for n, _ in source.named_parameters()}
    taken |= {n for n, _ in source.named_buffers()}
    new_sites: dict[str, ActivationSite] = {}
    seen_modules: set[str] = set()
    order = {node: i for i, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        found = _relu_call(node, modules)
        is_site = node.op == "call_module" and isinstance(modules[str(node.target)], ActivationSite)
        if found is None and not is_site:
            continue
        if node.op == "call_module":
            target = str(node.target)
            if target not in seen_modules:  # first call: the site takes the module's name
                seen_modules.add(target)
                if is_site:
                    continue
                name = target
            else:
                if is_site and not isinstance(modules[target], _PLAIN_SITE_TYPES):
                    raise UnsupportedLayerError(
                        f"activation site {target!r} ({type(modules[target]).__name__}) is "
                        "applied at more than one place; its one mask cannot serve two calls. "
                        "Convert the dense model (pifair.convert_activations) before reducing it"
                    )
                name = _free_name(target, taken)
        kind, inplace = found if found is not None else (str(modules[str(node.target)].kind), False)
        if node.op != "call_module":  # a function or method call: named after its module
            parent = node.meta.get("pifair_module", "")
            name = _free_name(f"{parent}.{kind}" if parent else kind, taken)
        new_sites[name] = DenseReLU() if kind == "relu" else DenseTanh()
        x = node.args[0]
        with graph.inserting_before(node):
            site_node = graph.call_module(name, (x,))
        site_node.meta = dict(node.meta)
        node.replace_all_uses_with(site_node)
        graph.erase_node(node)
        if inplace and isinstance(x, fx.Node):
            # an in-place ReLU changed its input: later readers of the input see the ReLU's
            # output, as they did in the original model
            for user in list(x.users):
                if user is not site_node and order.get(user, -1) > order[node]:
                    user.replace_input_with(x, site_node)
    for name, site in new_sites.items():  # into the (copied) source, where fx looks for them
        parent, _, child = name.rpartition(".")
        holder = source.get_submodule(parent) if parent else source
        holder._modules[child] = site  # overwrites a plain nn.ReLU of the same name
    converted = fx.GraphModule(source, graph, class_name=type(source).__name__)
    converted.delete_all_unused_submodules()
    converted.recompile()
    return converted


def _check_conversion(original: nn.Module, converted: nn.Module, input_shape: tuple) -> None:
    """The converted model computes what the original does, and every ReLU call is a site."""
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    was = original.training, converted.training
    original.eval()
    converted.eval()
    try:
        with torch.no_grad():
            want, got = original(x.clone()), converted(x.clone())
    finally:
        original.train(was[0])
        converted.train(was[1])
    if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
        raise UnsupportedLayerError(
            f"{type(original).__name__} returns {type(want).__name__}, not a tensor of logits; "
            "pifair runs classifiers whose forward returns one tensor"
        )
    scale = max(1.0, float(want.abs().max()))
    if want.shape != got.shape or float((want - got).abs().max()) > 1e-4 * scale:
        raise UnsupportedLayerError(
            f"converting {type(original).__name__} to activation sites changed its output; "
            "please report this model to pifair"
        )
    calls = record_calls(converted, input_shape)
    if not calls.exact:
        raise UnsupportedLayerError(
            f"{type(original).__name__}: after conversion, {calls.problem()}; the graph does not "
            "show these calls, so they cannot be counted"
        )


def replace_activations(
    model: nn.Module,
    factory: Callable[[str, nn.Module], nn.Module | None] | None = None,
) -> nn.Module:
    """``model`` with its activations as sites: converted by graph when it still has plain
    ReLU calls or a reused site (:func:`convert_activations`, a new model), then, with a
    ``factory``, each site swapped in place (:func:`~pifair.relu.sites.swap_sites`).

    Examples
    --------
    >>> import torch, pifair
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> pifair.count_relus(pifair.replace_activations(model), (4,)).total
    8
    """
    if _has_calls(model):
        model = convert_activations(model)
    return swap_sites(model, factory) if factory is not None else model


def _has_calls(model: nn.Module) -> bool:
    """Whether the traced graph has ReLU calls that are not sites, or a reused site."""
    graph = trace(model)
    return _needs_graph(graph, dict(model.named_modules()))


def as_site_model(model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """A copy of ``model`` in which every ReLU call is a site of its own: a plain copy when it
    already is (no tracing needed), else converted by graph. Reductions start from this."""
    if record_calls(model, input_shape).exact:
        return copy.deepcopy(model)
    return convert_activations(model, input_shape)
