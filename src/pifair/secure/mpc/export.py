"""A pifair model as a JAX function over its sites, the form SPU compiles to MPC.

The model is traced with :mod:`torch.fx` (activation sites are leaves), batch norm is folded
into the convolution before it (``torch.nn.utils.fusion``), and every graph node becomes JAX
code. Weights are an argument of the function, not constants: under MPC they are the server's
secret, shared like the client's image. Activation sites are lowered by their kind through
:mod:`pifair.secure.mpc.lowerings` (one lowering per site kind, a registry).

The exported function is checked against the torch model in plain JAX before any MPC run.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ...errors import UnsupportedLayerError
from ...extras import require
from ...relu.sites import ActivationSite, DenseReLU
from .lowerings import LoweringContext, Op, SiteExport, lower_site

__all__ = ["ExportedModel", "SiteExport", "export_model"]

Params = dict[str, np.ndarray]


@dataclass
class ExportedModel:
    """``fn(x, params) -> logits`` in JAX; ``params`` are the model's (folded) weights."""

    fn: Callable
    params: Params
    input_shape: tuple[int, ...]
    sites: list[SiteExport] = field(default_factory=list)

    @property
    def comparisons(self) -> int:
        """Comparisons (DReLUs) per image made by the sites (max pooling not included)."""
        return sum(s.comparisons for s in self.sites)

    @property
    def muxes(self) -> int:
        """Multiplexers (bit times secret) per image made by the sites."""
        return sum(s.muxes for s in self.sites)

    @property
    def poly_products(self) -> int:
        """Secret-by-secret products per image made by polynomial sites."""
        return sum(s.poly_products for s in self.sites)

    def run_plain(self, x: np.ndarray) -> np.ndarray:
        """The exported function in plain JAX (float32): the reference the MPC run must meet."""
        return np.asarray(self.fn(np.asarray(x, np.float32), self.params))


class _SiteTracer(fx.Tracer):
    """Keeps activation sites (and torch's own layers) as single graph nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, ActivationSite) or super().is_leaf_module(m, qualname)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _jnp():
    return require("jax.numpy", extra="mpc", purpose="MPC inference (SPU)", package="jax")


def _lax():
    return require("jax.lax", extra="mpc", purpose="MPC inference (SPU)", package="jax")


class _Exporter:
    """Turns each fx node into a JAX op, collecting weights into ``params``."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.model = model
        self.input_shape = input_shape
        self.lowering = LoweringContext()
        self.params: Params = self.lowering.params
        self.sites: list[SiteExport] = self.lowering.sites
        self.graph = _SiteTracer().trace(model)
        self.modules = dict(model.named_modules())
        self.folded: dict[str, nn.Conv2d] = {}  # conv node name -> conv with its bn folded in
        self.skip: set[str] = set()  # bn nodes folded away
        self._fold_batch_norm()

    def _fold_batch_norm(self) -> None:
        for node in self.graph.nodes:
            if node.op != "call_module" or not isinstance(
                self.modules[node.target], nn.BatchNorm2d
            ):
                continue
            src = node.args[0]
            if (
                isinstance(src, fx.Node)
                and src.op == "call_module"
                and isinstance(self.modules[src.target], nn.Conv2d)
                and len(src.users) == 1
            ):
                conv, bn = self.modules[src.target], self.modules[node.target]
                self.folded[src.name] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                self.skip.add(node.name)

    def _param(self, name: str, value: torch.Tensor) -> str:
        return self.lowering.param(name, value)

    # -- one builder per layer kind: each returns op(value, params) -> value -------------------

    def _conv(self, name: str, conv: nn.Conv2d) -> Op:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UnsupportedLayerError(
                f"layer {name!r}: only numeric zero padding is exported to MPC"
            )
        w = self._param(f"{name}.weight", conv.weight)
        b = self._param(f"{name}.bias", conv.bias) if conv.bias is not None else None
        stride, dilation = _pair(conv.stride), _pair(conv.dilation)
        pad = [(p, p) for p in _pair(conv.padding)]
        lax = _lax()

        def op(x, p):
            y = lax.conv_general_dilated(
                x,
                p[w],
                stride,
                pad,
                rhs_dilation=dilation,
                dimension_numbers=("NCHW", "OIHW", "NCHW"),
                feature_group_count=conv.groups,
            )
            return y if b is None else y + p[b].reshape(1, -1, 1, 1)

        return op

    def _linear(self, name: str, layer: nn.Linear) -> Op:
        w = self._param(f"{name}.weight", layer.weight.t())
        b = self._param(f"{name}.bias", layer.bias) if layer.bias is not None else None
        return lambda x, p: x @ p[w] if b is None else x @ p[w] + p[b]

    def _batch_norm(self, name: str, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> Op:
        if bn.running_var is None or bn.running_mean is None:
            raise UnsupportedLayerError(
                f"layer {name!r}: batch norm without running statistics cannot be exported"
            )
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        s, t = self._param(f"{name}.scale", scale), self._param(f"{name}.shift", shift)
        tail = (1, 1) if isinstance(bn, nn.BatchNorm2d) else ()
        return lambda x, p: x * p[s].reshape(1, -1, *tail) + p[t].reshape(1, -1, *tail)

    def _avg_pool(self, name: str, pool: nn.AvgPool2d) -> Op:
        if pool.ceil_mode or pool.divisor_override is not None:
            raise UnsupportedLayerError(
                f"layer {name!r}: average pooling with ceil_mode or a divisor override is not "
                "exported to MPC"
            )
        (kh, kw), (sh, sw) = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
        ph, pw = _pair(pool.padding)
        if (ph or pw) and not pool.count_include_pad:
            raise UnsupportedLayerError(
                f"layer {name!r}: padded average pooling must count the padding "
                "(count_include_pad=True)"
            )
        lax = _lax()
        if (kh, kw) == (sh, sw) and not (ph or pw):
            # tiles: a reshape and a sum (SPU's plain reduce), no sliding window
            def tiles(x, _p):
                b, c, h, w = x.shape
                x = x[:, :, : h - h % kh, : w - w % kw]
                return x.reshape(b, c, h // kh, kh, w // kw, kw).sum(axis=(3, 5)) / (kh * kw)

            return tiles

        def op(x, _p):
            s = lax.reduce_window(
                x,
                0.0,
                lax.add,
                (1, 1, kh, kw),
                (1, 1, sh, sw),
                ((0, 0), (0, 0), (ph, ph), (pw, pw)),
            )
            return s / (kh * kw)

        return op

    def _adaptive_avg_pool(self, name: str, pool: nn.AdaptiveAvgPool2d) -> Op:
        if _pair(pool.output_size) != (1, 1):
            raise UnsupportedLayerError(
                f"layer {name!r}: only global average pooling (output 1x1) is exported to MPC"
            )
        jnp = _jnp()
        return lambda x, _p: jnp.mean(x, axis=(2, 3), keepdims=True)

    def _max_pool(self, name: str, pool: nn.MaxPool2d) -> Op:
        if pool.ceil_mode or _pair(pool.dilation) != (1, 1):
            raise UnsupportedLayerError(
                f"layer {name!r}: max pooling with ceil_mode or dilation is not exported to MPC"
            )
        (kh, kw), (sh, sw) = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
        ph, pw = _pair(pool.padding)
        lax, jnp = _lax(), _jnp()
        return lambda x, _p: lax.reduce_window(
            x,
            -jnp.inf,
            lax.max,
            (1, 1, kh, kw),
            (1, 1, sh, sw),
            ((0, 0), (0, 0), (ph, ph), (pw, pw)),
        )

    def _site(self, name: str, site: ActivationSite) -> Op:
        return lower_site(self.lowering, name, site)

    def _module_op(self, node: fx.Node) -> Op | None:
        name = str(node.target)
        module = self.folded.get(node.name) or self.modules[name]
        return self._layer_op(node, name, module)

    def _layer_op(self, node: fx.Node, name: str, module: nn.Module) -> Op | None:
        if node.name in self.skip or isinstance(module, (nn.Identity, nn.Dropout)):
            return None  # identity
        builders: list[tuple[type | tuple[type, ...], Callable]] = [
            (nn.Conv2d, self._conv),
            (nn.Linear, self._linear),
            ((nn.BatchNorm1d, nn.BatchNorm2d), self._batch_norm),
            (nn.AvgPool2d, self._avg_pool),
            (nn.AdaptiveAvgPool2d, self._adaptive_avg_pool),
            (nn.MaxPool2d, self._max_pool),
            ((ActivationSite, nn.ReLU), self._site),
        ]
        for types, build in builders:
            if isinstance(module, types):
                if isinstance(module, nn.ReLU):  # a plain torch ReLU: a dense site
                    module = DenseReLU()
                    module.feature_shape = self._shapes[node.name]
                return build(name, module)
        if isinstance(module, nn.Flatten):
            return lambda x, _p: _flatten(x, module.start_dim, module.end_dim)
        raise UnsupportedLayerError(
            f"layer {name!r} ({type(module).__name__}) cannot be exported to MPC; supported: "
            "Conv2d, Linear, BatchNorm, AvgPool2d, global AdaptiveAvgPool2d, MaxPool2d, Flatten, "
            "ReLU and pifair's ReLU, masked, shared and polynomial sites"
        )

    def _record_shapes(self) -> None:
        """Per-sample output shape of each node, from one torch forward pass through the graph
        (this also gives every site its feature shape)."""
        shapes: dict[str, tuple[int, ...]] = {}

        class Recorder(fx.Interpreter):
            def run_node(self, n: fx.Node):
                out = super().run_node(n)
                if isinstance(out, torch.Tensor) and out.dim() > 0:
                    shapes[n.name] = tuple(out.shape[1:])
                return out

        with torch.no_grad():
            Recorder(fx.GraphModule(self.model, self.graph)).run(torch.zeros(1, *self.input_shape))
        self._shapes = shapes

    def build(self) -> ExportedModel:
        self._record_shapes()
        steps: list[tuple[fx.Node, Op | None]] = []
        layer_nodes: set[str] = set()  # nodes whose op takes (x, params)
        for node in self.graph.nodes:
            layer = _functional_layer(node)
            if node.op == "call_module":
                steps.append((node, self._module_op(node)))
                layer_nodes.add(node.name)
            elif layer is not None:
                steps.append((node, self._layer_op(node, node.name, layer)))
                layer_nodes.add(node.name)
            elif node.op in ("call_function", "call_method"):
                steps.append((node, _function_op(node)))
            elif node.op == "get_attr":
                raise UnsupportedLayerError(
                    f"graph node {node.name!r} reads a tensor attribute ({node.target}); only "
                    "module weights are exported"
                )
        output = next(n for n in self.graph.nodes if n.op == "output")

        def forward(x, params):
            env: dict[str, object] = {}
            for node in self.graph.nodes:
                if node.op == "placeholder":
                    env[node.name] = x
            for node, op in steps:
                args = fx.node.map_arg(node.args, lambda n: env[n.name])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
                if node.name in layer_nodes:
                    env[node.name] = args[0] if op is None else op(args[0], params)
                else:
                    env[node.name] = op(*args, **kwargs)
            return env[output.args[0].name]

        return ExportedModel(forward, self.params, self.input_shape, self.sites)


def _flatten(x, start_dim: int = 0, end_dim: int = -1):
    shape = x.shape
    end = end_dim % len(shape)
    return x.reshape(*shape[:start_dim], math.prod(shape[start_dim : end + 1]), *shape[end + 1 :])


def _functional_layer(node: fx.Node) -> nn.Module | None:
    """The torch layer a functional pooling call computes (``F.avg_pool2d(x, 2)`` is
    ``nn.AvgPool2d(2)``), so it is exported by the same builder; None for other nodes. Its
    arguments are constants of the graph (a user's forward passes numbers, not tensors)."""
    layers: dict[object, type[nn.Module]] = {
        nn.functional.avg_pool2d: nn.AvgPool2d,
        nn.functional.max_pool2d: nn.MaxPool2d,
        nn.functional.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
    }
    if node.op != "call_function" or node.target not in layers:
        return None
    if any(isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
        raise UnsupportedLayerError(
            f"node {node.name!r}: pooling whose settings are computed from tensors cannot be "
            "exported to MPC"
        )
    return layers[node.target](*node.args[1:], **node.kwargs)


def _function_op(node: fx.Node) -> Op:
    """JAX for the torch functions and tensor methods models call in ``forward``."""
    jnp = _jnp()
    if node.target in (torch.relu, nn.functional.relu, "relu"):
        raise UnsupportedLayerError(
            f"node {node.name!r} calls relu as a function; make it an activation site "
            "(pifair.relu.replace_activations) so that it is counted and can be reduced"
        )
    functions: dict[object, Op] = {
        torch.flatten: _flatten,
        operator.add: operator.add,
        torch.add: operator.add,
        operator.iadd: operator.add,
        operator.mul: operator.mul,
    }
    methods: dict[str, Op] = {
        "flatten": _flatten,
        "view": lambda x, *s: x.reshape(*s),
        "reshape": lambda x, *s: x.reshape(*s),
        "size": lambda x, d=None: x.shape if d is None else x.shape[d],
        "add": operator.add,
        "mean": lambda x, dim=None, keepdim=False: jnp.mean(x, axis=dim, keepdims=keepdim),
    }
    target = node.target
    op = methods.get(target) if isinstance(target, str) else functions.get(target)
    if op is None:
        what = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        raise UnsupportedLayerError(
            f"operation {what!r} (node {node.name!r}) cannot be exported to MPC"
        )
    return op


def export_model(
    model: nn.Module, input_shape: tuple[int, ...], *, check: bool = True, atol: float = 1e-3
) -> ExportedModel:
    """``model`` (eval mode) as a JAX function with folded weights.

    With ``check``, the function runs in plain JAX on a few random inputs and must match the
    torch model within ``atol`` relative to the largest logit, so a wrong export fails here and
    not in the middle of an MPC run.

    Examples
    --------
    >>> import pifair
    >>> data = pifair.load_dataset("digits", seed=0)
    >>> model = pifair.create_model("mlp", num_classes=10, input_shape=data.input_shape)
    >>> reduced = pifair.linearize(model, data, 40, method="naive", progress=False,
    ...                            finetune=pifair.FinetuneSettings(epochs=0)).model
    >>> exported = pifair.mpc.export(reduced, data.input_shape)
    >>> exported.comparisons, [s.kind for s in exported.sites]
    (40, ['masked_relu', 'masked_relu'])
    """
    require("jax", extra="mpc", purpose="MPC inference (SPU)")
    model = model.eval()
    exported = _Exporter(model, tuple(input_shape)).build()
    if check:
        x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want = model(x).double().numpy()
        got = exported.run_plain(x.numpy()).astype(np.float64)
        err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
        if not np.isfinite(err) or err > atol:
            raise UnsupportedLayerError(
                "the exported JAX function differs from the torch model (relative error "
                f"{err:.2e}); "
                "the model's forward does something the exporter does not model"
            )
    return exported
