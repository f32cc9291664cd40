"""The batched CKKS engine: linear layers as modular matrix products over raw RNS data.

A batch of encrypted features lives in one array ``(limbs, features, 2, N)`` of uint64 (NTT
form, limb-major so that a limb of every ciphertext is one contiguous matrix). A linear stage
is, per limb, one exact modular product of the integer-encoded weights with that matrix
(:class:`pifair.secure.he.rns.ModularProduct`: a dense layer one product, a convolution a
batched product over output positions). SEAL does only what needs its NTTs: the rescale after
each linear stage and the square, relinearization and rescale of each activation, one
ciphertext per feature, on views of the shared arrays (:mod:`pifair.secure.he.seal_memory`),
in forked workers that write into anonymous shared memory (nothing in /dev/shm, nothing left
behind by a killed run). The program is the folded one (:mod:`pifair.secure.he.fold`): one
level per activation.

Exact scales: a linear stage encodes input j's weights at ``Delta q / s_j`` so that every
product has scale ``Delta q`` and the rescale by q leaves exactly Delta; squares leave
``Delta^2 / q``, which the next stage's weights absorb the same way.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from ...errors import ConfigError
from . import rns, seal_memory
from .cipher_batch import (
    INPUT_CHUNK_BYTES,
    CipherBatch,
    SquaredBatch,
    StageOutput,
    shared_array,
)
from .compile import LinearStage
from .fold import FoldedProgram, SquareStage
from .kernels import kernels, warm_up
from .params import CKKSParameters
from .seal import (
    ClientKeys,
    StageTiming,
    encryption_parameters,
    read_encryption_parameters,
    run_forked,
    seal_context,
    sealapi,
)

__all__ = ["CipherBatch", "BatchedClient", "BatchedServer", "restrict_to_sources"]

# a stage whose rows read at most this many inputs on average is local (a pooling reads 4)
_LOCAL_TERMS = 16


def restrict_to_sources(
    weights: sparse.csr_matrix, features: int, kept: np.ndarray
) -> tuple[np.ndarray, sparse.csr_matrix, np.ndarray]:
    """The rows ``weights`` of a stage reading a square ``[x^2 (features), x[kept]]``,
    rewritten to read the square of only the features they need: returns those features of
    ``x`` (sorted), the weights over ``[x[src]^2, x[src][kept_sub]]`` and ``kept_sub``."""
    columns = np.unique(weights.indices)
    squares = columns[columns < features]
    kept_read = columns[columns >= features] - features  # positions in kept, sorted
    source = np.union1d(squares, kept[kept_read]).astype(np.int64)
    indices = np.where(
        weights.indices < features,
        np.searchsorted(source, weights.indices),
        len(source) + np.searchsorted(kept_read, weights.indices - features),
    )
    shape = (weights.shape[0], len(source) + len(kept_read))
    restricted = sparse.csr_matrix((weights.data, indices, weights.indptr), shape=shape)
    return source, restricted, np.searchsorted(source, kept[kept_read]).astype(np.int64)


def _grouped_reads(
    w: sparse.csr_matrix, integer: np.ndarray, batch: CipherBatch | SquaredBatch
) -> tuple[rns.GroupedWeights, np.ndarray | None]:
    """The integer weights of rows ``w`` grouped for :class:`rns.ModularProduct`, and the
    inputs they read (None: indices into every feature). A squared batch makes only the
    inputs read (its squares are computed chunk by chunk); a plain batch is read in place."""
    used = np.unique(w.indices)
    read = used if isinstance(batch, SquaredBatch) and len(used) < batch.features else None
    indices = w.indices if read is None else np.searchsorted(read, w.indices)
    inputs = batch.features if read is None else len(read)
    matrix = sparse.csr_matrix((integer, indices, w.indptr), shape=(w.shape[0], inputs))
    return rns.GroupedWeights.from_matrix(matrix), read


class _Context:
    """SEAL's context, its levels (by number of limbs) and a ciphertext template per level."""

    def __init__(self, parms) -> None:
        s = sealapi()
        self.parms = parms
        self.context = seal_context(parms)
        self.evaluator = s.Evaluator(self.context)
        self.encoder = s.CKKSEncoder(self.context)
        self.n = parms.poly_modulus_degree()
        self.levels: dict[int, tuple[list[int], list[int]]] = {}  # limbs -> (parms_id, moduli)
        data = self.context.first_context_data()
        while data is not None:
            moduli = [m.value() for m in data.parms().coeff_modulus()]
            self.levels[len(moduli)] = (data.parms_id(), moduli)
            data = data.next_context_data()
        self._templates: dict[int, Any] = {}

    @property
    def top(self) -> int:
        return max(self.levels)

    def template(self, limbs: int, encrypt) -> Any:
        """A ciphertext at ``limbs`` limbs to overwrite (an encryption of zero by
        ``encrypt(plaintext, ciphertext)``, switched down), a new one each call."""
        if limbs not in self._templates:
            s = sealapi()
            pt, ct = s.Plaintext(), s.Ciphertext()
            self.encoder.encode(0.0, self.levels[self.top][0], 1.0, pt)
            encrypt(pt, ct)
            self.evaluator.mod_switch_to_inplace(ct, self.levels[limbs][0])
            self._templates[limbs] = ct
        ct = sealapi().Ciphertext()
        self.evaluator.negate(self._templates[limbs], ct)  # a copy (sealapi has no copy)
        return ct

    def to_seal(self, batch_data: np.ndarray, feature: int, scale: float, encrypt):
        """Feature ``feature`` of a batch array as a SEAL ciphertext (any size: 2, or 3 and 5
        after squares that were not relinearized)."""
        limbs, _, size, _ = batch_data.shape
        ct = self.template(limbs, encrypt)
        if size != 2:
            ct.resize(self.context, self.levels[limbs][0], size)
        seal_memory.write_coefficients(ct, np.moveaxis(batch_data[:, feature], 0, 1))
        ct.scale = scale
        return ct


class BatchedClient:
    """Holds the secret key: makes the keys, encrypts a batch into one array, decrypts."""

    def __init__(self, params: CKKSParameters, keys: ClientKeys | None = None) -> None:
        s = sealapi()
        self.params = params
        self.ctx = _Context(encryption_parameters(params))
        self.keys = keys or ClientKeys(self.ctx.context)
        # symmetric encryption with the secret key: half the time of public-key encryption and
        # less noise (the error e only, not u e + e0 + e1 s)
        self.encryptor = s.Encryptor(self.ctx.context, self.keys.secret)
        self.decryptor = s.Decryptor(self.ctx.context, self.keys.secret)
        self.scale = 2.0**params.scale_bits

    def write_server_keys(self, folder: str | os.PathLike) -> list[str]:
        """The parameter, public and relinearization key files: all the server gets."""
        return self.keys.write_server_files(self.ctx.parms, folder)

    @classmethod
    def with_secret_key(cls, params: CKKSParameters, path: str | os.PathLike) -> BatchedClient:
        """The client of ``params`` holding the secret key saved at ``path`` (decrypts only)."""
        context = seal_context(encryption_parameters(params))
        return cls(params, ClientKeys.load(context, path))

    def encrypt(self, x: np.ndarray, *, progress=None) -> CipherBatch:
        """(B, features) with B <= N/2 -> one ciphertext per feature; the last slots of a
        short batch hold zeros."""
        s = sealapi()
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        slots = self.params.slots
        if len(x) > slots:
            raise ConfigError(f"batch {len(x)} exceeds the {slots} slots; split it")
        limbs = self.ctx.top
        data = np.empty((limbs, x.shape[1], 2, self.ctx.n), dtype=np.uint64)
        pt, ct = s.Plaintext(), s.Ciphertext()
        for j, column in enumerate(x.T):
            self.ctx.encoder.encode(column.tolist(), self.scale, pt)
            self.encryptor.encrypt_symmetric(pt, ct)
            data[:, j] = np.moveaxis(seal_memory.coefficients(ct), 1, 0)
            if progress is not None:
                progress(1)
        return CipherBatch(data, np.full(x.shape[1], self.scale), len(x))

    def decrypt(self, batch: CipherBatch) -> np.ndarray:
        s = sealapi()
        cols = []
        pt = s.Plaintext()
        for j in range(batch.features):
            ct = self.ctx.to_seal(
                batch.data, j, float(batch.scales[j]), self.encryptor.encrypt_symmetric
            )
            self.decryptor.decrypt(ct, pt)
            cols.append(np.asarray(self.ctx.encoder.decode_double(pt))[: batch.images])
        return np.stack(cols, axis=1)


@dataclass
class BatchedServer:
    """Runs a folded program on a :class:`CipherBatch` with the public files only
    (``parms.seal``, ``public.seal`` and ``relin.seal`` in ``keys``; the public key only makes
    the zero ciphertexts that SEAL's operations overwrite). A square leaves size-3 ciphertexts
    (no key switch); the next linear stage runs on them as they are and its outputs are
    relinearized: one key switch per output of that stage instead of one per squared input."""

    keys: Path
    scale_bits: int
    workers: int = 1
    # at most this many bytes of a linear stage's products at once: its outputs are made and
    # rescaled in blocks of rows (None: all at once)
    block_bytes: int | None = None
    # stage outputs larger than spill_bytes live in unlinked files of spill_dir (pages the
    # kernel may write out), not in anonymous memory
    spill_dir: Path | None = None
    spill_bytes: int = 4 << 30
    # a linear stage whose outputs are over fuse_bytes, squared, then read by a local stage (a
    # pooling) runs with it a block of the local stage's rows at a time (None: never)
    fuse_bytes: int | None = None
    timings: list[StageTiming] = field(default_factory=list)
    # the products of a block, reused from block to block and stage to stage: the first touch
    # of fresh pages costs seconds per GB on this VM, more than the products' own copies
    _scratch: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64), repr=False)

    def __post_init__(self) -> None:
        s = sealapi()
        self.keys = Path(self.keys)
        self.ctx = _Context(read_encryption_parameters(self.keys))
        public, self.relin = s.PublicKey(), s.RelinKeys()
        for key, name in ((public, "public.seal"), (self.relin, "relin.seal")):
            try:
                key.load(self.ctx.context, str(self.keys / name))
            except (RuntimeError, ValueError) as err:  # SEAL's own words, e.g. a secret key
                raise ConfigError(
                    f"{self.keys / name} is not the {name.split('.')[0]} key of these "
                    f"parameters ({err}); the client must write it again, never a secret key"
                ) from err
        self.encryptor = s.Encryptor(self.ctx.context, public)
        self.scale = 2.0**self.scale_bits
        warm_up()  # kernels compiled (once per install) before any timed step

    def _linear(
        self, weights: sparse.csr_matrix, batch: CipherBatch | SquaredBatch, drops: int
    ) -> np.ndarray:
        """The products of ``weights`` (rows of a stage) per limb, before the rescale:
        (limbs, rows, size, N), every output at scale Delta times the ``drops`` last primes."""
        limbs, features, size, n = batch.limbs, batch.features, batch.size, self.ctx.n
        if weights.shape[1] != features:
            raise ConfigError(f"a stage of {weights.shape[1]} inputs got {features}")
        _, moduli = self.ctx.levels[limbs]
        target = self.scale * math.prod(float(q) for q in moduli[limbs - drops :])
        w = weights.tocsr()
        integer = rns.scalar_weights(w.data, (target / batch.scales)[w.indices])
        grouped, read = _grouped_reads(w, integer, batch)
        inputs = features if read is None else len(read)
        out = self._products_buffer((limbs, w.shape[0], size, n))
        # the inputs a few NTT coefficients at a time (the products are column by column):
        # the input read at once, squared or not, stays near INPUT_CHUNK_BYTES
        width = max(64, min(n, INPUT_CHUNK_BYTES // (max(1, inputs) * size * 8)))
        for i in range(limbs):  # threads: BLAS's and the kernels' (numba)
            product = rns.ModularProduct(grouped, moduli[i])  # weight digits once per prime
            if product.direct and isinstance(batch, CipherBatch):  # read and written in place
                limb = np.asarray(batch.data[i]).reshape(features, -1)
                product(limb, out[i].reshape(w.shape[0], -1))
                continue
            for c0 in range(0, n, width):
                cols = slice(c0, min(n, c0 + width))
                flat = np.ascontiguousarray(batch.limb(i, cols, read)).reshape(inputs, -1)
                out[i, :, :, cols] = product(flat).reshape(-1, size, cols.stop - c0)
        return out

    def _products_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised array of ``shape`` in the reused scratch buffer (grown as needed;
        the previous block's products are done with when the next block asks)."""
        size = math.prod(shape)
        if self._scratch.size < size:
            self._scratch = np.empty(0, dtype=np.uint64)  # the old one freed first
            self._scratch = np.empty(size, dtype=np.uint64)
        return self._scratch[:size].reshape(shape)

    def _rows_per_block(self, batch: CipherBatch | SquaredBatch, rows: int) -> int:
        """How many outputs of a linear stage fit in ``block_bytes`` of products."""
        if self.block_bytes is None:
            return rows
        per_row = batch.limbs * batch.size * self.ctx.n * 8
        return max(1, min(rows, self.block_bytes // per_row))

    def _rescale(self, products: np.ndarray, bias: np.ndarray, drops: int, out: np.ndarray) -> None:
        """Per output (SEAL, for its NTTs): relinearize a size-3 output of a stage after a
        square (one key switch per output of the linear stage, not per squared input: there
        are fewer), rescale ``drops`` times to scale exactly Delta, then add the bias (a
        constant is the same integer in every NTT coefficient of c0). Rescaling before the
        relinearization would cost precision: its rounding error is multiplied by s^2. The
        results go into ``out`` (limbs - drops, outputs, 2, N), shared with the workers."""
        ev, ctx = self.ctx.evaluator, self.ctx
        limbs, outputs, size, n = products.shape
        scale = self.scale * math.prod(float(q) for q in ctx.levels[limbs][1][limbs - drops :])
        moduli = np.array(ctx.levels[limbs - drops][1], dtype=np.uint64)
        for level in (limbs, limbs - drops):  # made before forking, shared by the workers
            ctx.template(level, self.encryptor.encrypt)

        def one(o: int) -> None:
            ct = ctx.to_seal(products, o, scale, self.encryptor.encrypt)
            if size == 3:
                ev.relinearize_inplace(ct, self.relin)
            for _ in range(drops):
                ev.rescale_to_next_inplace(ct)
            view = seal_memory.coefficients(ct)
            b = int(round(float(bias[o]) * self.scale))
            constants = np.array([b % int(q) for q in moduli], dtype=np.uint64)
            kernels().add_constant(view[0], constants, moduli)
            out[:, o] = np.moveaxis(view, 1, 0)

        # SEAL steps (which hold the GIL) in forked workers; only SEAL and single-threaded
        # kernels run there: numba's thread pool and OpenBLAS's are started in this process
        run_forked(one, outputs, self.workers)

    def _fill(
        self,
        weights: sparse.csr_matrix,
        bias: np.ndarray,
        batch: CipherBatch | SquaredBatch,
        drops: int,
        out: StageOutput,
        offset: int = 0,
    ) -> tuple[float, float]:
        """Rows of a linear stage and their rescale into ``out`` from row ``offset``, in
        blocks of rows (:attr:`block_bytes`): the outputs are independent, so the blocks give
        the same bits as one pass. Returns the seconds of the products and of the rescales."""
        rows = weights.shape[0]
        block = self._rows_per_block(batch, rows)
        linear_s = rescale_s = 0.0
        for r0 in range(0, rows, block):
            r1 = min(rows, r0 + block)
            t1 = time.perf_counter()
            products = self._linear(weights[r0:r1], batch, drops)
            t2 = time.perf_counter()
            dest = out.block(offset + r0, offset + r1)
            self._rescale(products, bias[r0:r1], drops, dest)
            out.commit(offset + r0, dest)
            linear_s, rescale_s = linear_s + t2 - t1, rescale_s + time.perf_counter() - t2
            del products, dest
        return linear_s, rescale_s

    def _output(self, limbs: int, rows: int) -> StageOutput:
        shape = (limbs, rows, 2, self.ctx.n)
        big = self.spill_dir is not None and math.prod(shape) * 8 > self.spill_bytes
        return StageOutput(shape, self.spill_dir if big else None)

    def _linear_stage(
        self, stage: LinearStage, batch: CipherBatch | SquaredBatch, drops: int
    ) -> CipherBatch:
        """A linear stage and its rescale (spilled to :attr:`spill_dir` when large)."""
        rows, cols = stage.weights.shape
        out = self._output(batch.limbs - drops, rows)
        linear_s, rescale_s = self._fill(stage.weights.tocsr(), stage.bias, batch, drops, out)
        if isinstance(batch, SquaredBatch):  # squared limb by limb inside the products
            self._time(f"square x{batch.source.features}", batch.seconds, batch.source.features)
            linear_s -= batch.seconds
        self._time(f"linear {cols}->{rows}", linear_s, stage.terms)
        self._time(f"rescale x{rows}", rescale_s, rows * drops)
        return CipherBatch(out.array(), np.full(rows, self.scale), batch.images)

    def _fusion(
        self, stages: list, i: int, batch: CipherBatch | SquaredBatch, drops: int
    ) -> tuple[SquareStage, LinearStage] | None:
        """The square and local stage that stage ``i`` (linear) runs with block by block, if
        any: when its outputs are over :attr:`fuse_bytes` and each row of stage i + 2 reads
        only a few of them (a pooling), so that a block of its rows needs a block of stage i."""
        if self.fuse_bytes is None or i + 2 >= len(stages):
            return None
        first, square, local = stages[i : i + 3]
        if not (isinstance(square, SquareStage) and isinstance(local, LinearStage)):
            return None
        first_bytes = (batch.limbs - drops) * first.weights.shape[0] * 2 * self.ctx.n * 8
        if first_bytes <= self.fuse_bytes:
            return None
        return (square, local) if local.terms <= _LOCAL_TERMS * local.weights.shape[0] else None

    def _fused_stages(
        self,
        first: LinearStage,
        square: SquareStage,
        local: LinearStage,
        batch: CipherBatch | SquaredBatch,
        drops: int,
    ) -> CipherBatch:
        """Stages ``first``, ``square``, ``local`` a block of ``local``'s rows at a time: of
        ``first``, only the outputs that block reads are made (never all of them at once).
        The same bits as the stages one after the other (each output is made the same way)."""
        w = local.weights.tocsr()
        rows, features = w.shape
        mid_limbs = batch.limbs - drops
        out = self._output(mid_limbs - 2, rows)
        row_bytes = mid_limbs * 2 * self.ctx.n * 8
        reads = max(1, -(-local.terms // rows))
        block = max(1, min(rows, (self.fuse_bytes or 0) // 2 // (reads * row_bytes)))
        seconds = np.zeros(5)  # first's products and rescales, squares, local's products, rescales
        blocks = []
        for r0 in range(0, rows, block):
            r1 = min(rows, r0 + block)
            blocks.append((r0, r1, *restrict_to_sources(w[r0:r1], square.features, square.kept)))
        # one shared array for every block's first-stage outputs (pages touched once)
        mid_space = shared_array((mid_limbs, max(len(b[2]) for b in blocks), 2, self.ctx.n))
        for r0, r1, source, weights, kept in blocks:
            mid_out = StageOutput((mid_limbs, len(source), 2, self.ctx.n), None, within=mid_space)
            rows_first = first.weights.tocsr()[source]
            seconds[:2] += self._fill(rows_first, first.bias[source], batch, drops, mid_out)
            mid = CipherBatch(mid_out.array(), np.full(len(source), self.scale), batch.images)
            squared = SquaredBatch(mid, kept, self.ctx.levels[mid_limbs][1], int(self.scale))
            seconds[3:] += self._fill(weights, local.bias[r0:r1], squared, 2, out, offset=r0)
            seconds[2] += squared.seconds
            seconds[3] -= squared.seconds
            del mid_out, mid, squared
        (first_rows, first_cols), kinds = first.weights.shape, "linear {}->{} (fused)"
        self._time(kinds.format(first_cols, first_rows), seconds[0], first.terms)
        self._time(f"rescale x{first_rows}", seconds[1], first_rows * drops)
        self._time(f"square x{square.features}", seconds[2], square.features)
        self._time(kinds.format(features, rows), seconds[3], local.terms)
        self._time(f"rescale x{rows}", seconds[4], rows * 2)
        return CipherBatch(out.array(), np.full(rows, self.scale), batch.images)

    def run(self, program: FoldedProgram, batch: CipherBatch, *, on_stage=None) -> CipherBatch:
        """The program on ``batch``; :attr:`timings` has one entry per step, named once.
        ``on_stage(done, total)``, if given, is called as the program's stages are done."""
        self.timings = []
        current: CipherBatch | SquaredBatch = batch
        drops, i, stages = 1, 0, program.stages
        while i < len(stages):
            stage = stages[i]
            fusion = self._fusion(stages, i, current, drops)
            if isinstance(stage, LinearStage) and fusion is not None:
                current = self._fused_stages(stage, *fusion, current, drops)
                drops, i = 1, i + 3
            elif isinstance(stage, LinearStage):
                current = self._linear_stage(stage, current, drops)
                drops, i = 1, i + 1
            else:
                assert isinstance(current, CipherBatch)  # folded programs never square twice
                _, moduli = self.ctx.levels[current.limbs]
                current = SquaredBatch(current, stage.kept, moduli, int(self.scale))
                drops, i = 2, i + 1  # Delta^2 leaves with two primes after the next stage
            if on_stage is not None:
                on_stage(i, len(stages))
        assert isinstance(current, CipherBatch)  # a folded program ends with a linear stage
        return current

    def _time(self, what: str, seconds: float, operations: int) -> None:
        self.timings.append(StageTiming(f"{len(self.timings) + 1}. {what}", seconds, operations))
