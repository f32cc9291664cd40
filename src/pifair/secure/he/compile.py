"""An HE-ready model as a CKKS program: affine stages between polynomial sites.

Each activation site becomes a polynomial stage through the lowering of its kind
(:mod:`pifair.secure.he.lowerings`). Between two sites, convolutions, batch norm (folded in, as
it is affine at inference), average pooling, flattening and linear layers compose to one affine
map. Each map is read off the model itself: the map of the identity basis (plus a zero input
for the bias) through that part of the network, in float64, in chunks. Its rows keep only their
structural nonzeros, so a convolution becomes, per output position, a short weighted sum of
input positions: exactly the plaintext-scalar multiply-accumulate that batch-oriented packing
runs. The compiled program is checked against the torch model before use.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import sparse
from torch import nn

from ...errors import UnsupportedLayerError
from ...relu.calls import record_calls
from ...relu.sites import ActivationSite, iter_sites
from .lowerings import lower_site

__all__ = ["LinearStage", "PolyStage", "HEProgram", "check_he_ready", "compile_model"]

_LINEAR_TYPES = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
)


@dataclass
class LinearStage:
    """``y = W x + b`` with ``W`` sparse (CSR): one multiply-accumulate per stored entry."""

    weights: sparse.csr_matrix  # (out, in)
    bias: np.ndarray
    depth: int = 1
    # the stage starts at an average pooling's output (compile_model(cut_at_pooling=True)):
    # folding may keep it apart from the stage before instead of composing the two
    after_pooling: bool = False

    @property
    def terms(self) -> int:
        return int(self.weights.nnz)

    def summary(self) -> dict:
        rows, cols = self.weights.shape
        return {"stage": "linear", "in": cols, "out": rows, "terms": self.terms, "depth": 1}

    def followed_by(self, after: LinearStage) -> LinearStage:
        """``after`` applied to this stage's output, as one stage."""
        w = (after.weights @ self.weights).tocsr()
        w.eliminate_zeros()
        return LinearStage(w, after.weights @ self.bias + after.bias)


@dataclass
class PolyStage:
    """``y_j = sum_k c_kj x_j^k`` per feature (coefficients broadcast to the feature shape)."""

    coefficients: np.ndarray  # (degree + 1, features)

    @property
    def degree(self) -> int:
        return self.coefficients.shape[0] - 1

    @property
    def depth(self) -> int:
        return 2 if self.degree == 2 else 1  # x^2 and its coefficient; degree 1: the coefficient

    def summary(self) -> dict:
        features = self.coefficients.shape[1]
        return {"stage": f"poly{self.degree}", "features": features, "depth": self.depth}


@dataclass
class StagedProgram:
    """A program of stages on a flattened input: what the compiled and the folded programs
    share (their stage kinds differ)."""

    input_shape: tuple[int, ...]
    stages: list = field(default_factory=list)

    @property
    def depth(self) -> int:
        """Multiplicative levels the program consumes."""
        return sum(s.depth for s in self.stages)

    @property
    def input_features(self) -> int:
        return int(np.prod(self.input_shape))

    def summary(self) -> list[dict]:
        """One line per stage (the run's metrics and the report show it)."""
        return [s.summary() for s in self.stages]


@dataclass
class HEProgram(StagedProgram):
    """Linear stages and polynomial activations: the program both engines start from."""

    stages: list[LinearStage | PolyStage] = field(default_factory=list)

    def check_encryptable(self) -> None:
        """Refuse, before any key or ciphertext exists, what the engine cannot encrypt: an
        output that is a constant (a linear row with no input, a polynomial with no x term)."""
        for i, s in enumerate(self.stages):
            if isinstance(s, LinearStage):
                empty = int((np.diff(s.weights.indptr) == 0).sum())
                what = f"{empty} of its {s.weights.shape[0]} outputs depend on no input"
            else:
                empty = int((s.coefficients[1:] == 0).all(axis=0).sum())
                what = (
                    f"{empty} of its {s.coefficients.shape[1]} polynomials are constant (no x term)"
                )
            if empty:
                raise UnsupportedLayerError(
                    f"stage {i} ({self.summary()[i]['stage']}): {what}; the CKKS engine does not "
                    f"encrypt constants. Refit the polynomials (pifair polyfit with a learning "
                    f"rate > 0) or prune those units"
                )

    def joined(self) -> HEProgram:
        """The program with consecutive linear stages composed (one between two sites), as
        compiled without ``cut_at_pooling``: what the SEAL engine runs."""
        stages: list[LinearStage | PolyStage] = []
        for s in self.stages:
            if isinstance(s, LinearStage) and stages and isinstance(stages[-1], LinearStage):
                stages[-1] = stages[-1].followed_by(s)
            else:
                stages.append(s)
        return HEProgram(self.input_shape, stages)

    def run_plain(self, x: np.ndarray) -> np.ndarray:
        """The program in float64 on plaintext (B, features): the reference of the HE run."""
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        for s in self.stages:
            if isinstance(s, LinearStage):
                x = (s.weights @ x.T).T + s.bias
            else:
                c = s.coefficients
                x = sum(c[k] * x**k for k in range(c.shape[0]))
        return x


def check_he_ready(model: nn.Module) -> None:
    """Refuse layers that CKKS cannot run, naming the layer and what to do."""
    for name, m in model.named_modules():
        if list(m.children()):
            continue  # containers
        if isinstance(m, ActivationSite):
            lower_site(name, m)  # refuses a site kind CKKS cannot run, saying what to do
            continue
        if isinstance(m, nn.ReLU):
            raise UnsupportedLayerError(
                f"layer {name} is a ReLU ({type(m).__name__}): CKKS cannot compare, so replace the "
                f"ReLUs by polynomials first: pifair polyfit --from RUN --degree 2"
            )
        if isinstance(m, nn.MaxPool2d | nn.AdaptiveMaxPool2d):
            raise UnsupportedLayerError(
                f"layer {name} is max pooling, which CKKS cannot compute; use a model with average "
                f"pooling (lenet, he_cnn), train it, then run pifair polyfit"
            )
        if not isinstance(m, _LINEAR_TYPES):
            raise UnsupportedLayerError(
                f"layer {name} ({type(m).__name__}) cannot run under CKKS: HE-ready models use "
                f"conv, average pooling, linear, batch norm and PolyAct only"
            )


def _check_calls(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Refuse what a forward pass computes outside modules (``F.relu``, ``F.max_pool2d`` in a
    user's forward), which :func:`check_he_ready` cannot see in the module list."""
    calls = record_calls(model, input_shape)
    if calls.plain_relus:
        where = calls.plain_relus[0].module or "<forward>"
        raise UnsupportedLayerError(
            f"{len(calls.plain_relus)} ReLU call(s) outside an activation site (first in {where}): "
            "CKKS cannot compare, so replace the ReLUs by polynomials first: pifair polyfit"
        )
    if calls.others:
        first = calls.others[0]
        raise UnsupportedLayerError(
            f"{first.op} in {first.module or '<forward>'} cannot run under CKKS: HE-ready models "
            "use conv, average pooling, linear, batch norm and polynomial sites only"
        )


class _Stop(Exception):
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


_POOLING_TYPES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)


@dataclass(frozen=True)
class _Cut:
    """A point of the forward pass where one linear stage ends and the next begins: the input
    of ``module`` (a site: its polynomial runs between) or its output (a site's, or an average
    pooling's where a stage is cut in two)."""

    module: nn.Module
    at_output: bool
    shape: tuple[int, ...]  # per sample, of the value at the cut


def _stage_map(
    model: nn.Module, input_shape, start: _Cut | None, stop: _Cut | None, chunk: int
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """The affine map from ``start`` (None: the image) to ``stop`` (None: the logits), as (CSR
    weights, bias): the identity basis pushed through that part of the network."""
    in_shape = tuple(input_shape) if start is None else start.shape
    dim = int(np.prod(in_shape))

    def outputs(probe: torch.Tensor) -> torch.Tensor:
        handles = []
        if start is not None:
            handles.append(
                start.module.register_forward_hook(lambda m, i, o: probe.view(-1, *in_shape))
            )
        if stop is not None:

            def stop_before(m, inputs):
                raise _Stop(inputs[0])

            def stop_after(m, inputs, output):
                raise _Stop(output)

            handles.append(
                stop.module.register_forward_hook(stop_after)
                if stop.at_output
                else stop.module.register_forward_pre_hook(stop_before)
            )
        x = (
            probe.view(-1, *input_shape)
            if start is None
            else torch.zeros(len(probe), *input_shape, dtype=torch.float64)
        )
        try:
            out = model(x)
        except _Stop as s:
            out = s.value
        finally:
            for h in handles:
                h.remove()
        return out.reshape(len(probe), -1)

    with torch.no_grad():
        bias = outputs(torch.zeros(1, dim, dtype=torch.float64))[0]
        blocks = []
        for first in range(0, dim, chunk):
            eye = torch.zeros(min(chunk, dim - first), dim, dtype=torch.float64)
            eye[torch.arange(len(eye)), torch.arange(first, first + len(eye))] = 1.0
            cols = (outputs(eye) - bias).numpy()  # (chunk, out): columns of W
            blocks.append(
                sparse.csr_matrix(
                    np.where(np.abs(cols) > 1e-12 * max(1.0, np.abs(cols).max()), cols, 0.0)
                )
            )
    weights = sparse.vstack(blocks).T.tocsr()
    weights.eliminate_zeros()
    return weights, bias.numpy()


def _forward_events(model: nn.Module, input_shape) -> list[_Cut]:
    """The sites (at their input) and average poolings (at their output) in the order one
    forward pass meets them, with the shapes there."""
    events: list[_Cut] = []
    handles = []
    for m in model.modules():
        if isinstance(m, ActivationSite):
            handles.append(
                m.register_forward_pre_hook(
                    lambda mod, i: events.append(_Cut(mod, False, tuple(i[0].shape[1:])))
                )
            )
        elif isinstance(m, _POOLING_TYPES):
            handles.append(
                m.register_forward_hook(
                    lambda mod, i, o: events.append(_Cut(mod, True, tuple(o.shape[1:])))
                )
            )
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=torch.float64))
    finally:
        for h in handles:
            h.remove()
    return events


def _cuts(events: list[_Cut], cut_at_pooling: bool) -> list[_Cut]:
    """Where the stages end: every site's input, its output right after, and (with
    ``cut_at_pooling``) the output of the first average pooling after a site, when that pooling
    runs once per forward pass."""
    calls: dict[int, int] = {}
    for e in events:
        calls[id(e.module)] = calls.get(id(e.module), 0) + 1
    cuts: list[_Cut] = []
    after_site = False
    for e in events:
        if isinstance(e.module, ActivationSite):
            cuts += [e, _Cut(e.module, True, e.shape)]
            after_site = True
        elif cut_at_pooling and after_site and calls[id(e.module)] == 1:
            cuts.append(e)
            after_site = False
    return cuts


def compile_model(
    model: nn.Module,
    input_shape,
    *,
    chunk: int = 1024,
    check_samples: int = 8,
    cut_at_pooling: bool = False,
) -> HEProgram:
    """The CKKS program of an HE-ready ``model`` (checked against it on random inputs).

    ``cut_at_pooling`` ends a linear stage at the first average pooling after each site (the
    next stage is marked ``after_pooling``): the batched engine's folding may then run the
    pooling as a stage of its own (see :func:`pifair.secure.he.fold.fold_program`).

    Examples
    --------
    >>> import pifair
    >>> data = pifair.load_dataset("digits", seed=0)
    >>> relu_model = pifair.create_model("mlp", num_classes=10, input_shape=data.input_shape)
    >>> poly = pifair.polyfit(relu_model, data, progress=False,
    ...                       finetune=pifair.FinetuneSettings(epochs=0)).model
    >>> program = pifair.he.compile(poly, data.input_shape)
    >>> [s["stage"] for s in program.summary()], program.depth
    (['linear', 'poly2', 'linear', 'poly2', 'linear'], 7)
    """
    check_he_ready(model)
    m = copy.deepcopy(model).double().eval()
    _check_calls(m, tuple(input_shape))
    names = {id(site): name for name, site in iter_sites(m)}
    cuts = _cuts(_forward_events(m, tuple(input_shape)), cut_at_pooling)
    program = HEProgram(tuple(input_shape))
    start: _Cut | None = None
    for cut in [*cuts, None]:
        if cut is not None and cut.module is getattr(start, "module", None):  # across a site
            program.stages.append(PolyStage(lower_site(names[id(cut.module)], cut.module)))
        else:
            w, b = _stage_map(m, input_shape, start, cut, chunk)
            after_pooling = start is not None and isinstance(start.module, _POOLING_TYPES)
            program.stages.append(LinearStage(w, b, after_pooling=after_pooling))
        start = cut
    x = torch.randn(
        check_samples, *input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        expected = m(x).numpy()
    got = program.run_plain(x.numpy())
    if not np.allclose(got, expected, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(expected).max())):
        raise UnsupportedLayerError(
            "the model is not a chain of affine layers and polynomial sites (a residual or other "
            "branching connection?): the HE engine runs sequential models only"
        )
    return program
