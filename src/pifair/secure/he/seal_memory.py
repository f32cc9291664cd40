"""Zero-copy numpy views of SEAL ciphertexts' coefficients, through TenSEAL's sealapi.

The batched engine computes linear layers on the raw RNS coefficients (one modular matrix
product per limb, :mod:`pifair.secure.he.rns`) and hands ciphertexts to SEAL only for what
needs SEAL's NTTs (square, relinearization, rescale). sealapi exposes a ciphertext's
coefficients one at a time (``dyn_array().at(i)``) or through SEAL's compressed serialization
(slow: a file round trip per ciphertext). This module finds the coefficient
buffer itself: the pybind11 instance holds a pointer to the C++ ``seal::Ciphertext``, whose
fields (size, N, limbs, scale, then a ``DynArray`` with capacity, size and data pointer) are
located by their known values and checked before any buffer is touched: the first and last
coefficients read through the view must equal what sealapi's own ``at`` returns. A layout that
does not check out raises :class:`SealLayoutError` (the SEAL engine, ``--engine seal``, works
without this module).

Why by hand: no SEAL binding on PyPI exposes ciphertext memory as a buffer.
"""

from __future__ import annotations

import ctypes
import struct

import numpy as np

__all__ = ["SealLayoutError", "coefficients", "write_coefficients"]

_WORDS = 32  # the seal::Ciphertext fields searched, in 8-byte words
_POINTER_MIN, _POINTER_MAX = 1 << 16, 1 << 48


class SealLayoutError(RuntimeError):
    """The SEAL objects are not laid out as this module reads them (another TenSEAL build)."""


def _words(address: int, count: int):
    return (ctypes.c_uint64 * count).from_address(address)


def _cpp_object(obj) -> int:
    # pybind11 instance: PyObject header (refcount, type), then the value pointer
    address = _words(id(obj), 3)[2]
    if not _POINTER_MIN <= address < _POINTER_MAX:
        raise SealLayoutError("the pybind11 instance holds no C++ object pointer where expected")
    return address


def _mapped(address: int, length: int) -> bool:
    """Whether ``[address, address + length)`` is readable memory of this process (possibly
    over several adjacent mappings)."""
    try:
        with open("/proc/self/maps") as maps:
            spans = []
            for line in maps:
                span, perms = line.split()[:2]
                if perms.startswith("r"):
                    spans.append(tuple(int(v, 16) for v in span.split("-")))
    except OSError:
        return False
    reached = address
    for lo, hi in sorted(spans):
        if lo <= reached < hi:
            reached = hi
        if reached >= address + length:
            return True
    return False


_POINTER_WORD: int | None = None  # where the data pointer sits, found once and checked always


def _data_address(ct) -> tuple[int, int]:
    """(address of the coefficient buffer, number of uint64 in it), checked."""
    global _POINTER_WORD
    size, n, limbs = ct.size(), ct.poly_modulus_degree(), ct.coeff_modulus_size()
    count = ct.dyn_array().size()
    if count != size * n * limbs or count == 0:
        raise SealLayoutError("a ciphertext whose buffer size is not size x N x limbs")
    fields = list(_words(_cpp_object(ct), _WORDS))
    if _POINTER_WORD is None:
        header = next((i for i in range(_WORDS - 3) if fields[i : i + 3] == [size, n, limbs]), None)
        if header is None:
            raise SealLayoutError("seal::Ciphertext's size, N and limbs not found in the object")
        (scale,) = struct.unpack("<d", struct.pack("<Q", fields[header + 3]))
        if scale != ct.scale:
            raise SealLayoutError("seal::Ciphertext's scale not where expected")
        # DynArray: capacity, size, then the data pointer (a readable mapping of count words)
        for i in range(header + 4, _WORDS - 1):
            if fields[i - 1] >= count == fields[i] and _mapped(fields[i + 1], 8 * count):
                _POINTER_WORD = i + 1
                break
        else:
            raise SealLayoutError("seal::Ciphertext's coefficient buffer not found")
    pointer = fields[_POINTER_WORD]
    if fields[_POINTER_WORD - 1] != count or not _POINTER_MIN <= pointer < _POINTER_MAX:
        raise SealLayoutError("seal::Ciphertext's buffer size or pointer not where found before")
    ends = _words(pointer, count)
    if ends[0] != ct.dyn_array().at(0) or ends[count - 1] != ct.dyn_array().at(count - 1):
        raise SealLayoutError("seal::Ciphertext's coefficient buffer does not hold its values")
    return pointer, count


def coefficients(ct) -> np.ndarray:
    """A writable uint64 view ``(size, limbs, N)`` of ``ct``'s coefficients (NTT form), valid
    while ``ct`` lives and is not resized (copy it to keep it longer)."""
    address, count = _data_address(ct)
    view = np.ctypeslib.as_array(_words(address, count))
    return view.reshape(ct.size(), ct.coeff_modulus_size(), ct.poly_modulus_degree())


def write_coefficients(ct, data: np.ndarray) -> None:
    """Overwrite ``ct``'s coefficients with ``data`` (its shape ``(size, limbs, N)``)."""
    view = coefficients(ct)
    if data.shape != view.shape:
        raise ValueError(f"coefficients of shape {data.shape}; the ciphertext holds {view.shape}")
    np.copyto(view, data, casting="no")
