"""CKKS inference with batch-oriented element-wise packing, on SEAL through TenSEAL's sealapi.

One ciphertext holds one feature position (a pixel, an activation) for a whole batch of
images, one image per slot. Every stage then works slot-wise with no rotation: a linear output
is ``sum_j w_j ct_j`` (plaintext scalars), rescaled once; a degree-2 polynomial is
``c2 x^2 + c1 x + c0`` with per-feature coefficients. TenSEAL's vector API rescales after every
product; sealapi lets us rescale once per weighted sum and pick each plaintext's scale so that
every ciphertext leaves a stage at exactly the same scale Delta, which CKKS additions require.

Roles: :class:`HEClient` makes the keys, encrypts and decrypts; it hands :class:`HEServer` a
:class:`ServerKeys` (parameters, public and relinearization keys; no secret key), and the
server runs the program on ciphertexts only.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import sparse

from ...errors import ConfigError
from ...extras import require
from . import rns
from .compile import HEProgram, LinearStage, PolyStage
from .params import CKKSParameters

__all__ = ["ServerKeys", "HEClient", "HEServer", "StageTiming"]


def _seal():
    return require("tenseal.sealapi", extra="he", purpose="CKKS inference", package="tenseal")


def _parms(params: CKKSParameters):
    """SEAL's encryption parameters of ``params`` (both engines build them here)."""
    s = _seal()
    parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(
        s.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_bits))
    )
    return parms


def _context(params: CKKSParameters):
    s = _seal()
    parms = _parms(params)
    return parms, s.SEALContext(parms, True, s.SEC_LEVEL_TYPE.TC128)


@dataclass
class ServerKeys:
    """What the server receives: files of the parameters and the evaluation keys."""

    params: CKKSParameters
    folder: Path

    def files(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir())


@dataclass
class StageTiming:
    stage: str
    seconds: float
    operations: int


class HEClient:
    """Holds the secret key: encrypts inputs, decrypts outputs."""

    def __init__(self, params: CKKSParameters) -> None:
        s = _seal()
        self.params = params
        self.parms, self.context = _context(params)
        keygen = s.KeyGenerator(self.context)
        self._keygen = keygen  # the comparison layout asks it for rotation keys
        self._secret = keygen.secret_key()
        self._public = s.PublicKey()
        keygen.create_public_key(self._public)
        self._relin = s.RelinKeys()
        keygen.create_relin_keys(self._relin)
        self.encoder = s.CKKSEncoder(self.context)
        self.encryptor = s.Encryptor(self.context, self._public)
        self.decryptor = s.Decryptor(self.context, self._secret)
        self.scale = 2.0**params.scale_bits

    def server_keys(self, folder: str | os.PathLike | None = None) -> ServerKeys:
        """Write the parameters, public key and relinearization keys (not the secret key)."""
        folder = Path(folder or tempfile.mkdtemp(prefix="pifair-he-"))
        folder.mkdir(parents=True, exist_ok=True)
        self.parms.save(str(folder / "parms.seal"))
        self._public.save(str(folder / "public.seal"))
        self._relin.save(str(folder / "relin.seal"))
        return ServerKeys(self.params, folder)

    def check_server_keys(self, keys: ServerKeys) -> dict:
        """What the server's key folder holds, checked: only the parameter, public and
        relinearization key files, and none of them equal to this client's secret key."""
        with tempfile.TemporaryDirectory() as tmp:
            self._secret.save(str(Path(tmp) / "secret.seal"))
            secret = (Path(tmp) / "secret.seal").read_bytes()
        files = keys.files()
        leaked = [f for f in files if (keys.folder / f).read_bytes() == secret]
        return {
            "files": files,
            "only_public_files": files == ["parms.seal", "public.seal", "relin.seal"],
            "secret_key_in_folder": bool(leaked),
            "server_holds_no_secret_key": not leaked
            and files == ["parms.seal", "public.seal", "relin.seal"],
        }

    def encrypt(self, x: np.ndarray) -> list:
        """(B, features) -> one ciphertext per feature, image b in slot b (B <= slots)."""
        s = _seal()
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if len(x) > self.params.slots:
            raise ConfigError(
                f"batch {len(x)} exceeds the {self.params.slots} slots; split it (HEInference does)"
            )
        out = []
        for column in x.T:
            pt, ct = s.Plaintext(), s.Ciphertext()
            self.encoder.encode(column.tolist(), self.scale, pt)
            self.encryptor.encrypt(pt, ct)
            out.append(ct)
        return out

    def decrypt(self, cts: list, batch: int) -> np.ndarray:
        s = _seal()
        cols = []
        for ct in cts:
            pt = s.Plaintext()
            self.decryptor.decrypt(ct, pt)
            cols.append(np.asarray(self.encoder.decode_double(pt))[:batch])
        return np.stack(cols, axis=1)


# what forked workers run: a function of a slice of indices, found in their copy of the module
_JOB: Callable[[list[int]], None] | None = None


def _run_job(indices: list[int]) -> None:
    assert _JOB is not None
    _JOB(indices)


def in_forked_workers(job: Callable[[list[int]], None], count: int, workers: int) -> None:
    """``job(indices)`` on ``workers`` forked processes, each a slice of ``range(count)``; the
    children find ``job`` in their copy of this module (copy-on-write, no pickling: SEAL's
    objects cannot be pickled). Both engines' SEAL steps run through here."""
    global _JOB
    _JOB = job
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            pool.map(_run_job, [c.tolist() for c in np.array_split(np.arange(count), workers)])
    finally:
        _JOB = None


def _save_outputs(fn, folder: str, indices: list[int]) -> None:
    for o in indices:
        fn(o).save(os.path.join(folder, str(o)))


def _read_slice(cts: list, path: str, folder: str, indices: list[int]) -> None:
    out = np.load(path, mmap_mode="r+")
    scratch = os.path.join(folder, f"ct-{os.getpid()}")
    for i in indices:
        out[i] = rns.read_coefficients(cts[i], scratch)
    out.flush()


@dataclass
class HEServer:
    """Evaluates a program on ciphertexts with the public keys only.

    ``workers`` processes compute independent outputs of a stage in parallel: SEAL's Python
    binding holds the GIL, so threads would not help. Workers are forked with the stage's input
    ciphertexts in their (copy-on-write) memory and return their outputs through files.
    """

    keys: ServerKeys
    workers: int = 1
    timings: list[StageTiming] = field(default_factory=list)
    # "rns": a linear stage as one exact modular matrix product per RNS limb over the raw
    # coefficients (pifair.secure.he.rns; bit for bit SEAL's multiply-accumulate); "seal": one
    # SEAL multiply_plain per weight
    linear: Literal["seal", "rns"] = "seal"

    def __post_init__(self) -> None:
        s = _seal()
        self.parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
        self.parms.load(str(self.keys.folder / "parms.seal"))
        self.context = s.SEALContext(self.parms, True, s.SEC_LEVEL_TYPE.TC128)
        self.relin = s.RelinKeys()
        self.relin.load(self.context, str(self.keys.folder / "relin.seal"))
        self.evaluator = s.Evaluator(self.context)
        self.encoder = s.CKKSEncoder(self.context)
        self.scale = 2.0**self.keys.params.scale_bits

    # -- helpers ---------------------------------------------------------------------------------
    def _last_prime(self, ct) -> float:
        data = self.context.get_context_data(ct.parms_id())
        return float(data.parms().coeff_modulus()[-1].value())

    def _plain(self, value: float, parms_id, scale: float):
        pt = _seal().Plaintext()
        self.encoder.encode(float(value), parms_id, scale, pt)
        return pt

    def _weighted_sum(self, terms: list[tuple[object, float]]):
        """``sum_i w_i ct_i`` over ciphertexts at one level (their scales may differ), rescaled
        once to scale Delta: each plaintext is encoded at Delta q / scale(ct_i), so every
        product has scale Delta q and the rescale by q leaves exactly Delta."""
        s, ev = _seal(), self.evaluator
        q = self._last_prime(terms[0][0])
        acc, tmp = None, s.Ciphertext()
        for ct, w in terms:
            pt = self._plain(w, ct.parms_id(), self.scale * q / ct.scale)
            if acc is None:
                acc = s.Ciphertext()
                ev.multiply_plain(ct, pt, acc)
            else:
                ev.multiply_plain(ct, pt, tmp)
                tmp.scale = acc.scale  # equal up to the rounding of the divisions above
                ev.add_inplace(acc, tmp)
        ev.rescale_to_next_inplace(acc)
        acc.scale = self.scale
        return acc

    def _add_constant(self, ct, value: float) -> None:
        if value != 0.0:
            self.evaluator.add_plain_inplace(ct, self._plain(value, ct.parms_id(), ct.scale))

    def _forked(self, count: int) -> bool:
        """Whether ``count`` independent items are worth forked workers."""
        return self.workers > 1 and count >= 4 * self.workers

    def _map(self, fn, count: int) -> list:
        """``[fn(0), ..., fn(count - 1)]``, in ``workers`` forked processes when worth it."""
        if not self._forked(count):
            return [fn(o) for o in range(count)]
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="pifair-he-", dir=shm) as folder:
            in_forked_workers(functools.partial(_save_outputs, fn, folder), count, self.workers)
            out = []
            for o in range(count):
                ct = _seal().Ciphertext()
                ct.load(self.context, os.path.join(folder, str(o)))
                out.append(ct)
        return out

    # -- stages ----------------------------------------------------------------------------------
    def _linear(self, stage: LinearStage, cts: list) -> list:
        if self.linear == "rns":
            return self._linear_rns(stage, cts)
        w = stage.weights

        def output(o: int):
            lo, hi = w.indptr[o], w.indptr[o + 1]
            terms = [(cts[j], float(v)) for j, v in zip(w.indices[lo:hi], w.data[lo:hi])]
            if not terms:
                raise ConfigError(
                    f"output {o} of a linear stage depends on no input (a constant); the engine "
                    "does not encrypt constants"
                )
            acc = self._weighted_sum(terms)
            self._add_constant(acc, float(stage.bias[o]))
            return acc

        return self._map(output, w.shape[0])

    def _linear_rns(self, stage: LinearStage, cts: list) -> list:
        """The stage as one modular matrix product per RNS limb (same result as
        :meth:`_weighted_sum` per output, bit for bit before the rescale)."""
        s, ev = _seal(), self.evaluator
        w = stage.weights.tocsr()
        empty = np.flatnonzero(np.diff(w.indptr) == 0)
        if len(empty):
            raise ConfigError(
                f"output {empty[0]} of a linear stage depends on no input (a constant); the "
                "engine does not encrypt constants"
            )
        q_last = self._last_prime(cts[0])
        moduli = [
            m.value()
            for m in self.context.get_context_data(cts[0].parms_id()).parms().coeff_modulus()
        ]
        plain_scales = np.array([self.scale * q_last / ct.scale for ct in cts])
        integer = rns.scalar_weights(w.data, plain_scales[w.indices])
        weights = sparse.csr_matrix((integer, w.indices, w.indptr), shape=w.shape)
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="pifair-rns-", dir=shm) as folder:
            scratch = os.path.join(folder, "ct")
            coefficients = self._read_coefficients(cts, folder)
            size, limbs, n = coefficients.shape[1:]
            out = np.empty((w.shape[0], size, limbs, n), dtype=np.uint64)
            for limb, q in enumerate(moduli):
                flat = coefficients[:, :, limb, :].reshape(len(cts), size * n)
                out[:, :, limb, :] = rns.mod_matmul(weights, flat, q).reshape(-1, size, n)
            outputs = []
            for o in range(w.shape[0]):
                ct = s.Ciphertext()
                ev.negate(cts[0], ct)  # a ciphertext with the inputs' parameters, overwritten
                rns.write_coefficients(ct, out[o], scratch)
                ct.scale = self.scale * q_last
                ev.rescale_to_next_inplace(ct)
                ct.scale = self.scale
                self._add_constant(ct, float(stage.bias[o]))
                outputs.append(ct)
        return outputs

    def _read_coefficients(self, cts: list, folder: str) -> np.ndarray:
        """Every ciphertext's coefficients, (count, size, limbs, N), read in ``workers`` forked
        processes into one shared memory map (SEAL's serialization dominates the cost)."""
        shape = (len(cts), cts[0].size(), cts[0].coeff_modulus_size(), cts[0].poly_modulus_degree())
        if not self._forked(len(cts)):
            scratch = os.path.join(folder, "ct")
            return np.stack([rns.read_coefficients(ct, scratch) for ct in cts])
        path = os.path.join(folder, "coefficients.u64")
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint64, shape=shape)
        del out  # the workers write it, each through its own map
        job = functools.partial(_read_slice, cts, path, folder)
        in_forked_workers(job, len(cts), self.workers)
        return np.array(np.load(path, mmap_mode="r"))

    def _poly(self, stage: PolyStage, cts: list) -> list:
        return self._map(lambda j: self._poly_one(stage, cts[j], j), len(cts))

    def _poly_one(self, stage: PolyStage, x, j: int):
        """``c2 x^2 + c1 x + c0`` of feature ``j``: two levels, exact scale Delta at the end."""
        s, ev = _seal(), self.evaluator
        c = stage.coefficients
        if stage.degree == 1:
            y = self._weighted_sum([(x, c[1, j])]) if c[1, j] != 0 else None
        else:
            sq = s.Ciphertext()
            ev.square(x, sq)
            ev.relinearize_inplace(sq, self.relin)
            ev.rescale_to_next_inplace(sq)
            terms = []
            if c[2, j] != 0:
                terms.append((sq, c[2, j]))
            if c[1, j] != 0:
                x1 = s.Ciphertext()
                ev.mod_switch_to(x, sq.parms_id(), x1)  # same level as x^2, scale Delta
                terms.append((x1, c[1, j]))
            y = self._weighted_sum(terms) if terms else None
        if y is None:
            raise ConfigError(
                f"feature {j}: a constant polynomial; the engine does not encrypt constants"
            )
        self._add_constant(y, float(c[0, j]))
        return y

    def run(self, program: HEProgram, cts: list) -> list:
        self.timings = []
        for stage in program.stages:
            t0 = time.perf_counter()
            if isinstance(stage, LinearStage):
                cts = self._linear(stage, cts)
                self.timings.append(
                    StageTiming(
                        f"linear {stage.weights.shape[1]}->{stage.weights.shape[0]}",
                        time.perf_counter() - t0,
                        stage.terms,
                    )
                )
            else:
                cts = self._poly(stage, cts)
                self.timings.append(
                    StageTiming(
                        f"poly{stage.degree} x{len(cts)}", time.perf_counter() - t0, len(cts)
                    )
                )
        return cts
