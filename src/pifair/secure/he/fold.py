"""Fold each polynomial's coefficients into the linear layers around it: one level per activation.

A degree-2 activation ``c2 x^2 + c1 x + c0`` costs two levels when run as written (the square,
then its coefficients). Completing the square, ``c2 (x + h)^2 + e`` with ``h = c1 / (2 c2)`` and
``e = c0 - c2 h^2``, moves ``h`` into the bias of the linear stage before and ``c2``, ``e`` into
the weights and bias of the linear stage after, so the activation is a bare square: one level.
Where a feature has no square term, or one so small that the shift ``h`` would be large (the
folded bias would then cancel most of ``c2 (x + h)^2``, and CKKS's error with it), the square
stage also passes that ``x`` on and the next linear stage weighs ``x^2`` by ``c2`` and ``x``
by ``c1``; still one level. A
degree-1 activation is affine and merges into its neighbours. The folded program computes the
same function (checked against the original in float64 by :func:`fold_program`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from .compile import HEProgram, LinearStage, StagedProgram
from .params import CKKSParameters, HEDepthError, folded_parameters

__all__ = ["SquareStage", "FoldedProgram", "fold_program", "fold_for_batching"]

# |h| = |c1 / (2 c2)| up to this (in the activation's units) completes the square; beyond it the
# shift would make x + h large and the folded bias cancel most of c2 (x + h)^2: precision lost
MAX_SHIFT = 16.0


@dataclass
class SquareStage:
    """``x -> [x^2, x[kept]]``: every feature squared, then the features in ``kept`` as they
    are (those whose polynomial could not be written as a shifted square)."""

    features: int
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    depth: int = 1

    @property
    def outputs(self) -> int:
        return self.features + len(self.kept)

    def summary(self) -> dict:
        return {"stage": "square", "features": self.features, "kept": len(self.kept), "depth": 1}


@dataclass
class FoldedProgram(StagedProgram):
    """Linear stages and bare squares: the program the batched engine runs."""

    stages: list[LinearStage | SquareStage] = field(default_factory=list)

    def run_plain(self, x: np.ndarray) -> np.ndarray:
        """The folded program in float64 on plaintext (B, features)."""
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        for s in self.stages:
            if isinstance(s, LinearStage):
                x = (s.weights @ x.T).T + s.bias
            else:
                x = np.concatenate([x**2, x[:, s.kept]], axis=1)
        return x


def _diagonal(values: np.ndarray) -> sparse.csr_matrix:
    return sparse.diags(values, format="csr")


def _pooling_apart_pays(pooling: LinearStage, after: LinearStage, composed: LinearStage) -> bool:
    """Whether a pooling right after a square is cheaper as a stage of its own: it then reads
    the size-3 squares, so its outputs are the ones relinearized (one key switch each), and the
    stage after it reads size-2 ciphertexts; composed, every output of the composition is
    relinearized and each of its terms reads a size-3 input."""
    fewer_key_switches = pooling.weights.shape[0] < composed.weights.shape[0]
    fewer_products = 3 * pooling.terms + 2 * after.terms < 3 * composed.terms
    return fewer_key_switches and fewer_products


def fold_program(
    program: HEProgram, *, max_shift: float = MAX_SHIFT, pooling_stages: bool = True
) -> FoldedProgram:
    """The program with every polynomial folded into its neighbouring linear stages.

    Linear stages compose, except a stage marked ``after_pooling`` (compiled with
    ``cut_at_pooling=True``) right after a square's first linear stage when keeping the pooling
    apart saves key switches and products (and ``pooling_stages`` allows it): one level more.

    Examples
    --------
    >>> import pifair
    >>> data = pifair.load_dataset("digits", seed=0)
    >>> relu_model = pifair.create_model("mlp", num_classes=10, input_shape=data.input_shape)
    >>> poly = pifair.polyfit(relu_model, data, progress=False,
    ...                       finetune=pifair.FinetuneSettings(epochs=0)).model
    >>> program = pifair.he.compile(poly, data.input_shape)
    >>> folded = pifair.he.fold(program)
    >>> [s["stage"] for s in folded.summary()], program.depth, folded.depth
    (['linear', 'square', 'linear', 'square', 'linear'], 7, 5)
    """
    stages: list[LinearStage | SquareStage] = []
    pending: LinearStage | None = None  # the linear map waiting for the next stage
    pending_reads_square = False  # pending is the first linear map after a square
    scale_after: sparse.csr_matrix | None = None  # what the next linear stage applies first
    for stage in program.stages:
        if isinstance(stage, LinearStage):
            current = stage
            if scale_after is not None:
                current = LinearStage(
                    (stage.weights @ scale_after[0]).tocsr(),
                    stage.weights @ scale_after[1] + stage.bias,
                )
                scale_after = None
                pending_reads_square = True
            if pending is None:
                pending = current
                continue
            composed = pending.followed_by(current)
            if (
                pooling_stages
                and stage.after_pooling
                and pending_reads_square
                and _pooling_apart_pays(pending, current, composed)
            ):
                stages.append(pending)
                pending, pending_reads_square = current, False
            else:
                pending = composed
            continue
        assert pending is not None, "a program starts with a linear stage"
        c = stage.coefficients
        if stage.degree == 1:  # affine: merge into the neighbours
            pending = LinearStage(
                (_diagonal(c[1]) @ pending.weights).tocsr(), c[1] * pending.bias + c[0]
            )
            continue
        c0, c1, c2 = c[0], c[1], c[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where(c2 != 0, c1 / (2 * c2), np.inf)
        square = np.abs(shift) <= max_shift  # written as c2 (x + h)^2 + e
        kept = np.flatnonzero(~square)
        h = np.where(square, shift, 0.0)
        pending = LinearStage(pending.weights, pending.bias + h)
        stages += [pending, SquareStage(len(c0), kept)]
        # the next stage reads c2 s + (c1 x where kept) + (c0 - c2 h^2) of the square s
        x_terms = sparse.csr_matrix(
            (c1[kept], (kept, np.arange(len(kept)))), shape=(len(c0), len(kept))
        )
        scale_after = (sparse.hstack([_diagonal(c2), x_terms]).tocsr(), c0 - c2 * h**2)
        pending = None
    assert pending is not None and scale_after is None, "a program ends with a linear stage"
    stages.append(pending)
    folded = FoldedProgram(program.input_shape, stages)
    probe = np.random.default_rng(0).normal(size=(8, program.input_features))
    expected, got = program.run_plain(probe), folded.run_plain(probe)
    if not np.allclose(got, expected, rtol=1e-8, atol=1e-8 * max(1.0, np.abs(expected).max())):
        raise AssertionError("the folded program differs from the original")  # a bug, not input
    return folded


def fold_for_batching(
    program: HEProgram, *, scale_bits: int | None = None
) -> tuple[FoldedProgram, CKKSParameters]:
    """The folded program the batched engine runs, and its parameters: poolings kept apart
    where that pays (:func:`fold_program`), unless the levels they add need a larger N than
    the program with every pooling composed (a larger N doubles every ciphertext)."""
    composed = fold_program(program, pooling_stages=False)
    params = folded_parameters(composed.depth, scale_bits=scale_bits)
    apart = fold_program(program)
    if apart.depth == composed.depth:
        return composed, params
    try:
        apart_params = folded_parameters(apart.depth, scale_bits=scale_bits)
    except HEDepthError:
        return composed, params
    if apart_params.poly_modulus_degree > params.poly_modulus_degree:
        return composed, params
    return apart, apart_params
