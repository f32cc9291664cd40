"""What one forward pass really calls: every ReLU and every other non-linear operation.

A model's module list does not say what its forward pass computes: one ``nn.ReLU`` module may
be applied twice (torchvision's ``BasicBlock``), ``F.relu`` and ``x.relu()`` are no modules at
all. :func:`record_calls` runs the model once under a :class:`torch.overrides.TorchFunctionMode`
that sees every torch function and tensor method call, and names each with the module whose
``forward`` made it (forward hooks keep the stack of modules being run). It reports

* the ReLU calls made outside an activation site (a model that still needs converting);
* how often each activation site was called (a site called twice is counted once);
* every other non-linear operation (ReLU6, GELU, SiLU, max pooling, ...), which no pifair
  reduction touches but which a user must see in the count table.

Written by hand because neither torch.fx (it needs a traceable model, and the point here is to
check a model whether or not it traces) nor forward hooks (they miss functional calls) see
everything a forward pass computes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .sites import ActivationSite, iter_sites

__all__ = ["RELU_OPS", "OTHER_NONLINEAR_OPS", "NonlinearCall", "CallRecord", "record_calls"]

#: names (``__name__`` of the function or tensor method) of the calls that compute a ReLU
RELU_OPS = frozenset({"relu", "relu_"})

#: non-linear operations that pifair's reductions leave as they are (listed, never counted)
OTHER_NONLINEAR_OPS = frozenset(
    {
        "relu6",
        "hardtanh",
        "hardtanh_",
        "gelu",
        "silu",
        "hardswish",
        "hardsigmoid",
        "leaky_relu",
        "leaky_relu_",
        "elu",
        "elu_",
        "selu",
        "celu",
        "prelu",
        "rrelu",
        "mish",
        "softplus",
        "softsign",
        "sigmoid",
        "sigmoid_",
        "logsigmoid",
        "tanh",
        "tanh_",
        "tanhshrink",
        "threshold",
        "glu",
        "softmax",
        "log_softmax",
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "fractional_max_pool2d",
        "clamp",
        "clamp_",
        "clip",
        "clip_",
        "maximum",
        "minimum",
        "abs",
        "sign",
    }
)

# activation and pooling modules whose class name says more than the function they call
# (nn.ReLU6 calls hardtanh)
_NAMED_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.PReLU,
    nn.Mish,
    nn.Softplus,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softmax,
    nn.LogSoftmax,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


@dataclass(frozen=True)
class NonlinearCall:
    """One non-linear call: the module whose forward made it (``""`` for the model's own
    forward), what it is, and the elements per sample it got."""

    module: str
    op: str
    feature_shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.feature_shape)


@dataclass
class CallRecord:
    """What :func:`record_calls` saw in one forward pass."""

    plain_relus: list[NonlinearCall] = field(default_factory=list)
    site_calls: Counter[str] = field(default_factory=Counter)
    others: list[NonlinearCall] = field(default_factory=list)

    @property
    def reused_sites(self) -> list[str]:
        """Activation sites applied more than once per forward pass."""
        return sorted(name for name, n in self.site_calls.items() if n > 1)

    @property
    def exact(self) -> bool:
        """Every ReLU the model computes is a site of its own: its site count is exact."""
        return not self.plain_relus and not self.reused_sites

    def problem(self) -> str:
        """What keeps the site count from being exact, in words ('' when it is exact)."""
        parts = []
        if self.plain_relus:
            where = sorted({f"{c.module or '<forward>'} ({c.op})" for c in self.plain_relus})
            parts.append(
                f"{len(self.plain_relus)} ReLU call(s) outside an activation site, in "
                + ", ".join(where[:5])
                + (" ..." if len(where) > 5 else "")
            )
        if self.reused_sites:
            parts.append(
                f"activation site(s) applied more than once: {', '.join(self.reused_sites)}"
            )
        return "; ".join(parts)


class _CallRecorder(TorchFunctionMode):
    def __init__(self, stack: list[nn.Module], names: dict[int, str], record: CallRecord):
        super().__init__()
        self.stack, self.names, self.record = stack, names, record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = getattr(func, "__name__", "")
        inner = self.stack[-1] if self.stack else None
        if not isinstance(inner, ActivationSite) and args and isinstance(args[0], torch.Tensor):
            if op in RELU_OPS or op in OTHER_NONLINEAR_OPS:
                module = self.names.get(id(inner), "") if inner is not None else ""
                kind = op
                if isinstance(inner, _NAMED_MODULES):
                    kind = type(inner).__name__
                call = NonlinearCall(module, kind, tuple(int(s) for s in args[0].shape[1:]))
                (self.record.plain_relus if op in RELU_OPS else self.record.others).append(call)
        return func(*args, **kwargs)


def record_calls(model: nn.Module, input_shape: Sequence[int]) -> CallRecord:
    """Run one zero sample through ``model`` (eval mode, no grad) and record its non-linear
    calls; every site also learns its feature shape from this pass."""
    record = CallRecord()
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[nn.Module] = []

    def push(module: nn.Module, _inputs) -> None:
        stack.append(module)
        if isinstance(module, ActivationSite):
            record.site_calls[names.get(id(module), "?")] += 1

    def pop(module: nn.Module, _inputs, _output) -> None:
        if stack and stack[-1] is module:
            stack.pop()

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(push))
        handles.append(module.register_forward_hook(pop))
    for _, site in iter_sites(model):
        site.feature_shape = None
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _CallRecorder(stack, names, record):
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return record
