"""``pifair he-infer``: encrypted inference of a polynomial model under CKKS, measured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from ..atomic import atomic_write_json
from ..config_types import setting
from ..errors import ConfigError, ServerFailedError
from ..runs import Run
from ..secure.he.batched import BatchedClient, CipherBatch
from ..secure.he.compile import HEProgram, compile_model
from ..secure.he.engine import HEClient, HEServer
from ..secure.he.exchange import PROGRESS_FILE, batch_folders, write_program
from ..secure.he.fold import FoldedProgram, fold_for_batching
from ..secure.he.image_layout import ImageLayout
from ..secure.he.params import choose_parameters
from ..secure.he.seal import key_folder_check
from ..training import predict
from ._jobs import RunJob
from .train import dataset_for_run, load_from_run

__all__ = ["HEInferJob", "run_he_infer"]


@dataclass
class HEInferJob(RunJob):
    """What ``pifair he-infer`` runs; its dict is the run's config.yaml."""

    from_run: str = setting(help="run folder of a polynomial model (pifair polyfit)")
    engine: Literal["batched", "seal"] = setting(
        "batched",
        help="batched: linear layers as modular matrix products over the raw ciphertexts, the "
        "server its own process; seal: one SEAL call per weight (the first engine)",
    )
    # more images than one batch are split into batches
    batch: int = setting(0, help="images per ciphertext (0: every slot, N/2)", ge=0)
    images: int | None = setting(None, help="test images to run (unset: one batch)", ge=1)
    scale_bits: int = setting(0, help="CKKS scale: 2^bits (0: the engine's choice)", ge=0)
    workers: int = setting(0, help="server processes (0: one per core)", ge=0)
    compare_images: int = setting(
        0, help="also run N images one per ciphertext (with rotations) and compare times", ge=0
    )
    role: Literal["both", "client"] = setting(
        "both",
        help="both: client, server (spawned) and decryption here; client: encrypt into "
        "--exchange and stop (run pifair he-serve there, then this command again with the "
        "same --out)",
    )
    exchange: str | None = setting(
        None, help="folder of the files between client and server (unset: RUN/exchange)"
    )
    keep_ciphertexts: bool = setting(False, help="keep the ciphertext files after decryption")


def _bytes(ct, folder) -> int:
    path = os.path.join(folder, "ct.tmp")
    ct.save(path)
    size = os.path.getsize(path)
    os.remove(path)
    return size


def _image_layout(
    program, client, server, x: np.ndarray, reference: np.ndarray, run: Run | None
) -> dict:
    """The same program on one image per ciphertext: latency per image, agreement."""
    layout = ImageLayout(program, client, server)
    if run is not None:
        run.log.info(
            "image layout: %d features per ciphertext, %d rotation keys, setup %.1f s",
            layout.m,
            layout.galois.size(),
            layout.setup_seconds,
        )
    outs, seconds = [], 0.0
    for row in x:
        ct = layout.encrypt(row)
        t0 = time.perf_counter()
        out = layout.run(ct)
        seconds += time.perf_counter() - t0
        outs.append(layout.decrypt(out, reference.shape[1]))
    logits = np.stack(outs)
    return {
        "images": len(x),
        "features_per_ciphertext": layout.m,
        "rotation_keys": layout.galois.size(),
        "seconds_per_image": seconds / len(x),
        "setup_seconds": layout.setup_seconds,
        "keygen_seconds": layout.keygen_seconds,
        "argmax_agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
        "max_logit_error": float(np.abs(logits - reference).max()),
    }


def _validate(job: HEInferJob, out: str | os.PathLike | None) -> None:
    """Refuse bad settings before any model is loaded or any folder written."""
    cores = os.cpu_count() or 1
    if job.workers > 4 * cores:
        raise ConfigError(
            f"--workers {job.workers} would fork that many server processes on {cores} cores; "
            f"give at most {4 * cores} (0: one per core)"
        )
    request = Path(job.exchange) / "request.json" if job.exchange else None
    if request is not None and request.is_file():
        owner = json.loads(request.read_text()).get("client_run")
        if out is None or owner != str(Path(out).resolve()):
            raise ConfigError(
                f"the exchange {job.exchange} holds the request of another client ({owner}); "
                "give another --exchange, or that client's --out to finish its run"
            )
    if job.scale_bits != 0 and not 20 <= job.scale_bits <= 60:
        raise ConfigError(
            f"--scale-bits must be in [20, 60] (or 0: the engine's choice), got {job.scale_bits}"
        )
    if job.role == "client" and job.engine != "batched":
        raise ConfigError(
            "--role client needs --engine batched (the SEAL engine runs in one process)"
        )
    if job.compare_images and job.engine == "batched" and job.role == "client":
        raise ConfigError("--compare-images runs both roles here; drop it with --role client")


@dataclass
class _Inputs:
    """What both engines share: the program, the images, the plaintext references."""

    program: HEProgram
    compile_seconds: float
    x: np.ndarray
    labels: np.ndarray
    logits_plain: np.ndarray


def run_he_infer(job: HEInferJob, *, out: str | os.PathLike | None = None) -> Run:
    _validate(job, out)
    model, _, parent = load_from_run(job.from_run)
    model = model.eval()
    data = dataset_for_run(parent)
    t0 = time.perf_counter()
    # refuses layers CKKS cannot run; the batched engine may run a pooling as its own stage
    program = compile_model(model, data.input_shape, cut_at_pooling=True)
    program.check_encryptable()
    compile_s = time.perf_counter() - t0
    if job.engine == "batched":
        folded, params = fold_for_batching(program, scale_bits=job.scale_bits or None)
    program = program.joined()  # the SEAL engine's: one linear stage between two sites
    if job.engine == "seal":
        params = choose_parameters(program.depth, scale_bits=job.scale_bits or 40)
    if job.batch > params.slots:
        raise ConfigError(
            f"--batch {job.batch} exceeds the {params.slots} slots of a ciphertext at these "
            "parameters; give at most that (or 0: every slot)"
        )
    run = Run.create("he-infer", job.as_config(), out=out)  # only once the job can run
    batch = job.batch or params.slots
    n = min(job.images or batch, len(data.test))
    logits, labels, _ = predict(model, data, "test")
    inputs = _Inputs(
        program,
        compile_s,
        data.normalize(data.test.x[:n]).double().numpy(),
        labels[:n].numpy(),
        logits[:n].numpy(),
    )
    run.log.info(
        "program: depth %d, %s; CKKS N=%d, %d slots, log Q %d; %d images in batches of %d",
        program.depth if job.engine == "seal" else folded.depth,
        program.summary() if job.engine == "seal" else folded.summary(),
        params.poly_modulus_degree,
        params.slots,
        params.log_q,
        n,
        batch,
    )
    if job.engine == "seal":
        return _run_seal(job, run, inputs, params, batch)
    return _run_batched(job, run, inputs, folded, params, batch)


def _accuracy_metrics(inputs: _Inputs, logits: np.ndarray, reference: np.ndarray) -> dict:
    y, plain = inputs.labels, inputs.logits_plain
    return {
        "encrypted_accuracy": float(np.mean(logits.argmax(1) == y)),
        "plaintext_accuracy": float(np.mean(plain.argmax(1) == y)),
        "argmax_agreement": float(np.mean(logits.argmax(1) == plain.argmax(1))),
        "max_logit_error": float(np.abs(logits - plain).max()),
        "max_error_vs_float64_program": float(np.abs(logits - reference).max()),
    }


def _log_result(run: Run, metrics: dict) -> None:
    run.update_metrics(**metrics)
    run.log.info(
        "%d images: encrypted accuracy %.4f (plaintext %.4f), agreement %.4f, max logit error "
        "%.2e, %.2f ms/image",
        metrics["images"],
        metrics["encrypted_accuracy"],
        metrics["plaintext_accuracy"],
        metrics["argmax_agreement"],
        metrics["max_logit_error"],
        metrics["amortized_ms_per_image"],
    )


def _encrypt_request(
    run: Run, exchange: Path, secret: Path, x: np.ndarray, folded: FoldedProgram, params, batch: int
) -> dict[str, float]:
    """The client's side of a request: keys (the server's files and the secret key kept
    apart), the program, and the images encrypted a batch at a time into ``exchange``."""
    seconds = {"encrypt": 0.0, "decrypt": 0.0, "keygen": 0.0}
    t0 = time.perf_counter()
    client = BatchedClient(params)
    client.write_server_keys(exchange / "keys")
    client.keys.save_secret_key(secret)
    seconds["keygen"] = time.perf_counter() - t0
    write_program(folded, exchange / "program.npz")
    request = {
        "scale_bits": params.scale_bits,
        "images": len(x),
        "client_run": str(run.path.resolve()),
    }
    atomic_write_json(exchange / "request.json", request)
    t0 = time.perf_counter()
    starts = range(0, len(x), batch)
    features = int(np.prod(x.shape[1:]))  # one ciphertext per feature and batch
    with tqdm(total=len(starts) * features, desc="encrypt", unit="ct", disable=None) as bar:
        for i, start in enumerate(starts):
            batch_cts = client.encrypt(x[start : start + batch], progress=bar.update)
            batch_cts.save(exchange / f"batch-{i:04d}")
    seconds["encrypt"] = time.perf_counter() - t0
    run.log.info(
        "client: %d images encrypted into %s (%.1f s)", len(x), exchange, seconds["encrypt"]
    )
    atomic_write_json(run.file("client") / "client.json", seconds)
    return seconds


def _serve_here(run: Run, exchange: Path, workers: int) -> None:
    """The server as its own process on this host (``pifair he-serve``), its progress shown
    from the file it keeps in the exchange folder."""
    command = [sys.executable, "-m", "pifair", "he-serve", str(exchange), "--workers", str(workers)]
    run.log.info("server: %s", " ".join(command))
    (exchange / PROGRESS_FILE).unlink(missing_ok=True)  # a stopped server's, if any
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: it cannot fill and block
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            _watch(server, exchange / PROGRESS_FILE)
        except BaseException:  # Ctrl-C or SIGTERM here: the server must not run on alone
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            run.log.warning("stopped; the CKKS server process %d was stopped too", server.pid)
            raise
        err.seek(0)
        tail = " | ".join(err.read().strip().splitlines()[-5:]) or "no output"
    if server.returncode != 0:
        code = server.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        raise ServerFailedError(f"the CKKS server process {how}: {tail}")


def _watch(server: subprocess.Popen, progress: Path) -> None:
    """Wait for ``server``, a bar (on a terminal) following the stages it has done."""
    with tqdm(desc="CKKS server", unit="stage", disable=None) as bar:
        while server.poll() is None:
            time.sleep(0.5)
            try:
                state = json.loads(progress.read_text())
            except (OSError, ValueError):  # not written yet
                continue
            bar.total, bar.n = state["total"], state["done"]
            bar.refresh()


def _batched_metrics(
    inputs: _Inputs,
    folded: FoldedProgram,
    params,
    batch: int,
    logits: np.ndarray,
    seconds: dict[str, float],
    server: dict,
    exchange: Path,
) -> dict[str, Any]:
    """The metrics of a batched run: accuracy against the plaintext model, per-image times of
    the server and the client, ciphertext sizes."""
    n = len(inputs.x)
    first = CipherBatch.load(batch_folders(exchange)[0])
    result = CipherBatch.load(batch_folders(exchange)[0] / "result")
    stages: dict[str, float] = {}
    for per_batch in server["stages"]:
        for name, sec in per_batch.items():
            stages[name] = stages.get(name, 0.0) + sec
    return {
        "kind": "he-infer",
        "engine": "batched",
        "images": n,
        "batch": batch,
        "batches": server["batches"],
        "params": params.as_dict(),
        "program": folded.summary(),
        "depth": folded.depth,
        **_accuracy_metrics(inputs, logits, folded.run_plain(inputs.x)),
        "seconds": seconds
        | {
            "server": server["seconds"],
            "server_setup": server["setup_seconds"],
            "compile": inputs.compile_seconds,
            "stages": stages,
        },
        "amortized_ms_per_image": 1000 * server["seconds"] / n,
        "client_ms_per_image": {
            "encrypt": 1000 * seconds["encrypt"] / n,
            "decrypt": 1000 * seconds["decrypt"] / n,
        },
        "amortized_ms_per_image_end_to_end": 1000
        * (server["seconds"] + seconds["encrypt"] + seconds["decrypt"])
        / n,
        "input_ciphertext_bytes": int(first.data[:, 0].nbytes),
        "input_ciphertexts": first.features,
        "output_ciphertext_bytes": int(result.data[:, 0].nbytes),
        "workers": server["workers"],
        "server_process": {"pid": server["pid"], "client_pid": os.getpid()},
        # the server's peak resident memory and its largest worker's (an older server's
        # report has none)
        "server_memory": {
            k: server.get(k)
            for k in ("peak_rss_bytes", "peak_worker_rss_bytes", "memory_available_bytes")
        },
    }


def _run_batched(
    job: HEInferJob, run: Run, inputs: _Inputs, folded: FoldedProgram, params, batch: int
) -> Run:
    """Client here, server as its own spawned process (or on another host), files between."""
    exchange = Path(job.exchange) if job.exchange else run.file("exchange")
    secret = run.file("client") / "secret.seal"
    x = inputs.x
    if not ((exchange / "server.json").is_file() and secret.is_file()):  # not answered yet
        seconds = _encrypt_request(run, exchange, secret, x, folded, params, batch)
        if job.role == "client":
            run.log.info("waiting for the server: pifair he-serve %s", exchange)
            print(
                f"client: {len(x)} images encrypted into {exchange}; run pifair he-serve "
                f"{exchange} on the server, then this command again with --out {run.path}"
            )
            return run
        _serve_here(run, exchange, job.workers or os.cpu_count() or 1)
    seconds = json.loads((run.file("client") / "client.json").read_text())
    client = BatchedClient.with_secret_key(params, secret)
    server = json.loads((exchange / "server.json").read_text())
    t0 = time.perf_counter()
    outputs = [client.decrypt(CipherBatch.load(f / "result")) for f in batch_folders(exchange)]
    seconds["decrypt"] = time.perf_counter() - t0
    logits = np.concatenate(outputs)
    if len(logits) != len(x):
        raise RuntimeError(f"the server answered {len(logits)} images of {len(x)}")
    metrics = _batched_metrics(inputs, folded, params, batch, logits, seconds, server, exchange)
    metrics["server_key_check"] = _key_check(client, exchange, server)
    if not job.keep_ciphertexts:
        for folder in batch_folders(exchange):
            shutil.rmtree(folder)
    if job.compare_images > 0:
        metrics |= _compare_layouts(job, inputs)
    _log_result(run, _with_layout_comparison(metrics))
    return run


def _key_check(client: BatchedClient, exchange: Path, server: dict) -> dict:
    """What the server loaded, checked against this client's secret key: the key folder must
    hold exactly the public files, and no file the server loaded may be the secret key."""
    check = key_folder_check(
        exchange / "keys",
        client.keys.secret_key_bytes(),
        loaded=server.get("key_files_loaded", {}),
    )
    return check | {"server_separate_process": server.get("pid") != os.getpid()}


def _compare_layouts(job: HEInferJob, inputs: _Inputs) -> dict:
    """One image per ciphertext (rotations, the SEAL engine's keys) on the first images."""
    params = choose_parameters(inputs.program.depth, scale_bits=40)
    client = HEClient(params)
    with tempfile.TemporaryDirectory(prefix="pifair-he-") as folder:
        server = HEServer(client.server_keys(folder), workers=1)
        k = job.compare_images
        layout = _image_layout(
            inputs.program, client, server, inputs.x[:k], inputs.logits_plain[:k], None
        )
    return {"image_layout": layout}


def _run_seal(job: HEInferJob, run: Run, inputs: _Inputs, params, batch: int) -> Run:
    """The first engine: one SEAL call per weight, the server an object in this process."""
    program, x = inputs.program, inputs.x
    n = len(x)
    t0 = time.perf_counter()
    client = HEClient(params)
    workers = job.workers or os.cpu_count() or 1
    server_keys = client.server_keys(run.file("server-keys"))
    key_check = client.check_server_keys(server_keys)
    server = HEServer(server_keys, workers=workers)
    keygen_s = time.perf_counter() - t0
    seconds = {"encrypt": 0.0, "server": 0.0, "decrypt": 0.0}
    outputs: list = []
    stage_seconds: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for start in range(0, n, batch):
        chunk = x[start : start + batch]
        t0 = time.perf_counter()
        cts = client.encrypt(chunk)
        seconds["encrypt"] += time.perf_counter() - t0
        if not sizes:  # sizes are the same for every batch: measure the first
            sizes = {
                "input_ciphertext_bytes": _bytes(cts[0], run.path),
                "input_ciphertexts": len(cts),
            }
        t0 = time.perf_counter()
        result = server.run(program, cts)
        seconds["server"] += time.perf_counter() - t0
        for i, t in enumerate(server.timings):
            name = f"{i + 1}. {t.stage}"
            stage_seconds[name] = stage_seconds.get(name, 0.0) + t.seconds
        if "output_ciphertext_bytes" not in sizes:
            sizes["output_ciphertext_bytes"] = _bytes(result[0], run.path)
        t0 = time.perf_counter()
        outputs.append(client.decrypt(result, len(chunk)))
        seconds["decrypt"] += time.perf_counter() - t0
        run.log.info(
            "batch %d-%d done: server %.1f s", start, start + len(chunk), seconds["server"]
        )
    logits = np.concatenate(outputs)
    metrics: dict[str, Any] = {
        "kind": "he-infer",
        "engine": "seal",
        "images": n,
        "batch": batch,
        "batches": -(-n // batch),
        "params": params.as_dict(),
        "program": program.summary(),
        "depth": program.depth,
        **_accuracy_metrics(inputs, logits, program.run_plain(x)),
        "seconds": seconds
        | {"compile": inputs.compile_seconds, "keygen": keygen_s, "stages": stage_seconds},
        "amortized_ms_per_image": 1000 * seconds["server"] / n,
        "client_ms_per_image": {
            "encrypt": 1000 * seconds["encrypt"] / n,
            "decrypt": 1000 * seconds["decrypt"] / n,
        },
        "amortized_ms_per_image_end_to_end": 1000 * sum(seconds.values()) / n,
        **sizes,
        "workers": workers,
        "server_key_check": key_check,
    }
    if job.compare_images > 0:
        metrics["image_layout"] = _image_layout(
            program,
            client,
            server,
            x[: job.compare_images],
            inputs.logits_plain[: job.compare_images],
            run,
        )
    _log_result(run, _with_layout_comparison(metrics))
    return run


def _with_layout_comparison(metrics: dict) -> dict:
    if "image_layout" in metrics:
        per_image = metrics["image_layout"]["seconds_per_image"]
        metrics["batch_vs_image_layout"] = {
            "amortized_ms_per_image": metrics["amortized_ms_per_image"],
            "image_layout_ms_per_image": 1000 * per_image,
            "time_reduction": 1 - metrics["amortized_ms_per_image"] / (1000 * per_image),
        }
    return metrics
