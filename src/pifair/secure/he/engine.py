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

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import ConfigError
from .compile import HEProgram, LinearStage, PolyStage
from .params import CKKSParameters
from .seal import (
    ClientKeys,
    StageTiming,
    encryption_parameters,
    key_folder_check,
    read_encryption_parameters,
    run_forked,
    seal_context,
    sealapi,
    worth_forking,
)

__all__ = ["ServerKeys", "HEClient", "HEServer"]


@dataclass
class ServerKeys:
    """What the server receives: files of the parameters and the evaluation keys."""

    params: CKKSParameters
    folder: Path

    def files(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir())


class HEClient:
    """Holds the secret key: encrypts inputs, decrypts outputs."""

    def __init__(self, params: CKKSParameters) -> None:
        s = sealapi()
        self.params = params
        self.parms = encryption_parameters(params)
        self.context = seal_context(self.parms)
        self.keys = ClientKeys(self.context)
        self.encoder = s.CKKSEncoder(self.context)
        self.encryptor = s.Encryptor(self.context, self.keys.public)
        self.decryptor = s.Decryptor(self.context, self.keys.secret)
        self.scale = 2.0**params.scale_bits

    def server_keys(self, folder: str | os.PathLike | None = None) -> ServerKeys:
        """Write the parameters, public key and relinearization keys (not the secret key)."""
        folder = Path(folder or tempfile.mkdtemp(prefix="pifair-he-"))
        self.keys.write_server_files(self.parms, folder)
        return ServerKeys(self.params, folder)

    def check_server_keys(self, keys: ServerKeys) -> dict:
        """What the server's key folder holds, checked against this client's secret key."""
        return key_folder_check(keys.folder, self.keys.secret_key_bytes())

    def encrypt(self, x: np.ndarray) -> list:
        """(B, features) -> one ciphertext per feature, image b in slot b (B <= slots)."""
        s = sealapi()
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if len(x) > self.params.slots:
            raise ConfigError(
                f"batch {len(x)} exceeds the {self.params.slots} slots; split it (pifair "
                "he-infer does, by --batch)"
            )
        out = []
        for column in x.T:
            pt, ct = s.Plaintext(), s.Ciphertext()
            self.encoder.encode(column.tolist(), self.scale, pt)
            self.encryptor.encrypt(pt, ct)
            out.append(ct)
        return out

    def decrypt(self, cts: list, batch: int) -> np.ndarray:
        s = sealapi()
        cols = []
        for ct in cts:
            pt = s.Plaintext()
            self.decryptor.decrypt(ct, pt)
            cols.append(np.asarray(self.encoder.decode_double(pt))[:batch])
        return np.stack(cols, axis=1)


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

    def __post_init__(self) -> None:
        s = sealapi()
        self.parms = read_encryption_parameters(self.keys.folder)
        self.context = seal_context(self.parms)
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
        pt = sealapi().Plaintext()
        self.encoder.encode(float(value), parms_id, scale, pt)
        return pt

    def _weighted_sum(self, terms: list[tuple[object, float]]):
        """``sum_i w_i ct_i`` over ciphertexts at one level (their scales may differ), rescaled
        once to scale Delta: each plaintext is encoded at Delta q / scale(ct_i), so every
        product has scale Delta q and the rescale by q leaves exactly Delta."""
        s, ev = sealapi(), self.evaluator
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

    def _map(self, fn, count: int) -> list:
        """``[fn(0), ..., fn(count - 1)]`` (ciphertexts), in ``workers`` forked processes when
        each gets at least 4; children hand their ciphertexts back through files."""
        if not worth_forking(count, self.workers, min_per_worker=4):
            return [fn(o) for o in range(count)]
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="pifair-he-", dir=shm) as folder:

            def save(o: int) -> None:
                fn(o).save(os.path.join(folder, str(o)))

            run_forked(save, count, self.workers, min_per_worker=4)
            out = []
            for o in range(count):
                ct = sealapi().Ciphertext()
                ct.load(self.context, os.path.join(folder, str(o)))
                out.append(ct)
        return out

    # -- stages ----------------------------------------------------------------------------------
    def _linear(self, stage: LinearStage, cts: list) -> list:
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

    def _poly(self, stage: PolyStage, cts: list) -> list:
        return self._map(lambda j: self._poly_one(stage, cts[j], j), len(cts))

    def _poly_one(self, stage: PolyStage, x, j: int):
        """``c2 x^2 + c1 x + c0`` of feature ``j``: two levels, exact scale Delta at the end."""
        s, ev = sealapi(), self.evaluator
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
