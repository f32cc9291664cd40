"""Encrypted batches as the batched engine holds them: one array ``(limbs, features, size, N)``
of uint64 in SEAL's NTT form, one ciphertext per feature and one image per slot.

:class:`CipherBatch` is a batch (saved and loaded as raw ``.npy``), :class:`SquaredBatch` the
square of one made limb by limb as the next stage reads it, :class:`StageOutput` where a stage
writes its outputs a block of rows at a time (anonymous shared memory, or an unlinked file when
it is larger than memory allows).
"""

from __future__ import annotations

import mmap
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...atomic import atomic_open
from .kernels import kernels

__all__ = ["INPUT_CHUNK_BYTES", "CipherBatch", "SquaredBatch", "StageOutput", "shared_array"]

# the bytes of a linear stage's input read at once (one limb, some NTT coefficients)
INPUT_CHUNK_BYTES = 32 << 20


def shared_array(shape: tuple[int, ...], dtype=np.uint64) -> np.ndarray:
    """A zeroed array in anonymous shared memory: forked workers write it, the parent reads
    it; no file anywhere, released with the last reference."""
    nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    buffer = mmap.mmap(-1, nbytes)
    return np.frombuffer(buffer, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


class StageOutput:
    """A linear stage's outputs (limbs, rows, 2, N), filled a block of rows at a time: in
    anonymous shared memory, or, with ``spill``, in an unlinked file of that folder (nothing
    left behind, even by a killed run) that each block is written to with plain positioned
    writes and that the next stage then reads through a read-only mapping: page cache the
    kernel may drop. (Workers writing a shared file mapping directly fault in every page
    through the file system, hundreds of times slower than sequential writes.)"""

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        spill: Path | None,
        *,
        within: np.ndarray | None = None,
    ) -> None:
        """``within``: a shared array of at least ``shape[1]`` rows to write into instead of
        a new one (its pages already touched: fresh pages cost this VM seconds per GB)."""
        self.shape, self.file = shape, None
        if within is not None:
            self.data = within[:, : shape[1]]
            return
        if spill is None:
            self.data = shared_array(shape)
            return
        fd, path = tempfile.mkstemp(prefix="pifair-stage-", dir=spill)
        os.unlink(path)
        self.file = os.fdopen(fd, "r+b")
        self.file.truncate(int(np.prod(shape)) * 8)

    def block(self, r0: int, r1: int) -> np.ndarray:
        """Where the workers write rows ``r0:r1``."""
        if self.file is None:
            return self.data[:, r0:r1]
        limbs, _, size, n = self.shape
        return shared_array((limbs, r1 - r0, size, n))

    def commit(self, r0: int, block: np.ndarray) -> None:
        """Rows from ``r0`` written by the workers: to the file when spilling."""
        if self.file is None:
            return
        limbs, rows, size, n = self.shape
        row_bytes = size * n * 8
        for limb in range(limbs):
            view = np.ascontiguousarray(block[limb]).reshape(-1).view(np.uint8).data
            offset = (limb * rows + r0) * row_bytes
            while view.nbytes:
                written = os.pwrite(self.file.fileno(), view, offset)
                view, offset = view[written:], offset + written

    def array(self) -> np.ndarray:
        """The finished outputs (a read-only mapping of the file when spilling)."""
        if self.file is None:
            return self.data
        data = np.memmap(self.file, dtype=np.uint64, mode="r", shape=self.shape)
        self.file.close()  # the mapping keeps the unlinked file alive
        return data


@dataclass
class CipherBatch:
    """Encrypted features of a batch of images: one ciphertext per feature, image b in slot b."""

    data: np.ndarray  # (limbs, features, 2, N) uint64, NTT form
    scales: np.ndarray  # (features,) the CKKS scale of each ciphertext
    images: int

    @property
    def limbs(self) -> int:
        return self.data.shape[0]

    @property
    def features(self) -> int:
        return self.data.shape[1]

    @property
    def size(self) -> int:
        return self.data.shape[2]

    def limb(
        self, i: int, columns: slice = slice(None), features: np.ndarray | None = None
    ) -> np.ndarray:
        """Limb ``i`` of the ciphertexts ``features`` (sorted; None: all) at the NTT
        coefficients ``columns``: (features, size, len(columns))."""
        if features is None:
            return self.data[i][:, :, columns]
        return self.data[i][:, :, columns][features]  # the chunk first: only it is copied

    def save(self, folder: str | os.PathLike) -> None:
        """Write as ``ciphertexts.npy`` (raw uint64) and ``scales.npy`` plus the image count."""
        folder = Path(folder)
        with atomic_open(folder / "ciphertexts.npy") as f:
            np.save(f, self.data)
        with atomic_open(folder / "scales.npy") as f:
            np.save(f, np.append(self.scales, float(self.images)))

    @classmethod
    def load(cls, folder: str | os.PathLike, *, memory_map: bool = True) -> CipherBatch:
        """Read a saved batch; with ``memory_map`` the ciphertexts stay on disk until read."""
        folder = Path(folder)
        data = np.load(folder / "ciphertexts.npy", mmap_mode="r" if memory_map else None)
        tail = np.load(folder / "scales.npy")
        return cls(data, tail[:-1], int(tail[-1]))


@dataclass
class SquaredBatch:
    """``[x^2, x[kept]]`` of a batch, made one limb at a time when the next linear stage reads
    it (never the whole squared batch: 1.5x the input's memory). The square is not
    relinearized (size 3); the kept features are times the integer Delta, zero-padded to size
    3, at scale Delta^2 like the squares."""

    source: CipherBatch
    kept: np.ndarray
    moduli: list[int]
    factor: int
    seconds: float = 0.0  # time spent squaring, over every read

    @property
    def limbs(self) -> int:
        return self.source.limbs

    @property
    def features(self) -> int:
        return self.source.features + len(self.kept)

    @property
    def size(self) -> int:
        return 3

    @property
    def images(self) -> int:
        return self.source.images

    @property
    def scales(self) -> np.ndarray:
        s = self.source.scales
        return np.concatenate([s**2, s[self.kept] * self.factor])

    def limb(
        self, i: int, columns: slice = slice(None), features: np.ndarray | None = None
    ) -> np.ndarray:
        """Limb ``i`` of the squared features ``features`` (sorted indices into ``[x^2,
        x[kept]]``; None: all) at the NTT coefficients ``columns`` (a square in NTT form is a
        product coefficient by coefficient, so any columns can be made alone)."""
        t0 = time.perf_counter()
        count = self.source.features
        squares: slice | np.ndarray
        if features is None:
            squares, kept = slice(None), self.kept
        else:
            squares, kept = (
                features[features < count],
                self.kept[features[features >= count] - count],
            )
        chunk = self.source.data[i][:, :, columns]  # a view; indexing below copies the chunk
        data, q = np.ascontiguousarray(chunk[squares]), self.moduli[i]
        n_squares, _, n = data.shape
        out = np.zeros((n_squares + len(kept), 3, n), dtype=np.uint64)
        k = kernels()
        k.tensor_square(data, q, out[:n_squares])
        if len(kept):
            source = np.ascontiguousarray(chunk[kept])
            lifted = np.empty((len(kept), 2, n), dtype=np.uint64)
            k.scale_by(source, self.factor % q, q, lifted)
            out[n_squares:, :2] = lifted
        self.seconds += time.perf_counter() - t0
        return out
