"""SPU's profile of one run, parsed from its log: time, bytes and messages per op.

SPU (with ``enable_pphlo_profile``) logs, after each run, one line per op kind (executions,
seconds, bytes sent and received, send and receive actions) and the run's link totals. Its
Python binding has no other way to read them, so pifair sends SPU's log to a file and reads
each run's block from it. A "send action" is one message; rounds are at most the messages.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field

__all__ = ["OpCost", "RunProfile", "ProfileLog", "parse_profile", "category", "CATEGORIES"]

#: how pifair groups SPU's ops: comparisons are what ReLU reduction removes
CATEGORIES = ("linear", "comparison", "multiplication", "data movement")

_COMPARISON = {
    "less",
    "greater",
    "less_equal",
    "greater_equal",
    "maximum",
    "minimum",
    "reduce_window",
    "sign",
    "equal",
    "not_equal",
}
_MULTIPLICATION = {"multiply", "select"}  # the ReLU's multiplexer and polynomial products
_LINEAR = {
    "dot",
    "dot_general",
    "convolution",
    "add",
    "subtract",
    "negate",
    "reduce",
    "divide",
    "pad",
}

_OP_LINE = re.compile(
    r"- (?P<name>[\w.:\- ]+?), executed (?P<count>\d+) times, duration (?P<seconds>[\d.e+-]+)s, "
    r"send bytes (?P<sent>\d+) recv bytes (?P<received>\d+), "
    r"send actions (?P<send_actions>\d+), recv actions (?P<recv_actions>\d+)"
)
_LINK_LINE = re.compile(
    r"Link details: total send bytes (?P<sent>\d+), recv bytes (?P<received>\d+), "
    r"send actions (?P<send_actions>\d+), recv actions (?P<recv_actions>\d+)"
)


def category(op: str) -> str:
    """``pphlo.convolution`` -> ``linear``; ``pphlo.less`` -> ``comparison``; ..."""
    base = op.removeprefix("pphlo.").split(":")[0].strip()
    if base in _COMPARISON:
        return "comparison"
    if base in _MULTIPLICATION:
        return "multiplication"
    if base in _LINEAR:
        return "linear"
    return "data movement"


@dataclass
class OpCost:
    """One op kind in one run (or summed over runs)."""

    name: str
    count: int
    seconds: float
    sent: int
    received: int
    send_actions: int
    recv_actions: int

    @property
    def category(self) -> str:
        return category(self.name)


@dataclass
class RunProfile:
    """One party's view of one SPU run: per-op costs and the link totals."""

    ops: dict[str, OpCost] = field(default_factory=dict)
    sent: int = 0
    received: int = 0
    send_actions: int = 0
    recv_actions: int = 0

    @property
    def seconds(self) -> float:
        return sum(o.seconds for o in self.ops.values())

    def __add__(self, other: RunProfile) -> RunProfile:
        ops = {k: OpCost(**asdict(v)) for k, v in self.ops.items()}
        for k, v in other.ops.items():
            if k in ops:
                o = ops[k]
                for attr in (
                    "count",
                    "seconds",
                    "sent",
                    "received",
                    "send_actions",
                    "recv_actions",
                ):
                    setattr(o, attr, getattr(o, attr) + getattr(v, attr))
            else:
                ops[k] = OpCost(**asdict(v))
        return RunProfile(
            ops,
            self.sent + other.sent,
            self.received + other.received,
            self.send_actions + other.send_actions,
            self.recv_actions + other.recv_actions,
        )

    def by_category(self) -> dict[str, dict[str, float]]:
        """Seconds, bytes (sent + received) and messages sent, per category."""
        out = {c: {"seconds": 0.0, "bytes": 0, "messages": 0} for c in CATEGORIES}
        for op in self.ops.values():
            row = out[op.category]
            row["seconds"] += op.seconds
            row["bytes"] += op.sent + op.received
            row["messages"] += op.send_actions
        return out

    def as_dict(self) -> dict:
        return {
            "sent": self.sent,
            "received": self.received,
            "send_actions": self.send_actions,
            "recv_actions": self.recv_actions,
            "seconds": self.seconds,
            "by_category": self.by_category(),
            "ops": {k: asdict(v) for k, v in self.ops.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> RunProfile:
        ops = {k: OpCost(**v) for k, v in d.get("ops", {}).items()}
        return cls(ops, d["sent"], d["received"], d["send_actions"], d["recv_actions"])


def parse_profile(text: str) -> RunProfile:
    """The last run's profile in ``text`` (SPU log lines); an error if there is none."""
    start = text.rfind("HLO profiling")
    if start < 0:
        raise RuntimeError("SPU wrote no profile; was enable_pphlo_profile set for this party?")
    block = text[start:]
    # the HLO block ends where the next level's block (HAL, MPC) or the link line starts
    cut = min(
        (i for i in (block.find("HAL profiling"), block.find("MPC profiling")) if i > 0),
        default=len(block),
    )
    ops = {}
    for m in _OP_LINE.finditer(block[:cut]):
        d = m.groupdict()
        ops[d["name"]] = OpCost(
            d["name"],
            int(d["count"]),
            float(d["seconds"]),
            *(int(d[k]) for k in ("sent", "received", "send_actions", "recv_actions")),
        )
    link = _LINK_LINE.search(block)
    if link is None:
        raise RuntimeError("SPU's profile has no link totals")
    return RunProfile(
        ops, *(int(link[k]) for k in ("sent", "received", "send_actions", "recv_actions"))
    )


class ProfileLog:
    """SPU's log file for this process: each :meth:`next_profile` parses what the last run
    appended."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.offset = os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def next_profile(self) -> RunProfile:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            raw = f.read()
        self.offset += len(raw)
        return parse_profile(raw.decode("utf-8", errors="replace"))
