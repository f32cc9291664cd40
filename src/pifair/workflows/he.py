"""``pifair he-infer``: encrypted inference of a polynomial model under CKKS, measured."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..runs import Run
from ..secure.he.compile import compile_model
from ..secure.he.engine import HEClient, HEServer
from ..secure.he.image_layout import ImageLayout
from ..secure.he.params import choose_parameters
from ..training import predict
from ._jobs import RunJob
from .train import dataset_for_run, load_from_run

__all__ = ["HEInferJob", "run_he_infer"]


@dataclass
class HEInferJob(RunJob):
    """What ``pifair he-infer`` runs; its dict is the run's config.yaml."""

    from_run: str
    batch: int = 4096  # images per ciphertext (one per slot); more than the slots are split
    images: int | None = None  # test images to run (default: one batch)
    scale_bits: int = 40
    workers: int = 0  # processes computing a stage's outputs (0: one per CPU core)
    compare_images: int = 0  # also run N images one per ciphertext (rotations): the comparison


def _bytes(ct, folder) -> int:
    path = os.path.join(folder, "ct.tmp")
    ct.save(path)
    size = os.path.getsize(path)
    os.remove(path)
    return size


def _image_layout(program, client, server, x: np.ndarray, reference: np.ndarray, run: Run) -> dict:
    """The same program on one image per ciphertext: latency per image, agreement."""
    layout = ImageLayout(program, client, server)
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


def _validate(job: HEInferJob) -> None:
    """Refuse bad settings before any model is loaded or any folder written."""
    if job.batch < 1:
        raise ConfigError(f"--batch must be >= 1 (images per ciphertext), got {job.batch}")
    if job.images is not None and job.images < 1:
        raise ConfigError(f"--images must be >= 1 (or unset: one batch), got {job.images}")
    if job.compare_images < 0:
        raise ConfigError(f"--compare-images must be >= 0, got {job.compare_images}")
    if job.workers < 0:
        raise ConfigError(f"--workers must be >= 0 (0: one per core), got {job.workers}")
    if not 20 <= job.scale_bits <= 60:
        raise ConfigError(f"--scale-bits must be in [20, 60], got {job.scale_bits}")


def run_he_infer(job: HEInferJob, *, out: str | os.PathLike | None = None) -> Run:
    _validate(job)
    model, _, parent = load_from_run(job.from_run)
    model = model.eval()
    data = dataset_for_run(parent)
    t0 = time.perf_counter()
    program = compile_model(model, data.input_shape)  # refuses layers CKKS cannot run
    program.check_encryptable()
    compile_s = time.perf_counter() - t0
    params = choose_parameters(program.depth, scale_bits=job.scale_bits)
    run = Run.create("he-infer", job.as_config(), out=out)  # only once the job can run
    batch = min(job.batch, params.slots)
    n = min(job.images or job.batch, len(data.test))
    logits, labels, _ = predict(model, data, "test")
    x = data.normalize(data.test.x[:n]).double().numpy()
    logits_plain, y = logits[:n].numpy(), labels[:n].numpy()
    run.log.info(
        "program: depth %d, %s; CKKS N=%d, %d slots, log Q %d; %d images in batches of %d",
        program.depth,
        program.summary(),
        params.poly_modulus_degree,
        params.slots,
        params.log_q,
        n,
        batch,
    )
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
        for t in server.timings:
            stage_seconds[t.stage] = stage_seconds.get(t.stage, 0.0) + t.seconds
        if "output_ciphertext_bytes" not in sizes:
            sizes["output_ciphertext_bytes"] = _bytes(result[0], run.path)
        t0 = time.perf_counter()
        outputs.append(client.decrypt(result, len(chunk)))
        seconds["decrypt"] += time.perf_counter() - t0
        run.log.info(
            "batch %d-%d done: server %.1f s", start, start + len(chunk), seconds["server"]
        )
    logits = np.concatenate(outputs)
    reference = program.run_plain(x)
    metrics: dict[str, Any] = {
        "kind": "he-infer",
        "images": n,
        "batch": batch,
        "batches": -(-n // batch),
        "params": params.as_dict(),
        "program": program.summary(),
        "depth": program.depth,
        "encrypted_accuracy": float(np.mean(logits.argmax(1) == y)),
        "plaintext_accuracy": float(np.mean(logits_plain.argmax(1) == y)),
        "argmax_agreement": float(np.mean(logits.argmax(1) == logits_plain.argmax(1))),
        "max_logit_error": float(np.abs(logits - logits_plain).max()),
        "max_error_vs_float64_program": float(np.abs(logits - reference).max()),
        "seconds": seconds | {"compile": compile_s, "keygen": keygen_s, "stages": stage_seconds},
        "amortized_ms_per_image": 1000 * seconds["server"] / n,
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
            logits_plain[: job.compare_images],
            run,
        )
        per_image = metrics["image_layout"]["seconds_per_image"]
        metrics["batch_vs_image_layout"] = {
            "amortized_ms_per_image": metrics["amortized_ms_per_image"],
            "image_layout_ms_per_image": 1000 * per_image,
            "time_reduction": 1 - metrics["amortized_ms_per_image"] / (1000 * per_image),
        }
    run.update_metrics(**metrics)
    run.log.info(
        "encrypted accuracy %.4f (plaintext %.4f), agreement %.4f, max logit error %.2e, %.2f "
        "ms/image",
        metrics["encrypted_accuracy"],
        metrics["plaintext_accuracy"],
        metrics["argmax_agreement"],
        metrics["max_logit_error"],
        metrics["amortized_ms_per_image"],
    )
    return run
