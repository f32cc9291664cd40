"""One party of an SPU inference, and the links that connect the parties.

Every party runs :func:`run_party` with its own link; the same code runs whether the parties
are threads of one process (memory links), processes on one machine (loopback sockets) or
separate hosts (``host:port`` addresses). Roles: rank 0 is the server (it owns the weights and
the compiled program), rank 1 the client (it owns the images and receives the logits), rank 2
a helper (3PC only).

What travels outside SPU's runs goes through the same link and is counted apart: the program
(public), the shares of the weights (once) and of each image batch, and the output shares sent
to the client. Frames are length-prefixed bytes and JSON, never pickle, since they come from
another party.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ...errors import ConfigError
from ...extras import require
from .export import ExportedModel
from .profile import ProfileLog, RunProfile
from .protocols import ROLES, get_protocol, runtime_config

__all__ = ["MPCSettings", "PartyResult", "run_party", "make_link", "configure_spu_log"]

CLIENT, SERVER = 1, 0


def _spu():
    return require("spu", extra="mpc", purpose="MPC inference (SecretFlow SPU)")


@dataclass
class MPCSettings:
    """What the parties agree on before a run (every party must be given the same)."""

    protocol: str = "cheetah"
    ot: str = "ferret"  # Cheetah's OT: ferret (silent OT, fewest bytes) or softspoken
    fraction_bits: int = 18  # fixed-point fraction bits on the 64-bit ring
    batch: int = 1  # images per SPU run (a short last batch is padded with zeros)
    warmup: bool = True  # a first run on a zero image takes the one-time setup, reported apart

    def validate(self) -> None:
        get_protocol(self.protocol)
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}")


@dataclass
class PartyResult:
    """What one party measured. ``runs`` and ``setup`` hold SPU profiles where this party was
    profiled; ``logits`` only the client has."""

    rank: int
    role: str
    images: int
    run_seconds: list[float]
    setup_seconds: float  # the warm-up run: one-time setup plus one run's own cost
    runs: list[RunProfile] = field(default_factory=list)
    setup: RunProfile | None = None
    compile_seconds: float = 0.0
    sharing_bytes_sent: int = 0  # shares and program sent outside SPU runs
    logits: np.ndarray | None = None

    @property
    def total(self) -> RunProfile | None:
        """The profile summed over every image run (not the setup)."""
        if not self.runs:
            return None
        out = RunProfile()
        for r in self.runs:
            out = out + r
        return out

    def as_dict(self) -> dict:
        return {
            "rank": self.rank,
            "role": self.role,
            "images": self.images,
            "run_seconds": self.run_seconds,
            "setup_seconds": self.setup_seconds,
            "runs": [r.as_dict() for r in self.runs],
            "setup": self.setup.as_dict() if self.setup else None,
            "compile_seconds": self.compile_seconds,
            "sharing_bytes_sent": self.sharing_bytes_sent,
            "logits": None if self.logits is None else self.logits.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> PartyResult:
        d = dict(d)
        d["runs"] = [RunProfile.from_dict(r) for r in d["runs"]]
        d["setup"] = RunProfile.from_dict(d["setup"]) if d["setup"] else None
        d["logits"] = None if d["logits"] is None else np.asarray(d["logits"], np.float64)
        return cls(**d)


def configure_spu_log(path: str | os.PathLike) -> ProfileLog:
    """Send SPU's log (profiles included) of this process to ``path``, not the console."""
    libspu = _spu().libspu
    options = libspu.logging.LogOptions()
    options.enable_console_logger = False
    options.system_log_path = os.fspath(path)
    libspu.logging.setup_logging(options)
    return ProfileLog(path)


def make_link(
    addresses: Sequence[str] | None,
    rank: int,
    *,
    world: int | None = None,
    world_id: str | None = None,
):
    """The link of party ``rank``: over sockets to ``addresses`` (``host:port`` per rank), or,
    with ``addresses=None``, in memory between threads of this process (``world`` parties,
    ``world_id`` naming this set of parties apart from any earlier one)."""
    libspu = _spu().libspu
    desc = libspu.link.Desc()
    desc.recv_timeout_ms = 3_600_000  # a large layer can keep a party busy for minutes
    if addresses is None:
        desc.id = f"pifair-{world_id}" if world_id else desc.id
        for r in range(world or 2):
            desc.add_party(f"party{r}", f"thread{r}")
        return libspu.link.create_mem(desc, rank)
    desc.connect_retry_times = 120  # parties start at different times
    desc.connect_retry_interval_ms = 1000
    for r, address in enumerate(addresses):
        desc.add_party(f"party{r}", address)
    return libspu.link.create_brpc(desc, rank)


# -- frames: length-prefixed byte strings --------------------------------------------------


def _pack(blobs: Sequence[bytes]) -> bytes:
    head = struct.pack(f"<Q{len(blobs)}Q", len(blobs), *(len(b) for b in blobs))
    return head + b"".join(blobs)


def _unpack(data: bytes) -> list[bytes]:
    (count,) = struct.unpack_from("<Q", data)
    sizes = struct.unpack_from(f"<{count}Q", data, 8)
    out, pos = [], 8 + 8 * count
    for size in sizes:
        out.append(data[pos : pos + size])
        pos += size
    return out


def _share_bytes(share) -> bytes:
    return _pack([share.meta, *share.share_chunks])


def _share_from(data: bytes):
    share = _spu().libspu.Share()
    meta, *chunks = _unpack(data)
    share.meta, share.share_chunks = meta, chunks
    return share


class _Channel:
    """Sends and receives frames over the party's link, counting the bytes it sends."""

    def __init__(self, link) -> None:
        self.link = link
        self.sent = 0

    def send(self, dst: int, blobs: Sequence[bytes]) -> None:
        data = _pack(blobs)
        self.sent += len(data)
        self.link.send(dst, data)

    def recv(self, src: int) -> list[bytes]:
        return _unpack(self.link.recv(src))


def _deal(
    channel: _Channel, io, rank: int, owner: int, world: int, arrays: list[np.ndarray] | None
) -> list:
    """The owner secret-shares ``arrays`` and sends each party its shares; returns this
    party's shares."""
    vis = _spu().libspu.Visibility.VIS_SECRET
    if rank == owner:
        assert arrays is not None, "the owner deals its arrays"
        shares = [io.make_shares(a, vis, owner) for a in arrays]
        for r in range(world):
            if r != owner:
                channel.send(r, [_share_bytes(s[r]) for s in shares])
        return [s[rank] for s in shares]
    return [_share_from(b) for b in channel.recv(owner)]


def _compile(fn, args: list[np.ndarray], names: list[str]):
    """SPU executable of ``fn(*args)`` with every input secret."""
    spu = _spu()
    from spu.utils import frontend

    vis = [spu.libspu.Visibility.VIS_SECRET] * len(args)
    executable, _ = frontend.compile(
        frontend.Kind.JAX,
        fn,
        args,
        {},
        names,
        vis,
        lambda outs: [f"out{i}" for i in range(len(outs))],
    )
    return executable


def _check_roles(
    rank: int, world: int, protocol_name: str, program: ExportedModel | None, images
) -> None:
    if not 0 <= rank < world:
        raise ConfigError(f"rank must be in [0, {world}) for {protocol_name}, got {rank}")
    if rank == SERVER and program is None:
        raise ConfigError("the server (rank 0) needs the exported model")
    if rank == CLIENT and images is None:
        raise ConfigError("the client (rank 1) needs the images")


def _agree_on_the_request(
    channel: _Channel,
    rank: int,
    world: int,
    settings: MPCSettings,
    program: ExportedModel | None,
    images: np.ndarray | None,
) -> int:
    """The client says how many images come and with which settings; every other party
    checks them (parties started with different settings would wait on each other forever).
    Returns the image count."""
    if rank == CLIENT:
        assert images is not None  # checked by _check_roles
        header = {"images": len(images), "shape": list(images.shape[1:])}
        header["settings"] = asdict(settings)
        for r in range(world):
            if r != CLIENT:
                channel.send(r, [json.dumps(header).encode()])
        return len(images)
    header = json.loads(channel.recv(CLIENT)[0])
    if header["settings"] != asdict(settings):
        raise ConfigError(
            f"party {rank} runs with {asdict(settings)} but the client with "
            f"{header['settings']}: start every party with the same options"
        )
    if rank == SERVER and program and tuple(header["shape"]) != tuple(program.input_shape):
        raise ConfigError(
            f"the client's images have shape {tuple(header['shape'])} but the model takes "
            f"{tuple(program.input_shape)}"
        )
    return int(header["images"])


def _publish_program(
    channel: _Channel, rank: int, world: int, batch: int, program: ExportedModel | None
) -> tuple[Any, float]:
    """The server compiles the program for a batch and sends it to every party; returns the
    executable and the compile seconds (0 on other parties)."""
    if rank != SERVER:
        main = _spu().libspu.Executable()
        main.ParseFromString(channel.recv(SERVER)[0])
        return main, 0.0
    assert program is not None  # checked by _check_roles
    t0 = time.perf_counter()
    keys = sorted(program.params)
    main = _compile(
        lambda x, *ps: program.fn(x, dict(zip(keys, ps))),
        [np.zeros((batch, *program.input_shape), np.float32), *(program.params[k] for k in keys)],
        ["x", *keys],
    )
    compile_s = time.perf_counter() - t0
    for r in range(1, world):
        channel.send(r, [main.SerializeToString()])
    return main, compile_s


@dataclass
class _Session:
    """A party's side of a compiled program: the channel, SPU's io and runtime."""

    rank: int
    world: int
    channel: _Channel
    io: Any
    runtime: Any
    main: Any
    batch: int

    def run_on(self, images: np.ndarray | None, start: int) -> float:
        """Deal the client's batch of ``images`` from ``start`` (zero-padded; None on other
        parties), run the program; returns the run's seconds."""
        batch = None
        if self.rank == CLIENT and images is not None:
            batch = np.zeros((self.batch, *images.shape[1:]), np.float32)
            chunk = images[start : start + self.batch]
            batch[: len(chunk)] = chunk
        dealt = [batch] if batch is not None else None
        (share,) = _deal(self.channel, self.io, self.rank, CLIENT, self.world, dealt)
        self.runtime.set_var(self.main.input_names[0], share)
        t0 = time.perf_counter()
        self.runtime.run(self.main)
        return time.perf_counter() - t0

    def output_to_client(self) -> np.ndarray | None:
        """The output's shares go to the client, which reconstructs the logits."""
        out = self.runtime.get_var(self.main.output_names[0])
        if self.rank != CLIENT:
            self.channel.send(CLIENT, [_share_bytes(out)])
            return None
        parts = {r: _share_from(self.channel.recv(r)[0]) for r in range(self.world) if r != CLIENT}
        parts[CLIENT] = out
        return np.asarray(self.io.reconstruct([parts[r] for r in range(self.world)]))


def run_party(
    rank: int,
    link,
    settings: MPCSettings,
    *,
    program: ExportedModel | None = None,
    images: np.ndarray | None = None,
    log: ProfileLog | None = None,
) -> PartyResult:
    """Play party ``rank`` of one inference over ``link``.

    The server (rank 0) must give ``program``; the client (rank 1) ``images`` of shape
    (n, *input_shape). With ``log`` (this process's SPU log), this party's runs are profiled.
    """
    _spu()  # a missing extra is named (and how to install it) before anything runs
    from spu import api as spu_api

    settings.validate()
    protocol = get_protocol(settings.protocol)
    world = protocol.parties
    _check_roles(rank, world, protocol.name, program, images)
    config = runtime_config(
        protocol, ot=settings.ot, fraction_bits=settings.fraction_bits, profile=log is not None
    )
    channel = _Channel(link)
    io = spu_api.Io(world, config)
    count = _agree_on_the_request(channel, rank, world, settings, program, images)
    main, compile_s = _publish_program(channel, rank, world, settings.batch, program)
    party = _Session(rank, world, channel, io, spu_api.Runtime(link, config), main, settings.batch)
    # the weights, shared once
    weights = [program.params[k] for k in main.input_names[1:]] if program else None
    for name, share in zip(main.input_names[1:], _deal(channel, io, rank, SERVER, world, weights)):
        party.runtime.set_var(name, share)
    # one-time setup: SPU's protocols set up lazily (HE contexts, base OTs, OT extension
    # batches) on their first use at a given size, so a first run on a zero image takes it
    setup_s, setup_profile = 0.0, None
    if settings.warmup:
        setup_s = party.run_on(np.zeros_like(images) if images is not None else None, 0)
        setup_profile = log.next_profile() if log else None
    # the images, a batch per run; output shares go to the client
    run_seconds, profiles, outputs = [], [], []
    for start in range(0, count, settings.batch):
        run_seconds.append(party.run_on(images, start))
        if log:
            profiles.append(log.next_profile())
        logits = party.output_to_client()
        if logits is not None:
            outputs.append(logits[: min(settings.batch, count - start)])
    return PartyResult(
        rank=rank,
        role=ROLES[rank],
        images=count,
        run_seconds=run_seconds,
        setup_seconds=setup_s,
        runs=profiles,
        setup=setup_profile,
        compile_seconds=compile_s,
        sharing_bytes_sent=channel.sent,
        logits=np.concatenate(outputs).astype(np.float64) if outputs else None,
    )
