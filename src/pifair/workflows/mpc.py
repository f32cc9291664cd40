"""``pifair mpc-infer``: a run's model under 2PC/3PC (SPU), measured against the plaintext model.

One command for the three placements: ``--parties threads`` runs every party here;
``--parties processes`` runs the server here and every other party in a process of its own on
loopback sockets, every party profiled (:func:`~pifair.secure.mpc.placement.run_in_processes`);
``--parties host:port,...`` with ``--rank R`` plays one party of a deployment across machines
(each machine runs the command with its own rank).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from ..atomic import atomic_write_json
from ..config_types import setting
from ..data import Dataset
from ..errors import ConfigError, PartyFailedError
from ..relu.counting import count_relus
from ..runs import Run
from ..secure.mpc.engine import (
    CLIENT,
    SERVER,
    MPCSettings,
    PartyResult,
    configure_spu_log,
    make_link,
    run_party,
)
from ..secure.mpc.export import ExportedModel, export_model
from ..secure.mpc.placement import Placement, parse_parties, run_in_processes, run_in_threads
from ..secure.mpc.profile import RunProfile
from ..secure.mpc.protocols import get_protocol
from ._jobs import RunJob
from .train import dataset_for_run, load_from_run

__all__ = ["MPCInferJob", "run_mpc_infer", "summarize"]


@dataclass
class MPCInferJob(RunJob):
    """What ``pifair mpc-infer`` runs; its dict is the run's config.yaml."""

    from_run: str = setting(help="run folder of any ReLU, SNL, shared-ReLU or polynomial model")
    protocol: Literal["cheetah", "semi2k", "aby3"] = setting(
        "cheetah", help="cheetah (2PC), semi2k (2PC, trusted first party), aby3 (3PC)"
    )
    images: int = setting(8, help="first N test images", ge=1)
    parties: str = setting(
        "threads",
        help="threads runs every party here; processes, one OS process per party on loopback "
        "sockets; host:port,host:port (one per party) with --rank R plays one party",
    )
    rank: int | None = setting(
        None,
        help="with host:port parties: the party this machine plays (0 server, 1 client, 2 helper)",
        ge=0,
    )
    ot: Literal["ferret", "softspoken"] = setting(
        "ferret", help="Cheetah's OT (ferret: silent OT, fewest bytes)"
    )
    batch: int = setting(1, help="images per SPU run (1: latency)", ge=1)
    fraction_bits: int = setting(18, help="fixed-point fraction bits", ge=1)
    warmup: bool = setting(
        True, help="measure the one-time setup apart with a first run on a zero image"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank is not None and self.parties in ("threads", "processes"):
            raise ConfigError(
                f"--rank plays one party of a deployment across hosts; with --parties "
                f"{self.parties} every party runs here: drop --rank"
            )

    def settings(self) -> MPCSettings:
        return MPCSettings(self.protocol, self.ot, self.fraction_bits, self.batch, self.warmup)


def _play_one(
    job: MPCInferJob, placement: Placement, program: ExportedModel, images: np.ndarray, run: Run
) -> PartyResult:
    world = get_protocol(job.protocol).parties
    if job.rank is None or not 0 <= job.rank < world:
        raise ConfigError(
            f"--parties with addresses needs --rank in [0, {world}): the party this machine plays"
        )
    log = configure_spu_log(run.file(f"spu-party{job.rank}.log"))
    link = make_link(placement.addresses, job.rank)
    try:
        return run_party(
            job.rank,
            link,
            job.settings(),
            program=program if job.rank == SERVER else None,
            images=images if job.rank == CLIENT else None,
            log=log,
        )
    finally:
        link.stop_link()


def _per_image(profile: RunProfile | None, images: int) -> dict | None:
    if profile is None:
        return None
    d = profile.as_dict()
    scale = 1.0 / images
    return {
        "sent": d["sent"] * scale,
        "received": d["received"] * scale,
        "messages": d["send_actions"] * scale,
        "seconds": d["seconds"] * scale,
        "by_category": {
            c: {k: v * scale for k, v in row.items()} for c, row in d["by_category"].items()
        },
        "ops": {
            k: {
                "count": v["count"] * scale,
                "seconds": v["seconds"] * scale,
                "bytes": (v["sent"] + v["received"]) * scale,
                "messages": v["send_actions"] * scale,
            }
            for k, v in d["ops"].items()
        },
    }


def summarize(results: list[PartyResult], world: int) -> dict:
    """Per-image time, bytes and messages per party; setup apart; per-op and per-category
    costs from the server's profile."""
    by_rank = {r.rank: r for r in results}
    server, client = by_rank.get(SERVER), by_rank.get(CLIENT)
    timed = client or server
    if timed is None:
        raise ValueError("summarize needs the client's or the server's result")
    n = timed.images
    parties = []
    for rank in range(world):
        r = by_rank.get(rank)
        total = r.total if r else None
        row: dict[str, Any] = {
            "rank": rank,
            "role": r.role if r else None,
            "measured": total is not None,
        }
        if total is not None:
            row |= {
                "sent_per_image": total.sent / n,
                "received_per_image": total.received / n,
                "messages_per_image": total.send_actions / n,
                # this party's own split (with --parties processes every party is profiled)
                "bytes_by_category_per_image": {
                    c: row["bytes"] / n for c, row in total.by_category().items()
                },
            }
        elif world == 2 and server is not None and server.total is not None:
            # 2PC: what one party sends the other receives
            st = server.total
            row |= {
                "sent_per_image": st.received / n,
                "received_per_image": st.sent / n,
                "messages_per_image": st.recv_actions / n,
                "derived_from": "server's link totals",
            }
        if r is not None:
            row["sharing_bytes_sent"] = r.sharing_bytes_sent
        parties.append(row)
    reference: PartyResult | None = server
    if server is None or server.total is None:
        reference = next((r for r in results if r.total is not None), None)
    runs = len(timed.run_seconds)
    out: dict[str, Any] = {
        "seconds_per_image": sum(timed.run_seconds) / n,
        "seconds_per_run": sum(timed.run_seconds) / max(runs, 1),
        "parties": parties,
        "per_image": _per_image(reference.total, n) if reference else None,
        "profiled_rank": reference.rank if reference else None,
        "compile_seconds": server.compile_seconds if server else None,
    }
    if reference is not None and reference.setup is not None and reference.total is not None:
        s = reference.setup
        out["setup"] = {
            "seconds": timed.setup_seconds,
            "bytes": s.sent + s.received,
            "messages": s.send_actions,
            # the warm-up is a full run: what it cost beyond an average run is the one-time part
            "one_time_seconds": timed.setup_seconds - out["seconds_per_run"],
            "one_time_bytes": s.sent
            + s.received
            - (reference.total.sent + reference.total.received) / max(runs, 1),
        }
    if out["per_image"]:
        p = out["per_image"]
        out["bytes_per_image"] = p["sent"] + p["received"]
        out["comparison_bytes_per_image"] = p["by_category"]["comparison"]["bytes"]
        out["linear_bytes_per_image"] = p["by_category"]["linear"]["bytes"]
    return out


def _test_images(job: MPCInferJob, data: Dataset) -> np.ndarray:
    """The first ``job.images`` normalized test images; more than the test set holds, or a
    batch larger than the images, is refused (not clamped: the config would say what did not
    run)."""
    n, available = job.images, len(data.test)
    if n > available:
        raise ConfigError(
            f"--images {n:,} is more than the {available:,} test images of {data.name}; give "
            f"at most {available:,}"
        )
    if job.batch > n:
        raise ConfigError(f"--batch {job.batch:,} is more than --images {n:,}; give at most {n:,}")
    return data.normalize(data.test.x[:n]).float().numpy()


def run_mpc_infer(job: MPCInferJob, *, out: str | os.PathLike | None = None) -> Run:
    settings = job.settings()
    settings.validate()
    protocol = get_protocol(job.protocol)
    placement = parse_parties(job.parties, job.protocol)
    model, record, parent = load_from_run(job.from_run)
    model = model.eval()
    data = dataset_for_run(parent)
    images = _test_images(job, data)
    n = len(images)
    t0 = time.perf_counter()
    # refuses what MPC cannot run, before any run folder exists
    program = export_model(model, data.input_shape)
    export_s = time.perf_counter() - t0
    run = Run.create("mpc-infer", job.as_config(), out=out)
    relus = count_relus(model, data.input_shape).total
    run.log.info(
        "%s (%s): %d images, %d ReLUs (%d comparisons by the sites), parties: %s",
        protocol.name,
        protocol.security,
        n,
        relus,
        program.comparisons,
        placement.describe(),
    )
    if placement.mode == "hosts":
        result = _play_one(job, placement, program, images, run)
        run.update_metrics(party=result.as_dict())
        results = [result]
        if job.rank != CLIENT:
            return run  # the server or helper measured its side; the client has the outputs
    elif placement.mode == "processes":
        results = run_in_processes(program, images, settings, folder=run.path / "parties")
    else:
        results = run_in_threads(program, images, settings, log_path=run.file("spu.log"))
    client = next(r for r in results if r.rank == CLIENT)
    with torch.no_grad():  # the plaintext model on the very inputs the parties shared
        logits_plain = model(torch.from_numpy(images)).double().numpy()
    y = data.test.y[:n].numpy()
    logits = client.logits
    if logits is None:
        raise PartyFailedError("the client party returned no logits")
    metrics = {
        "kind": "mpc-infer",
        "protocol": protocol.name,
        "security": protocol.security,
        "ot": job.ot if protocol.spu_kind == "CHEETAH" else None,
        "placement": placement.describe(),
        "images": n,
        "batch": job.batch,
        "relus": relus,
        "comparisons": program.comparisons,
        "sites": [s.__dict__ for s in program.sites],
        "model": record["model"],
        "mpc_accuracy": float((logits.argmax(1) == y).mean()),
        "plaintext_accuracy": float((logits_plain.argmax(1) == y).mean()),
        "argmax_agreement": float((logits.argmax(1) == logits_plain.argmax(1)).mean()),
        "max_logit_error": float(np.abs(logits - logits_plain).max()),
        "max_relative_error": float(
            np.abs(logits - logits_plain).max() / max(1e-12, np.abs(logits_plain).max())
        ),
        "fixed_point": f"64-bit ring, {job.fraction_bits} fraction bits",
        "export_seconds": export_s,
        **summarize(results, protocol.parties),
    }
    run.update_metrics(**metrics)
    atomic_write_json(
        run.file("logits.json"),
        {"mpc": logits.tolist(), "plaintext": logits_plain.tolist(), "labels": y.tolist()},
    )
    run.log.info(
        "agreement %.3f, max logit error %.2e, %.2f s per image, %.2f MB per image",
        metrics["argmax_agreement"],
        metrics["max_logit_error"],
        metrics["seconds_per_image"],
        (metrics.get("bytes_per_image") or 0) / 1e6,
    )
    return run
