"""Where the parties run: threads of this process, or one party per process or host.

``--parties threads`` (simulation: memory links, one process), ``--parties processes`` (one OS
process per party on loopback sockets) or ``--parties host0:port,host1:port[,host2:port]`` with
``--rank R`` on each machine (the same command, the deployment case). This module parses the
choice and runs the threads case (:func:`run_in_threads`) and the processes case with every
party profiled (:func:`run_in_processes`); socket links come from
:func:`~pifair.secure.mpc.engine.make_link`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...atomic import atomic_write_json
from ...errors import ConfigError, PartyFailedError
from .engine import SERVER, MPCSettings, PartyResult, configure_spu_log, make_link, run_party
from .export import ExportedModel
from .protocols import get_protocol

__all__ = [
    "Placement",
    "parse_parties",
    "free_loopback_addresses",
    "run_in_processes",
    "run_in_threads",
]


@dataclass(frozen=True)
class Placement:
    """``mode`` is threads, processes or hosts; ``addresses`` one ``host:port`` per rank."""

    mode: str
    addresses: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.mode == "hosts":
            return "one party per host: " + ", ".join(self.addresses)
        return {
            "threads": "threads of one process (memory links)",
            "processes": "one process per party (loopback sockets)",
        }[self.mode]


def parse_parties(text: str, protocol: str) -> Placement:
    """``threads``, ``processes`` or a comma-separated ``host:port`` list (one per party)."""
    parties = get_protocol(protocol).parties
    if text in ("threads", "processes"):
        return Placement(text)
    addresses = tuple(a.strip() for a in text.split(",") if a.strip())
    for a in addresses:
        host, _, port = a.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"party address {a!r} is not host:port; give --parties threads, processes or "
                "host:port,host:port"
            )
    if len(addresses) != parties:
        raise ConfigError(
            f"{protocol} has {parties} parties but --parties lists {len(addresses)} addresses"
        )
    return Placement("hosts", addresses)


def free_loopback_addresses(count: int) -> list[str]:
    """``127.0.0.1:port`` for ``count`` ports free at the time of asking."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_in_threads(
    program: ExportedModel,
    images: np.ndarray,
    settings: MPCSettings,
    *,
    log_path: str | os.PathLike,
) -> list[PartyResult]:
    """Every party as a thread of this process; the server's runs are profiled (SPU writes
    one log per process, so only one party can be told apart)."""
    world = get_protocol(settings.protocol).parties
    log = configure_spu_log(log_path)
    results: list[PartyResult | None] = [None] * world
    errors: list[BaseException] = []
    world_id = uuid.uuid4().hex

    def party(rank: int) -> None:
        try:
            link = make_link(None, rank, world=world, world_id=world_id)
            results[rank] = run_party(
                rank,
                link,
                settings,
                program=program if rank == SERVER else None,
                images=images if rank == 1 else None,
                log=log if rank == SERVER else None,
            )
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(err)

    threads = [threading.Thread(target=party, args=(r,), daemon=True) for r in range(world)]
    for t in threads:
        t.start()
    # a party that fails leaves the others waiting on its messages: raise at once (they are
    # daemon threads) instead of joining them
    while any(t.is_alive() for t in threads) and not errors:
        threads[0].join(timeout=0.2)
    if errors:
        # the other parties may stay blocked on the failed one until SPU's receive timeout;
        # their links are named apart (world_id), so the next run does not meet them
        raise errors[0]
    return [r for r in results if r is not None]


def _party_process(
    rank: int,
    addresses: list[str],
    settings: MPCSettings,
    images: np.ndarray | None,
    folder: str,
) -> None:
    """One non-server party in a process of its own: its SPU log (its profile) and its result
    (``party{rank}.json``) in ``folder``."""
    log = configure_spu_log(Path(folder) / f"party{rank}.log")
    link = make_link(addresses, rank)
    try:
        result = run_party(rank, link, settings, images=images, log=log)
    finally:
        link.stop_link()
    atomic_write_json(Path(folder) / f"party{rank}.json", result.as_dict())


def run_in_processes(
    program: ExportedModel,
    images: np.ndarray,
    settings: MPCSettings,
    *,
    folder: str | os.PathLike,
) -> list[PartyResult]:
    """Every party profiled: the server (which holds ``program``) in a thread of this process,
    the client and any helper in processes of their own, on loopback sockets. SPU writes one
    log per process, so this is how each party's bytes per op are told apart (threads give
    the server's only); their logs and results are kept in ``folder``."""
    world = get_protocol(settings.protocol).parties
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    addresses = free_loopback_addresses(world)
    context = multiprocessing.get_context("spawn")  # SPU and JAX hold threads: never fork
    children = [
        context.Process(
            target=_party_process,
            args=(r, addresses, settings, images if r == 1 else None, str(folder)),
            daemon=True,
        )
        for r in range(1, world)
    ]
    for child in children:
        child.start()
    log = configure_spu_log(folder / "party0.log")
    server: list[PartyResult] = []
    errors: list[BaseException] = []

    def play() -> None:
        link = make_link(addresses, SERVER)
        try:
            server.append(run_party(SERVER, link, settings, program=program, log=log))
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(err)
        finally:
            link.stop_link()

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    try:
        # a party that fails leaves the others waiting on it: stop at the first failure
        while thread.is_alive() or any(c.is_alive() for c in children):
            if errors or any(c.exitcode not in (None, 0) for c in children):
                break
            time.sleep(0.2)
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
            child.join()
    if errors:
        raise errors[0]
    failed = [r for r, c in zip(range(1, world), children) if c.exitcode != 0]
    if failed:
        raise PartyFailedError(
            f"party {failed[0]} exited with {children[failed[0] - 1].exitcode}; its SPU log: "
            f"{folder / f'party{failed[0]}.log'}"
        )
    others = [
        PartyResult.from_dict(json.loads((folder / f"party{r}.json").read_text()))
        for r in range(1, world)
    ]
    return server + others
