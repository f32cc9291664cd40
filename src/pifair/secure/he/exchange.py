"""The files between the CKKS client and server, and the server's side of them.

The client writes an exchange folder::

    keys/parms.seal keys/public.seal keys/relin.seal   (no secret key: checked on both sides)
    program.npz                                         (the folded program: public)
    request.json                                        (scale, batches)
    batch-0000/ciphertexts.npy batch-0000/scales.npy    (one per ciphertext batch)

The server (:func:`serve`, run as ``pifair he-infer --role server --exchange DIR`` in its own
process, on this host or another) reads only those files, refuses a folder that holds anything
else among the keys, and writes ``batch-XXXX/result/`` and ``server.json`` (its timings and the
SHA-256 of every key file it loaded, so the client can check that none is its secret key).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from ...atomic import atomic_open, atomic_write_json
from ...errors import ConfigError
from .batched import BatchedServer, CipherBatch
from .compile import LinearStage
from .fold import FoldedProgram, SquareStage
from .seal import SERVER_KEY_FILES

# the server's progress in its exchange folder, for a client that waits on it
PROGRESS_FILE = "progress.json"

__all__ = [
    "read_program",
    "write_program",
    "batch_folders",
    "serve",
    "sha256",
]


def sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_program(program: FoldedProgram, path: str | os.PathLike) -> None:
    """The folded program as one ``.npz`` (weights in CSR parts, biases, squares' kept)."""
    arrays: dict[str, np.ndarray] = {"input_shape": np.array(program.input_shape)}
    kinds = []
    for i, s in enumerate(program.stages):
        if isinstance(s, LinearStage):
            kinds.append("linear")
            w = s.weights.tocsr()
            arrays |= {
                f"{i}_data": w.data,
                f"{i}_indices": w.indices,
                f"{i}_indptr": w.indptr,
                f"{i}_shape": np.array(w.shape),
                f"{i}_bias": s.bias,
            }
        else:
            kinds.append("square")
            arrays |= {f"{i}_features": np.array(s.features), f"{i}_kept": s.kept}
    arrays["kinds"] = np.array(kinds)
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def read_program(path: str | os.PathLike) -> FoldedProgram:
    with np.load(path) as z:
        program = FoldedProgram(tuple(int(v) for v in z["input_shape"]))
        for i, kind in enumerate(z["kinds"]):
            if kind == "linear":
                w = sparse.csr_matrix(
                    (z[f"{i}_data"], z[f"{i}_indices"], z[f"{i}_indptr"]),
                    shape=tuple(z[f"{i}_shape"]),
                )
                program.stages.append(LinearStage(w, z[f"{i}_bias"]))
            else:
                program.stages.append(SquareStage(int(z[f"{i}_features"]), z[f"{i}_kept"]))
    return program


def batch_folders(exchange: str | os.PathLike) -> list[Path]:
    return sorted(Path(exchange).glob("batch-[0-9][0-9][0-9][0-9]"))


def _check_exchange(exchange: Path) -> None:
    """Refuse a folder the server should not run on, saying what is wrong."""
    if not (exchange / "request.json").is_file():
        raise ConfigError(
            f"{exchange} is not an exchange folder (no request.json): run "
            "pifair he-infer --role client first"
        )
    answered = all((f / "result" / "scales.npy").is_file() for f in batch_folders(exchange))
    if (exchange / "server.json").is_file() and answered:
        raise ConfigError(
            f"{exchange} has no batch waiting: the server answered it already (server.json); "
            "nothing is changed"
        )
    keys = sorted(p.name for p in (exchange / "keys").iterdir())
    if keys != sorted(SERVER_KEY_FILES):
        raise ConfigError(
            f"the server's key folder {exchange / 'keys'} holds {keys}; it must hold exactly "
            f"{', '.join(SERVER_KEY_FILES)} (never a secret key)"
        )


def available_memory() -> int:
    """Bytes of memory available to new work (the kernel's MemAvailable; the free pages where
    /proc is not there)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def serve(exchange: str | os.PathLike, *, workers: int = 1, log=print) -> dict:
    """Run the program on every batch of ``exchange`` with the public files only; write each
    batch's result and ``server.json``; return what it wrote there."""
    exchange = Path(exchange)
    _check_exchange(exchange)
    request = json.loads((exchange / "request.json").read_text())
    t0 = time.perf_counter()
    available = available_memory()
    server = BatchedServer(
        exchange / "keys",
        request["scale_bits"],
        workers=workers,
        # a stage's products a block of rows at a time, and outputs too large for memory in
        # unlinked files beside the batches: the server's memory stays bounded by the machine
        block_bytes=available // 8,
        spill_dir=exchange,
        spill_bytes=available // 2,
        # a stage whose outputs would take over a quarter of it runs with the pooling after
        # its square, a block of pooling rows at a time
        fuse_bytes=available // 4,
    )
    program = read_program(exchange / "program.npz")
    setup = time.perf_counter() - t0
    stages: list[dict] = []
    seconds = 0.0
    folders = batch_folders(exchange)
    total = len(folders) * len(program.stages)
    bar = tqdm(total=total, desc="server", unit="stage", disable=None)  # off unless a terminal

    def show(name: str, done: int, stages_per_batch: int) -> None:
        """The bar here (a terminal), and the progress file for a client that waits."""
        bar.set_postfix_str(name, refresh=False)
        bar.n = len(stages) * stages_per_batch + done  # the batches done are in ``stages``
        bar.refresh()
        atomic_write_json(exchange / PROGRESS_FILE, {"done": bar.n, "total": total})

    for folder in folders:
        # a batch over a quarter of the memory is read from the page cache as it is used
        large = (folder / "ciphertexts.npy").stat().st_size > available // 4
        batch = CipherBatch.load(folder, memory_map=large)
        t0 = time.perf_counter()
        result = server.run(program, batch, on_stage=functools.partial(show, folder.name))
        elapsed = time.perf_counter() - t0
        seconds += elapsed
        result.save(folder / "result")
        stages.append({t.stage: t.seconds for t in server.timings})
        log(f"server: {folder.name}, {batch.images} images, {elapsed:.1f} s")
    bar.close()
    report = {
        "seconds": seconds,
        "setup_seconds": setup,
        "batches": len(stages),
        "stages": stages,
        "workers": workers,
        "memory_available_bytes": available,
        # peak resident memory of this process and of its largest worker (their shared pages
        # are counted in both)
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_worker_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "pid": os.getpid(),
        "key_files_loaded": {name: sha256(exchange / "keys" / name) for name in SERVER_KEY_FILES},
    }
    atomic_write_json(exchange / "server.json", report)
    return report
