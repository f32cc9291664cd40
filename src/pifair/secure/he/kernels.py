"""Fused modular kernels of the batched engine, compiled by numba.

A CKKS batch is large (gigabytes at N = 8192 and a few hundred features) and the element-wise
steps between the BLAS products (reduce a float64 sum modulo q, multiply two residues, add a
constant) are memory-bound in numpy: every operation is a pass over the array, several per
step. Here each step is one parallel pass. The arithmetic is exact: residues and sums stay
integers below 2^53 in float64, and a product of two residues below q < 2^50 is computed as
``a b - floor(a b / q) q`` with the quotient from float64 (off by at most one, corrected) and
the remainder in wrapping 64-bit integer arithmetic.

The functions are plain Python here and compiled on first use (:func:`kernels`), so that the
package imports without numba; numba caches the machine code next to this file.

Why by hand: numpy has no fused modular arithmetic; numba compiles these loops.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np

from ...extras import require

__all__ = ["kernels", "warm_up"]

_prange = range  # numba.prange once compiled


def _reduce(v, q, inverse):
    """Integer-valued float64 ``|v| < 2^52`` to [0, q)."""
    r = v - np.floor(v * inverse) * q
    if r < 0:
        r += q
    elif r >= q:
        r -= q
    return r


def _mul_mod(a, b, q, inverse):
    """``a b mod q`` for uint64 residues below ``q < 2^50``."""
    quotient = np.uint64(np.floor(np.float64(a) * np.float64(b) * inverse))
    r = np.int64(a * b - quotient * q)  # wraps; the true value is in (-q, 2q)
    if r < 0:
        r += np.int64(q)
    elif r >= np.int64(q):
        r -= np.int64(q)
    return np.uint64(r)


def _horner_step(acc, product, factor, q):
    """``acc <- (acc factor + product) mod q`` in place; ``acc`` in [0, q) (float64), factor a
    power of two with ``q factor + |product| < 2^53``."""
    inverse = 1.0 / q
    flat_acc, flat_product = acc.reshape(-1), product.reshape(-1)
    for i in _prange(flat_acc.size):
        flat_acc[i] = _reduce(flat_acc[i] * factor + flat_product[i], q, inverse)


def _to_residues(values, q, out):
    """``out <- values mod q`` as uint64 (values integer-valued float64, |v| < 2^52)."""
    inverse = 1.0 / q
    flat, flat_out = values.reshape(-1), out.reshape(-1)
    for i in _prange(flat.size):
        flat_out[i] = np.uint64(_reduce(flat[i], q, inverse))


def _tensor_square(c, q, out):
    """``out[f] <- (c0^2, 2 c0 c1, c1^2) mod q`` for ``c`` (features, 2, n) of one limb."""
    inverse = 1.0 / q
    features, _, n = c.shape
    qq = np.uint64(q)
    for f in _prange(features):
        for j in range(n):
            a, b = c[f, 0, j], c[f, 1, j]
            out[f, 0, j] = _mul_mod(a, a, qq, inverse)
            cross = _mul_mod(a, b, qq, inverse) * np.uint64(2)
            out[f, 1, j] = cross - qq if cross >= qq else cross
            out[f, 2, j] = _mul_mod(b, b, qq, inverse)


def _scale_by(c, factor, q, out):
    """``out <- c factor mod q`` (uint64 residues, any shape, one limb)."""
    inverse = 1.0 / q
    qq, f = np.uint64(q), np.uint64(factor)
    flat, flat_out = c.reshape(-1), out.reshape(-1)
    for i in _prange(flat.size):
        flat_out[i] = _mul_mod(flat[i], f, qq, inverse)


def _add_constant(c, constants, moduli):
    """``c[l, j] <- c[l, j] + constants[l] mod moduli[l]`` (a CKKS constant in NTT form is
    the same residue in every coefficient)."""
    limbs, n = c.shape
    for limb in range(limbs):
        q, k = moduli[limb], constants[limb]
        for j in range(n):
            v = c[limb, j] + k
            c[limb, j] = v - q if v >= q else v


def _grouped_product(rows, inputs, weights, ratios, coefficients, q, out, start, stop):
    """``out[rows[g, i], j] = sum_t weights[g, i, t] coefficients[inputs[g, t], j] mod q`` for
    every group ``g`` and the columns ``start <= j < stop`` (uint64 weights and coefficients
    below ``q < 2^48``; ``ratios`` = weights / q in float64, so that a quotient costs one
    multiplication). Each term's remainder is made exact as in :func:`_mul_mod` and kept in
    [0, 3q): 2^14 terms of them (the most a group has) stay below 3 2^62 < 2^64, so the sum is
    reduced once per output.
    The coefficients are read and the outputs written in place: no gathered copy."""
    groups, readers = rows.shape
    terms = inputs.shape[1]
    cols = stop - start
    for g in _prange(groups):
        acc = np.empty(cols, dtype=np.uint64)
        for i in range(readers):
            acc[:] = 0
            for t in range(terms):
                w, ratio = weights[g, i, t], ratios[g, i, t]
                row = coefficients[inputs[g, t], start:stop]
                for j in range(cols):
                    x = row[j]
                    quotient = np.uint64(np.float64(x) * ratio)  # off by at most one
                    acc[j] += w * x - quotient * q + q  # wraps to the true value in [0, 3q)
            target = out[rows[g, i], start:stop]
            for j in range(cols):
                target[j] = acc[j] % q


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel now, on tiny inputs, so that no
    compilation falls inside a timed step."""
    k, q = kernels(), 268369921
    acc, residues = np.zeros(4), np.zeros(4, dtype=np.uint64)
    k.horner_step(acc, np.ones(4), 2.0, float(q))
    k.to_residues(acc, float(q), residues)
    square = np.zeros((1, 3, 2), dtype=np.uint64)
    k.tensor_square(np.ones((1, 2, 2), dtype=np.uint64), q, square)
    k.scale_by(residues, 3, q, residues.copy())
    k.add_constant(
        np.ones((1, 2), dtype=np.uint64), np.ones(1, dtype=np.int64), np.array([q], dtype=np.uint64)
    )
    one = np.zeros((1, 1), dtype=np.int64)
    coefficients = np.ones((1, 2), dtype=np.uint64)
    read_only = coefficients.copy()
    read_only.flags.writeable = False  # spilled stage outputs are read-only maps
    for source in (coefficients, read_only):
        k.grouped_product(
            one,
            one,
            np.ones((1, 1, 1), dtype=np.uint64),
            np.full((1, 1, 1), 1.0 / q),
            source,
            np.uint64(q),
            np.zeros((1, 2), dtype=np.uint64),
            0,
            2,
        )


@functools.cache
def kernels() -> SimpleNamespace:
    """The compiled kernels (numba, from the ``he`` extra)."""
    numba = require("numba", extra="he", purpose="the batched CKKS engine's modular kernels")
    module = globals()
    module["_prange"] = numba.prange
    for helper in ("_reduce", "_mul_mod"):  # inlined into the kernels that call them
        module[helper] = numba.njit(inline="always", cache=True)(module[helper])
    parallel = functools.partial(numba.njit, cache=True, parallel=True, nogil=True)
    return SimpleNamespace(
        horner_step=parallel(_horner_step),
        to_residues=parallel(_to_residues),
        tensor_square=parallel(_tensor_square),
        scale_by=parallel(_scale_by),
        add_constant=numba.njit(cache=True, nogil=True)(_add_constant),
        grouped_product=parallel(_grouped_product),
    )
