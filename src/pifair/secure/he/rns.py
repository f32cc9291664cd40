"""Linear layers of batch-packed CKKS as exact modular matrix products over raw RNS data.

With one image per slot, a linear output is ``sum_j w_j ct_j`` with plaintext *scalars*
``w_j``. SEAL encodes a scalar at scale ``s`` as the constant ``W = round(w s)`` in every NTT
coefficient, so ``multiply_plain`` is a coefficient-wise product by ``W mod q_l`` and the
whole layer is, per RNS limb ``l``, the integer matrix product ``W (out x in) @ C (in x 2N)``
mod ``q_l`` over the ciphertexts' coefficients (read in place, :mod:`.seal_memory`): a few
BLAS calls instead of one SEAL call per weight. The product is exact in float64: both operands
are split into digits small enough that every partial sum stays below 2^51, then recombined
modulo ``q_l``.

Why by hand: neither SEAL's Python bindings (TenSEAL's sealapi) nor numpy offer a modular
matrix product of 48-bit integers; BLAS is exact on the small digits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits

from .kernels import kernels

__all__ = ["GroupedWeights", "ModularProduct", "grouped_mod_matmul", "scalar_weights"]


def scalar_weights(weights: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The integers SEAL encodes for ``weights[o, j]`` at plaintext scale ``scales[j]``:
    ``round(w s)``, rounded half away from zero as C++'s ``std::round``; signed int64."""
    x = np.asarray(weights, dtype=np.float64) * np.asarray(scales, dtype=np.float64)
    if not np.all(np.abs(x) < 2.0**62):
        raise ValueError("a weight times its scale exceeds 62 bits")
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def _signed_digits(values: np.ndarray, bits: int, count: int) -> list[np.ndarray]:
    """Signed base-2^bits digits of int64 ``values``, as float64, lowest first; every digit
    but the last in [-2^(bits-1), 2^(bits-1)), the last takes the rest."""
    out, rest = [], values.astype(np.int64)
    base, half = np.int64(1 << bits), np.int64(1 << (bits - 1))
    for _ in range(count - 1):
        digit = ((rest + half) & (base - 1)) - half
        out.append(digit.astype(np.float64))
        rest = (rest - digit) >> bits
    out.append(rest.astype(np.float64))
    return out


# -- grouped products: a convolution as a batched product over output positions ------------------

_CHUNK_BYTES = 4 << 20  # gathered inputs per column chunk


@dataclass
class _Bucket:
    """Groups of ``m`` output rows that read the same ``k`` inputs, stacked: ``rows`` (G, m),
    ``inputs`` (G, k), ``values`` (G, m, k) int64."""

    rows: np.ndarray
    inputs: np.ndarray
    values: np.ndarray


@dataclass
class GroupedWeights:
    """An integer matrix with its rows grouped by identical input sets, so that its product is a
    few batched dense products (one per output position of a convolution; one for a dense
    layer) instead of a sparse product. Built once per stage, used for every limb."""

    shape: tuple[int, int]
    buckets: list[_Bucket]
    max_abs: int

    @classmethod
    def from_matrix(cls, weights, *, dense_fill: float = 0.25) -> GroupedWeights:
        csr = sparse.csr_matrix(weights, copy=True)  # sorted here, never the caller's arrays
        csr.sort_indices()
        rows, cols = csr.shape
        values = np.asarray(csr.data, dtype=np.int64)
        max_abs = int(np.abs(values).max(initial=0))
        if csr.nnz > dense_fill * rows * cols:  # one dense product over every input
            dense = np.asarray(csr.toarray(), dtype=np.int64)
            bucket = _Bucket(np.arange(rows)[None], np.arange(cols)[None], dense[None])
            return cls((rows, cols), [bucket], max_abs)
        groups: dict[tuple[int, ...], list[int]] = {}  # input set -> the rows reading it
        for r in range(rows):
            groups.setdefault(tuple(csr.indices[csr.indptr[r] : csr.indptr[r + 1]]), []).append(r)
        by_size: dict[tuple[int, int], list[tuple[tuple[int, ...], list[int]]]] = {}
        for key, readers in groups.items():
            by_size.setdefault((len(readers), len(key)), []).append((key, readers))
        buckets = []
        for items in by_size.values():
            rows_of = np.array([m for _, m in items])
            inputs = np.array([k for k, _ in items], dtype=np.int64).reshape(len(items), -1)
            vals = np.stack([csr[m].toarray()[:, list(k)] for k, m in items]).astype(np.int64)
            buckets.append(_Bucket(rows_of, inputs, vals))
        return cls((rows, cols), buckets, max_abs)

    @property
    def largest_inner(self) -> int:
        return max((b.inputs.shape[1] for b in self.buckets), default=0)


def _digit_plan(q: int, w_abs: int, inner: int) -> tuple[int, int, int]:
    """(coefficient digit bits, coefficient digits, weight digit bits) with the fewest digit
    products, such that a sum of ``inner`` products of a coefficient digit (unsigned) and a
    weight digit (signed) stays below 2^51 and a Horner step ``acc 2^w_bits + sum`` (acc < q)
    below 2^52: exact in float64. Coefficient digit b > 0 is weighed by ``W 2^(b c_bits) mod
    q`` (up to q/2), digit 0 by ``W`` itself (up to ``w_abs``)."""
    budget = 51 - max(1, inner - 1).bit_length()  # bits for one product of two digits
    qbits = q.bit_length()
    best: tuple[int, int, int, int] | None = None
    for c_count in (1, 2, 3):
        c_bits = -(-qbits // c_count)
        w_bits = min(budget - c_bits + 1, 51 - qbits)
        if w_bits < 4:
            continue
        products = _digits_needed(w_abs, w_bits) + (c_count - 1) * _digits_needed(q // 2, w_bits)
        if best is None or products < best[3]:
            best = (c_bits, c_count, w_bits, products)
    if best is None:
        raise ValueError(f"{inner} inputs are too many for exact float64 digit products")
    return best[:3]


def _digits_needed(max_abs: int, bits: int) -> int:
    return max(1, -(-(max_abs.bit_length() + 1) // bits))


def _weight_digits(values: np.ndarray, q: int, c_bits: int, c_count: int, w_bits: int):
    """Per coefficient digit b: the signed base-2^w_bits digits (float64, highest last) of
    ``W 2^(b c_bits) mod q``, centered."""
    out = []
    for b in range(c_count):
        w = (values.astype(object) * (1 << (b * c_bits))) % q if b else values % q
        w = np.asarray(w, dtype=np.int64)
        w = np.where(w > q // 2, w - np.int64(q), w)
        out.append(_signed_digits(w, w_bits, _digits_needed(int(np.abs(w).max(initial=0)), w_bits)))
    return out


def _coefficient_digit(block, bits: int, b: int, count: int, cache: dict) -> np.ndarray:
    """Digit ``b`` (base 2^bits) of uint64 ``block`` as contiguous float64, made once."""
    if (bits, b) not in cache:
        part = block if count == 1 else (block >> np.uint64(b * bits)) & np.uint64((1 << bits) - 1)
        cache[bits, b] = np.ascontiguousarray(part, dtype=np.float64)
    return cache[bits, b]


# columns of a direct product per kernel call: the inputs a group reads stay in cache
_DIRECT_COLUMNS = 2048


@dataclass
class _Plan:
    """How one bucket's product is made: the direct kernel on residues (``c_bits`` 0), or
    float64 digit products through BLAS."""

    bucket: _Bucket
    dense: bool  # one group reading every input, in order (a dense layer)
    c_bits: int = 0  # bits of a coefficient digit; 0: the direct kernel
    w_bits: int = 0  # bits of a weight digit
    digits: list = field(default_factory=list)  # per coefficient digit, the weight digits
    residues: np.ndarray | None = None  # the direct kernel's weights mod q, and them over q
    ratios: np.ndarray | None = None

    @property
    def direct(self) -> bool:
        return self.c_bits == 0


@dataclass
class ModularProduct:
    """``W @ coefficients mod q`` for one ``W`` and one prime ``q``: the weight digits are made
    once (Python integers: the slow part) and reused over any columns of coefficients.

    A convolution's groups (each output position's rows and the inputs they read) take the
    direct kernel (:mod:`pifair.secure.he.kernels`), which reads the coefficients in place and
    writes the outputs in place: measured on LeNet-5's C3 (16 rows x 150 inputs per group), it
    is 2-3x the float64-digit BLAS path, whose small batched products run one BLAS thread. A
    dense layer (one group of every input) takes BLAS, whose threads pay off there."""

    weights: GroupedWeights
    q: int
    # groups of at most this many weights (readers x inputs) take the direct kernel; 0: none
    small_group: int = 1 << 20
    plans: list[_Plan] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.q >= 1 << 48:
            raise ValueError("moduli up to 48 bits (the float64 recombination)")
        inner, q = self.weights.shape[1], self.q
        for bucket in self.weights.buckets:
            groups, width = bucket.inputs.shape
            dense = groups == 1 and width == inner
            dense = dense and np.array_equal(bucket.inputs[0], np.arange(inner))
            small = bucket.rows.shape[1] * width <= self.small_group and width <= 1 << 14
            if small and not dense:  # the direct kernel, weights as residues
                residues = np.asarray(bucket.values % q, dtype=np.uint64)
                self.plans.append(_Plan(bucket, dense, residues=residues, ratios=residues / q))
                continue
            c_bits, c_count, w_bits = _digit_plan(q, self.weights.max_abs, width)
            digits = _weight_digits(bucket.values, q, c_bits, c_count, w_bits)
            self.plans.append(_Plan(bucket, dense, c_bits, w_bits, digits))

    @property
    def all_dense(self) -> bool:
        """Whether every product is one dense layer's (BLAS with its threads)."""
        return all(plan.dense for plan in self.plans)

    @property
    def direct(self) -> bool:
        """Whether every group takes the direct kernel (which reads whole rows in place)."""
        return all(plan.direct for plan in self.plans)

    def __call__(self, coefficients: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint64 ``(out, M)`` from uint64 ``coefficients`` ``(in, M)`` below ``q``, written
        into ``out`` when given (any 2-D view of that shape)."""
        rows, inner = self.weights.shape
        if coefficients.shape[0] != inner:
            raise ValueError(f"{coefficients.shape[0]} coefficient rows for {inner} inputs")
        if out is None:
            out = np.empty((rows, coefficients.shape[1]), dtype=np.uint64)
        if self.all_dense or self.direct:  # one large product (BLAS's threads pay off) or none
            self._products(coefficients, out)
            return out
        # many small products (a convolution's groups): BLAS's threads cost more than they
        # give, and spin when the cores are busy (seen: a server at a few % of a core)
        with threadpool_limits(1, user_api="blas"):
            self._products(coefficients, out)
        return out

    def _direct(self, coefficients: np.ndarray, out: np.ndarray) -> None:
        """The groups of the direct kernel, ``_DIRECT_COLUMNS`` columns per call."""
        plans = [plan for plan in self.plans if plan.direct]
        if not plans:
            return
        k, q = kernels(), np.uint64(self.q)
        source = np.ascontiguousarray(coefficients)  # a view when it is one already
        m = source.shape[1]
        for start in range(0, m, _DIRECT_COLUMNS):
            stop = min(m, start + _DIRECT_COLUMNS)
            for plan in plans:
                b = plan.bucket
                k.grouped_product(
                    b.rows, b.inputs, plan.residues, plan.ratios, source, q, out, start, stop
                )

    def _products(self, coefficients: np.ndarray, out: np.ndarray) -> None:
        """Every group's outputs into ``out``: the direct kernel's, then per BLAS bucket one
        batched float64 product per digit pair (exact: every sum below 2^51), recombined
        modulo ``q`` by fused Horner steps (:mod:`pifair.secure.he.kernels`)."""
        self._direct(coefficients, out)
        if self.direct:
            return
        inner, m = coefficients.shape
        # dense products in large column blocks (BLAS); grouped ones in cache-sized blocks
        chunk_bytes = 64 << 20 if self.all_dense else _CHUNK_BYTES
        chunk = max(1, min(m, chunk_bytes // (8 * inner)))
        for start in range(0, m, chunk):
            cols = slice(start, min(m, start + chunk))
            block = coefficients[:, cols]
            width = cols.stop - start
            digit_cache: dict[tuple[int, int], np.ndarray] = {}  # (bits, digit) -> float64 block
            for plan in self.plans:
                if not plan.direct:  # the direct kernel's were made above
                    residues = self._digit_product(plan, block, digit_cache)
                    out[plan.bucket.rows.reshape(-1), cols] = residues.reshape(-1, width)

    def _digit_product(self, plan: _Plan, block: np.ndarray, digit_cache: dict) -> np.ndarray:
        """One bucket's outputs (G, m, cols) at the columns of ``block``, as residues."""
        k, q, bucket = kernels(), float(self.q), plan.bucket
        total = None
        for b, w_digits in enumerate(plan.digits):
            cd = _coefficient_digit(block, plan.c_bits, b, len(plan.digits), digit_cache)
            acc = np.zeros((*bucket.rows.shape, block.shape[1]))
            gathered = cd[None] if plan.dense else cd[bucket.inputs]  # (G, k, cols)
            for wd in reversed(w_digits):
                k.horner_step(acc, np.matmul(wd, gathered), float(1 << plan.w_bits), q)
            if total is None:
                total = acc
            else:
                k.horner_step(total, acc, 1.0, q)
        assert total is not None
        residues = np.empty(total.shape, dtype=np.uint64)
        k.to_residues(total, q, residues)
        return residues


def grouped_mod_matmul(weights: GroupedWeights, coefficients: np.ndarray, q: int) -> np.ndarray:
    """``W @ coefficients mod q`` (uint64, ``(out, M)``) for integer ``W`` given as
    :class:`GroupedWeights` and uint64 ``coefficients`` ``(in, M)`` below ``q < 2^48``
    (:class:`ModularProduct` made and applied once)."""
    return ModularProduct(weights, q)(coefficients)
