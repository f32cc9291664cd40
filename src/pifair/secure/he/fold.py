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

import itertools
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from .compile import HEProgram, LinearStage, StagedProgram
from .params import CKKSParameters, HEDepthError, folded_parameters

__all__ = [
    "SquareStage",
    "FoldedProgram",
    "estimated_cost",
    "fold_program",
    "fold_for_batching",
]

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
    # the indices of the compiled program's stages that start after a pooling kept apart
    poolings_apart: tuple[int, ...] = ()

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


# The batched server's costs in one unit, a product term over a size-1 ciphertext (one
# modular multiply-add per NTT coefficient and limb): SEAL's key switch and rescale cost about
# KEY_SWITCH_TERMS and RESCALE_TERMS of them (measured at N = 16384, 11 primes, on the 2-core
# machine: relinearize 90.8 ms, rescale 13.1 ms, products 0.24 ms per size-1 term); the ratios
# change little with N and the number of primes
KEY_SWITCH_TERMS = 400
RESCALE_TERMS = 50


def stage_cost(stage: LinearStage, reads_square: bool) -> float:
    """A linear stage's estimated cost on the batched server: its products over size-3 (after
    a square) or size-2 inputs, then per output a key switch after a square, and one rescale
    per level it drops (two after a square)."""
    outputs = stage.weights.shape[0]
    if reads_square:
        return 3 * stage.terms + (KEY_SWITCH_TERMS + 2 * RESCALE_TERMS) * outputs
    return 2 * stage.terms + RESCALE_TERMS * outputs


def estimated_cost(program: FoldedProgram) -> float:
    """The folded program's estimated server cost, in :func:`stage_cost`'s units."""
    cost, after_square = 0.0, False
    for s in program.stages:
        if isinstance(s, LinearStage):
            cost += stage_cost(s, after_square)
        after_square = isinstance(s, SquareStage)
    return cost


def _pooling_apart_pays(pooling: LinearStage, after: LinearStage, composed: LinearStage) -> bool:
    """Whether a pooling right after a square is cheaper as a stage of its own: it then reads
    the size-3 squares, so its outputs are the ones relinearized, and the stage after it reads
    size-2 ciphertexts; composed, every output of the composition is relinearized and each of
    its (more) terms reads a size-3 input."""
    apart = stage_cost(pooling, True) + stage_cost(after, False)
    return apart < stage_cost(composed, True)


def _square_site(
    before: LinearStage, c: np.ndarray, max_shift: float
) -> tuple[LinearStage, SquareStage, tuple[sparse.csr_matrix, np.ndarray]]:
    """A degree-2 site ``c`` (3, features) after the linear stage ``before``, folded: that
    stage with the shifts ``h`` in its bias, the bare square, and what the next linear stage
    applies first (weights and bias over the square's outputs)."""
    c0, c1, c2 = c[0], c[1], c[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(c2 != 0, c1 / (2 * c2), np.inf)
    square = np.abs(shift) <= max_shift  # written as c2 (x + h)^2 + e
    kept = np.flatnonzero(~square)
    h = np.where(square, shift, 0.0)
    # the next stage reads c2 s + (c1 x where kept) + (c0 - c2 h^2) of the square s
    x_terms = sparse.csr_matrix(
        (c1[kept], (kept, np.arange(len(kept)))), shape=(len(c0), len(kept))
    )
    after = (sparse.hstack([_diagonal(c2), x_terms]).tocsr(), c0 - c2 * h**2)
    return LinearStage(before.weights, before.bias + h), SquareStage(len(c0), kept), after


def fold_program(
    program: HEProgram,
    *,
    max_shift: float = MAX_SHIFT,
    pooling_stages: bool | Collection[int] = True,
) -> FoldedProgram:
    """The program with every polynomial folded into its neighbouring linear stages.

    Linear stages compose, except a stage marked ``after_pooling`` (compiled with
    ``cut_at_pooling=True``) right after a square's first linear stage when keeping the pooling
    apart is cheaper (:func:`stage_cost`) and ``pooling_stages`` allows it (True: any; a
    collection: those stage indices of ``program``): one level more each. The folded program
    lists the stages kept apart in ``poolings_apart``.

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
    apart: list[int] = []
    for index, stage in enumerate(program.stages):
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
                (pooling_stages is True or (pooling_stages and index in pooling_stages))
                and stage.after_pooling
                and pending_reads_square
                and _pooling_apart_pays(pending, current, composed)
            ):
                stages.append(pending)
                pending, pending_reads_square = current, False
                apart.append(index)
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
        shifted, square, scale_after = _square_site(pending, c, max_shift)
        stages += [shifted, square]
        pending = None
    assert pending is not None and scale_after is None, "a program ends with a linear stage"
    stages.append(pending)
    folded = FoldedProgram(program.input_shape, stages, tuple(apart))
    probe = np.random.default_rng(0).normal(size=(8, program.input_features))
    expected, got = program.run_plain(probe), folded.run_plain(probe)
    if not np.allclose(got, expected, rtol=1e-8, atol=1e-8 * max(1.0, np.abs(expected).max())):
        raise AssertionError("the folded program differs from the original")  # a bug, not input
    return folded


def fold_for_batching(
    program: HEProgram, *, scale_bits: int | None = None
) -> tuple[FoldedProgram, CKKSParameters]:
    """The folded program the batched engine runs, and its parameters: of the poolings
    :func:`fold_program` would keep apart, the set with the smallest N (a larger N doubles every
    ciphertext) and then the lowest :func:`estimated_cost` (each pooling kept apart is one
    level more)."""
    every = fold_program(program)
    candidates = every.poolings_apart
    best: tuple[tuple[int, float], FoldedProgram, CKKSParameters] | None = None
    for k in range(len(candidates) + 1):
        for chosen in itertools.combinations(candidates, k):
            # the full set is the fold already made (each fold also checks itself in float64)
            folded = every if k == len(candidates) else fold_program(program, pooling_stages=chosen)
            try:
                params = folded_parameters(folded.depth, scale_bits=scale_bits)
            except HEDepthError:
                if not chosen:
                    raise  # too deep even with every pooling composed
                continue
            rank = (params.poly_modulus_degree, estimated_cost(folded))
            if best is None or rank < best[0]:
                best = (rank, folded, params)
    assert best is not None
    return best[1], best[2]
