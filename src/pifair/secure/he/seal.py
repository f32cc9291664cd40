"""What both CKKS engines share of SEAL (through TenSEAL's sealapi): parameters and context,
the client's keys and the files a server gets, the one check that no server file is the
secret key, one timing record per server step, and the one pool of forked workers.

Forked workers, not threads or spawned processes: SEAL's Python binding holds the GIL, and its
objects cannot be pickled, so children find the work (and the ciphertexts it reads) in their
copy-on-write copy of the parent's memory.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ...extras import require
from .params import CKKSParameters

__all__ = [
    "SERVER_KEY_FILES",
    "ClientKeys",
    "StageTiming",
    "encryption_parameters",
    "key_folder_check",
    "read_encryption_parameters",
    "run_forked",
    "seal_context",
    "worth_forking",
    "sealapi",
]

# all a server ever gets: the parameters, the public key and the relinearization keys
SERVER_KEY_FILES = ("parms.seal", "public.seal", "relin.seal")


def sealapi() -> Any:
    """TenSEAL's binding of SEAL, or a one-line error naming the extra to install."""
    return require("tenseal.sealapi", extra="he", purpose="CKKS inference", package="tenseal")


def encryption_parameters(params: CKKSParameters) -> Any:
    """SEAL's CKKS encryption parameters of ``params``."""
    s = sealapi()
    parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(
        s.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_bits))
    )
    return parms


def read_encryption_parameters(folder: Path) -> Any:
    """The parameters a client wrote into a server's key folder."""
    s = sealapi()
    parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
    parms.load(str(Path(folder) / "parms.seal"))
    return parms


def seal_context(parms: Any) -> Any:
    """SEAL's context of ``parms`` at 128-bit security (SEAL refuses larger moduli)."""
    s = sealapi()
    return s.SEALContext(parms, True, s.SEC_LEVEL_TYPE.TC128)


class ClientKeys:
    """The client's keys of one context: the secret key (never leaves the client), the public
    key and the relinearization keys (written for the server), Galois keys on request."""

    def __init__(self, context: Any) -> None:
        s = sealapi()
        self.context = context
        self._keygen = s.KeyGenerator(context)
        self.secret = self._keygen.secret_key()
        self.public = s.PublicKey()
        self._keygen.create_public_key(self.public)
        self.relin = s.RelinKeys()
        self._keygen.create_relin_keys(self.relin)

    @classmethod
    def load(cls, context: Any, path: str | os.PathLike) -> ClientKeys:
        """The secret key saved by :meth:`save_secret_key`, to decrypt a server's answer (no
        public keys: they were handed out with the request)."""
        s = sealapi()
        keys = cls.__new__(cls)
        keys.context = context
        keys.secret = s.SecretKey()
        keys.secret.load(context, str(path))
        keys._keygen = s.KeyGenerator(context, keys.secret)
        keys.public = keys.relin = None
        return keys

    def write_server_files(self, parms: Any, folder: str | os.PathLike) -> list[str]:
        """Write :data:`SERVER_KEY_FILES` into ``folder``; returns what the folder holds."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        parms.save(str(folder / "parms.seal"))
        self.public.save(str(folder / "public.seal"))
        self.relin.save(str(folder / "relin.seal"))
        return sorted(p.name for p in folder.iterdir())

    def save_secret_key(self, path: str | os.PathLike) -> None:
        """Keep the secret key on the client's side, readable by its owner only."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.secret.save(str(path))
        os.chmod(path, 0o600)

    def secret_key_bytes(self) -> bytes:
        """The secret key's serialization: what no file handed to a server may equal."""
        with tempfile.TemporaryDirectory(prefix="pifair-he-") as tmp:
            path = Path(tmp) / "secret.check"
            self.secret.save(str(path))
            return path.read_bytes()

    def galois_keys(self, steps: list[int]) -> Any:
        """Rotation keys for left rotations by ``steps`` slots."""
        keys = sealapi().GaloisKeys()
        # the binding takes Galois elements, not steps: 3^step mod 2N for left rotations
        elements = self.context.key_context_data().galois_tool().get_elts_from_steps(steps)
        self._keygen.create_galois_keys(elements, keys)
        return keys


def key_folder_check(
    folder: Path, secret: bytes, *, loaded: dict[str, str] | None = None
) -> dict[str, Any]:
    """A server's key folder checked against the client's secret key: it must hold exactly
    :data:`SERVER_KEY_FILES`, and no file in it, nor any file the server says it ``loaded``
    (name -> SHA-256), may be the secret key."""
    files = sorted(p.name for p in Path(folder).iterdir())
    secret_hash = hashlib.sha256(secret).hexdigest()
    leaked = any((Path(folder) / f).read_bytes() == secret for f in files)
    only_public = files == sorted(SERVER_KEY_FILES)
    check: dict[str, Any] = {"files": files}
    if loaded is not None:
        leaked = leaked or secret_hash in loaded.values()
        only_public = only_public and sorted(loaded) == sorted(SERVER_KEY_FILES)
        check["files_loaded_by_server"] = sorted(loaded)
    return check | {
        "only_public_files": only_public,
        "secret_key_in_folder": leaked,
        "server_holds_no_secret_key": only_public and not leaked,
    }


@dataclass
class StageTiming:
    """One server step: its name, wall time and how many SEAL operations it made."""

    stage: str
    seconds: float
    operations: int


def worth_forking(count: int, workers: int, *, min_per_worker: int = 1) -> bool:
    """Whether ``count`` items are worth ``workers`` forked processes: at least
    ``min_per_worker`` items each."""
    return workers > 1 and count >= workers * min_per_worker


def run_forked(
    work: Callable[[int], None], count: int, workers: int, *, min_per_worker: int = 1
) -> None:
    """``work(i)`` for every ``i < count``: in ``workers`` forked processes, each a slice,
    when :func:`worth_forking`; here otherwise. ``work`` returns nothing: children write
    their results (files, shared memory). Plain ``os.fork`` and ``waitpid``, no
    ``multiprocessing.Pool``: a pool ends its workers with SIGTERM, which the CLI's handler
    turns into an exception inside the pool's queue locks, and a worker could then wait on a
    lock no one would release (the server hung). A child that fails prints its traceback and
    the parent raises; a parent interrupted kills its children."""
    if not worth_forking(count, workers, min_per_worker=min_per_worker):
        for i in range(count):
            work(i)
        return
    children: list[int] = []
    failed: list[int] = []
    try:
        for part in np.array_split(np.arange(count), workers):
            pid = os.fork()
            if pid == 0:
                _child(work, part)  # never returns
            children.append(pid)
        while children:
            _, status = os.waitpid(children[0], 0)
            children.pop(0)
            if os.waitstatus_to_exitcode(status) != 0:
                failed.append(os.waitstatus_to_exitcode(status))
    finally:
        for pid in children:  # interrupted: nothing may outlive the parent
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {workers} forked workers failed (exit status {failed[0]}); "
            "their traceback is above"
        )


def _child(work: Callable[[int], None], part: np.ndarray) -> NoReturn:
    """A forked worker: its slice, then out at once (no cleanup of the parent's state)."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler would raise here
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        for i in part:
            work(int(i))
        code = 0
    except BaseException:  # noqa: BLE001 - reported, then the exit status says it
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
