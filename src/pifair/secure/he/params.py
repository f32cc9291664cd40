"""CKKS parameters from a program's multiplicative depth, within the HE standard's 128-bit limits.

The coefficient modulus is [first, scale x depth, special]: the first prime holds the final
result (scale bits plus head room for its integer part), each level costs one scale-sized
prime, and the special prime serves key switching. The largest total allowed for 128-bit
classical security (HomomorphicEncryption.org standard, as SEAL's ``CoeffModulus.MaxBitCount``)
decides the ring degree N; the slots, N/2, are the images one ciphertext carries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...errors import ConfigError, UnsupportedLayerError

__all__ = [
    "MAX_LOG_Q",
    "CKKSParameters",
    "choose_parameters",
    "folded_parameters",
    "HEDepthError",
]

# HE standard (2018), 128-bit classical security, ternary secrets: max log2 Q per ring degree.
MAX_LOG_Q = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


class HEDepthError(UnsupportedLayerError):
    """A program deeper than 128-bit-secure CKKS parameters allow."""


@dataclass(frozen=True)
class CKKSParameters:
    poly_modulus_degree: int
    coeff_bits: tuple[int, ...]
    scale_bits: int
    depth: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def log_q(self) -> int:
        return sum(self.coeff_bits)

    def as_dict(self) -> dict:
        return asdict(self) | {
            "slots": self.slots,
            "log_q": self.log_q,
            "max_log_q": MAX_LOG_Q[self.poly_modulus_degree],
            "security_bits": 128,
        }


def choose_parameters(
    depth: int, *, scale_bits: int = 40, head_bits: int = 20, min_degree: int = 8192
) -> CKKSParameters:
    """The smallest N (at least ``min_degree``) whose 128-bit limit holds ``depth`` levels."""
    if depth < 1:
        raise ConfigError(f"depth must be >= 1, got {depth}")
    first = min(60, scale_bits + head_bits)
    bits = (first,) + (scale_bits,) * depth + (first,)
    for n in sorted(MAX_LOG_Q):
        if n >= min_degree and sum(bits) <= MAX_LOG_Q[n]:
            return CKKSParameters(n, bits, scale_bits, depth)
    largest = max(MAX_LOG_Q)
    most = (MAX_LOG_Q[largest] - 2 * first) // scale_bits
    raise HEDepthError(
        f"the model needs multiplicative depth {depth}, i.e. log2 Q = {sum(bits)} bits at "
        f"{scale_bits}-bit scale; 128-bit security allows at most {MAX_LOG_Q[largest]} bits "
        f"(N = {largest}), that is depth {most}. Use fewer layers or degree-2 polynomials."
    )


def folded_parameters(
    depth: int,
    *,
    scale_bits: int | None = None,
    max_scale_bits: int = 36,
    min_scale_bits: int = 25,
    head_bits: int = 10,
    min_degree: int = 8192,
) -> CKKSParameters:
    """The smallest N whose 128-bit limit holds ``depth`` levels at a scale of at least
    ``min_scale_bits`` bits, with the largest scale that fits (at most ``max_scale_bits``);
    ``scale_bits`` fixes the scale instead. The first prime holds the result (scale plus
    ``head_bits``, at most 47 bits: the exact float64 products of the linear stages take
    primes below 2^48), the last is the key-switching prime."""
    scales = [scale_bits] if scale_bits else list(range(max_scale_bits, min_scale_bits - 1, -1))
    for n in sorted(MAX_LOG_Q):
        if n < min_degree:
            continue
        for k in scales:
            first = min(47, k + head_bits)
            bits = (first,) + (k,) * depth + (first,)
            if sum(bits) <= MAX_LOG_Q[n]:
                return CKKSParameters(n, bits, k, depth)
    largest = max(MAX_LOG_Q)
    raise HEDepthError(
        f"the folded program needs depth {depth}: at a {scales[-1]}-bit scale that is "
        f"{scales[-1] * (depth + 2) + 2 * head_bits} bits of modulus, more than 128-bit security "
        f"allows even at N = {largest} ({MAX_LOG_Q[largest]} bits). Use fewer layers."
    )
