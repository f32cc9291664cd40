"""Linear layers of batch-packed CKKS as exact modular matrix products over raw RNS data.

With one image per slot, a linear output is ``sum_j w_j ct_j`` with plaintext *scalars*
``w_j``. SEAL encodes a scalar at scale ``s`` as the constant ``W = round(w s)`` in every NTT
coefficient, so ``multiply_plain`` is a coefficient-wise product by ``W mod q_l`` and the
whole layer is, per RNS limb ``l``, the integer matrix product ``W (out x in) @ C (in x 2N)``
mod ``q_l`` over the ciphertexts' coefficients: one BLAS call instead of one SEAL call per
weight. This module reads and writes SEAL ciphertexts' coefficients (no Python binding exposes
them: SEAL's own serialization is read, zstd-compressed, and written back uncompressed) and
computes that product exactly in float64 by splitting both operands into signed 20-bit digits
(every partial sum stays below 2^53), then recombining the digits modulo ``q_l``.

Why by hand: neither SEAL's Python bindings (TenSEAL's sealapi) nor numpy offer a modular
matrix product of 60-bit integers; BLAS is exact on the small digits.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from ...extras import require
from .kernels import kernels

__all__ = [
    "DIGIT_BITS",
    "GroupedWeights",
    "grouped_mod_matmul",
    "mod_matmul",
    "read_coefficients",
    "scalar_weights",
    "write_coefficients",
]

DIGIT_BITS = 20
_MAGIC = b"\x5e\xa1"
_HEADER = struct.Struct("<2sBBBBH Q")  # magic, header size, major, minor, compr mode, _, size


def _zstd():
    return require("zstandard", extra="he", purpose="raw CKKS coefficients (RNS linear layers)")


_VERSION: tuple[int, int] | None = None


def _seal_version(ct, scratch: str | os.PathLike) -> tuple[int, int]:
    """SEAL's serialization version (its loader refuses another), read once from its own file."""
    global _VERSION
    if _VERSION is None:
        ct.dyn_array().save(str(scratch))
        _, _, major, minor, _, _, _ = _HEADER.unpack_from(Path(scratch).read_bytes())
        _VERSION = (major, minor)
    return _VERSION


def read_coefficients(ct, scratch: str | os.PathLike) -> np.ndarray:
    """The ciphertext's coefficients as uint64 ``(size, limbs, N)`` (NTT form, as SEAL keeps
    them). ``scratch`` is a file path (in /dev/shm when there is one)."""
    ct.dyn_array().save(str(scratch))
    raw = Path(scratch).read_bytes()
    global _VERSION
    _, header_size, major, minor, compr, _, _ = _HEADER.unpack_from(raw)
    _VERSION = (major, minor)
    body = raw[header_size:]
    if compr == 2:
        body = _zstd().ZstdDecompressor().decompress(body, max_output_size=len(body) * 64 + 2**20)
    elif compr != 0:
        raise ValueError(f"SEAL compression mode {compr} is not read here (zstd or none)")
    (count,) = struct.unpack_from("<Q", body)
    data = np.frombuffer(body, dtype=np.uint64, count=count, offset=8)
    return data.reshape(ct.size(), ct.coeff_modulus_size(), ct.poly_modulus_degree()).copy()


def write_coefficients(ct, data: np.ndarray, scratch: str | os.PathLike) -> None:
    """Replace ``ct``'s coefficients by ``data`` (same shape), through an uncompressed SEAL
    file; ``ct`` keeps its parameters id and scale."""
    data = np.ascontiguousarray(data, dtype=np.uint64)
    expected = (ct.size(), ct.coeff_modulus_size(), ct.poly_modulus_degree())
    if data.shape != expected:
        raise ValueError(f"coefficients of shape {data.shape}; the ciphertext holds {expected}")
    payload = struct.pack("<Q", data.size) + data.tobytes()
    major, minor = _seal_version(ct, scratch)
    header = _HEADER.pack(_MAGIC, _HEADER.size, major, minor, 0, 0, _HEADER.size + len(payload))
    Path(scratch).write_bytes(header + payload)
    ct.dyn_array().load(str(scratch))


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


def _unsigned_digits(values: np.ndarray, count: int) -> list[np.ndarray]:
    """Base-2^20 digits (each in [0, 2^20)) of uint64 ``values``, as float64: one shift, one
    mask and one conversion per digit."""
    mask = np.uint64((1 << DIGIT_BITS) - 1)
    return [((values >> np.uint64(DIGIT_BITS * k)) & mask).astype(np.float64) for k in range(count)]


def _digit_count(max_abs: int) -> int:
    # n signed digits hold |v| < 2^(20 n - 1) less a little: two bits of margin
    return max(1, math.ceil((max_abs.bit_length() + 2) / DIGIT_BITS))


def _times_two_to(acc: np.ndarray, bits: int, q: int) -> np.ndarray:
    """``acc * 2^bits mod q`` for uint64 ``acc < q``, in steps that never overflow 64 bits."""
    step = 64 - q.bit_length()  # acc * 2^step < 2^64
    qq = np.uint64(q)
    while bits > 0:
        s = min(step, bits)
        acc = (acc << np.uint64(s)) % qq
        bits -= s
    return acc


def mod_matmul(weights, coefficients: np.ndarray, q: int) -> np.ndarray:
    """``weights @ coefficients mod q`` exactly, for int64 ``weights`` (out, in; dense or
    scipy sparse, any sign) and uint64 ``coefficients`` (in, M) below ``q < 2^61``."""
    if q >= 1 << 61:
        raise ValueError("moduli up to 61 bits")
    csr = sparse.csr_matrix(weights) if sparse.issparse(weights) else None
    dense = None if csr is not None else np.asarray(weights, dtype=np.int64)
    w_values = np.asarray(csr.data if csr is not None else dense, dtype=np.int64)
    shape = csr.shape if csr is not None else dense.shape  # type: ignore[union-attr]
    w_count = _digit_count(int(np.abs(w_values).max(initial=0)))
    c_count = math.ceil(q.bit_length() / DIGIT_BITS)
    inner = shape[1]
    # a signed weight digit times an unsigned coefficient digit is below 2^39; a sum of
    # min(w_count, c_count) products of `inner` terms must stay below 2^53 (exact in float64)
    if min(w_count, c_count) * inner * (1 << (2 * DIGIT_BITS - 1)) >= 1 << 53:
        raise ValueError(f"{inner} inputs are too many for exact float64 digit products")
    w_digits: list = _signed_digits(w_values, DIGIT_BITS, w_count)
    if csr is not None:
        w_digits = [sparse.csr_matrix((d, csr.indices, csr.indptr), shape=shape) for d in w_digits]
    c_digits = _unsigned_digits(coefficients, c_count)
    # sums of digit products by their power of 2^20, exact in float64, then int64
    sums = [np.zeros((shape[0], coefficients.shape[1])) for _ in range(w_count + c_count - 1)]
    for a, wd in enumerate(w_digits):
        for b, cd in enumerate(c_digits):
            sums[a + b] += np.asarray(wd @ cd)
    qq = np.int64(q)
    acc = np.zeros(sums[0].shape, dtype=np.uint64)
    for s in reversed(sums):  # Horner in base 2^20, mod q
        acc = _times_two_to(acc, DIGIT_BITS, q)
        term = np.mod(s.astype(np.int64), qq).astype(np.uint64)
        acc = (acc + term) % np.uint64(q)
    return acc


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


def grouped_mod_matmul(weights: GroupedWeights, coefficients: np.ndarray, q: int) -> np.ndarray:
    """``W @ coefficients mod q`` (uint64, ``(out, M)``) for integer ``W`` given as
    :class:`GroupedWeights` and uint64 ``coefficients`` ``(in, M)`` below ``q < 2^48``: per
    bucket one batched float64 product per digit pair (exact: every sum below 2^51),
    recombined modulo ``q`` by fused Horner steps (:mod:`pifair.secure.he.kernels`)."""
    if q >= 1 << 48:
        raise ValueError("moduli up to 48 bits (the float64 recombination)")
    rows, inner = weights.shape
    if coefficients.shape[0] != inner:
        raise ValueError(f"{coefficients.shape[0]} coefficient rows for {inner} inputs")
    k = kernels()
    m = coefficients.shape[1]
    plans = []
    for bucket in weights.buckets:
        c_bits, c_count, w_bits = _digit_plan(q, weights.max_abs, bucket.inputs.shape[1])
        groups, width = bucket.inputs.shape
        dense = (
            groups == 1 and width == inner and np.array_equal(bucket.inputs[0], np.arange(inner))
        )
        digits = _weight_digits(bucket.values, q, c_bits, c_count, w_bits)
        plans.append((bucket, dense, c_bits, w_bits, digits))
    all_dense = all(plan[1] for plan in plans)
    # dense products in large column blocks (BLAS); grouped ones in cache-sized blocks
    chunk_bytes = 64 << 20 if all_dense else _CHUNK_BYTES
    chunk = max(1, min(m, chunk_bytes // (8 * inner)))
    out = np.empty((rows, m), dtype=np.uint64)
    for start in range(0, m, chunk):
        cols = slice(start, min(m, start + chunk))
        block = coefficients[:, cols]
        width = cols.stop - start
        digit_cache: dict[tuple[int, int], np.ndarray] = {}  # (bits, digit) -> float64 block
        for bucket, dense, c_bits, w_bits, digits in plans:
            total = None
            for b, w_digits in enumerate(digits):
                cd = _coefficient_digit(block, c_bits, b, len(digits), digit_cache)
                acc = np.zeros((bucket.rows.shape[0], bucket.rows.shape[1], width))
                gathered = cd[None] if dense else cd[bucket.inputs]  # (G, k, cols)
                for wd in reversed(w_digits):
                    k.horner_step(acc, np.matmul(wd, gathered), float(1 << w_bits), float(q))
                if total is None:
                    total = acc
                else:
                    k.horner_step(total, acc, 1.0, float(q))
            assert total is not None
            residues = np.empty(total.shape, dtype=np.uint64)
            k.to_residues(total, float(q), residues)
            out[bucket.rows.reshape(-1), cols] = residues.reshape(-1, width)
    return out
