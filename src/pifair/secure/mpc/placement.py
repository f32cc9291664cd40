"""Where the parties run: threads of this process, or one party per process or host.

``--parties threads`` (simulation: memory links, one process), ``--parties processes`` (one OS
process per party on loopback sockets; the workflow spawns them) or ``--parties
host0:port,host1:port[,host2:port]`` with ``--rank R`` on each machine (the same command, the
deployment case). This module parses the choice and runs the threads case; socket links come
from :func:`~pifair.secure.mpc.engine.make_link`.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from .engine import SERVER, MPCSettings, PartyResult, configure_spu_log, make_link, run_party
from .export import ExportedModel
from .protocols import get_protocol

__all__ = ["Placement", "parse_parties", "free_loopback_addresses", "run_in_threads"]


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
