"""What every benchmark shares: the machine and commit it ran on, its printed table, and its
results file in ``benchmarks/results/`` (the only source of the numbers README quotes)."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from pifair.atomic import atomic_write_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# ResNet18 (SNL's variant) on CIFAR-10 as the GPU settings train the dense model
CIFAR10_RESNET18 = dict(
    data="cifar10",
    model="resnet18",
    snl_variant=True,
    epochs=40,
    batch_size=512,
    lr=0.2,
    label_smoothing=0.1,
    schedule="onecycle",
)
# its CPU-scale stand-in: width 16 (a quarter of the ReLUs) on 5,000 CIFAR-10 images
CIFAR10_RESNET18_CPU = dict(
    data="cifar10",
    model="resnet18",
    snl_variant=True,
    width=16,
    limit=5000,
    epochs=15,
    batch_size=128,
    lr=0.1,
    label_smoothing=0.1,
    schedule="onecycle",
)


def machine_line() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.node()} | {platform.machine()} | {os.cpu_count()} CPUs | {gpu} | torch "
        f"{torch.__version__}"
    )


def machine_class() -> str:
    """The machine as README names it: the GPU's name, or 'N-core CPU'."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()}-core CPU"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit() -> str:
    """Short hash of HEAD, with ``+dirty`` when tracked files differ from it."""
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    return head + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


# the code a benchmark runs is the code of its start: record HEAD and the tree state now
_START_REF = _git("rev-parse", "HEAD")
_START_DIRTY = bool(_git("status", "--porcelain", "--untracked-files=no"))
# 1-minute load average at the start: a busy machine slows every timing (2 cores here)
_START_LOAD = os.getloadavg()[0]


def print_table(header: list[str], rows: list[list[object]]) -> None:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for i, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def save_results(
    name: str,
    *,
    tables: dict[str, tuple[list[str], list[list[object]]]],
    summary: list[str],
    data: dict[str, Any],
    setting: dict[str, Any] | None = None,
    results_dir: Path | None = None,
) -> Path:
    """Write ``benchmarks/results/NAME.json``: commit (clean or dirty), machine, the command
    that reproduces it, the printed tables (as text cells), the summary lines README quotes and
    the raw data. Written atomically, so a killed benchmark never leaves half a file."""
    ref, dirty = _START_REF, _START_DIRTY
    path = (results_dir or RESULTS_DIR) / f"{name}.json"
    record = {
        "benchmark": name,
        "commit": ref or "unknown",
        "tree": "dirty" if dirty else "clean",
        "machine": machine_line(),
        "machine_class": machine_class(),
        # the machine's 1-minute load at the start and the end: above the core count, other
        # work shared the CPU and the timings are slower than on an idle machine
        "load_average": {
            "start": round(_START_LOAD, 2),
            "end": round(os.getloadavg()[0], 2),
            "cores": os.cpu_count(),
        },
        "command": "python " + shlex.join([_relative_script(sys.argv[0]), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "setting": setting or {},
        "tables": {
            title: {"header": list(header), "rows": [[str(c) for c in r] for r in rows]}
            for title, (header, rows) in tables.items()
        },
        "summary": list(summary),
        "data": data,
    }
    atomic_write_json(path, record)
    print(f"\nresults: {path}")
    return path


def seconds_for_budget(metrics: dict) -> float:
    """What a reduction run for this budget alone would take: the shared search's seconds up to
    this budget's snapshot, then its hardening and fine-tuning (a run without a search, e.g.
    sharing, counts only what it has)."""
    search = metrics.get("search") or {}
    snap = search.get("snapshots", {}).get(str(metrics["budget"]))
    seconds = metrics["seconds"]
    if snap and search.get("history"):
        searched = search["history"][snap["epoch"] - 1]["seconds"]
    else:
        searched = seconds.get("search", 0.0)
    return searched + seconds.get("harden", 0.0) + seconds.get("finetune", 0.0)


def _relative_script(script: str) -> str:
    p = Path(script).resolve()
    try:
        return str(p.relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:
        return script


def settings_parser(
    doc: str | None, settings: dict, default: str, *, seeds: str = "0,1,2", jobs: bool = False
) -> argparse.ArgumentParser:
    """The arguments every seeded benchmark takes: ``--setting`` (one of ``settings``),
    ``--seeds`` (comma list) and, with ``jobs``, ``--jobs`` (seeds at a time); the benchmark
    adds its own."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=sorted(settings), default=default)
    parser.add_argument("--seeds", default=seeds, help="comma list of seeds")
    if jobs:
        parser.add_argument("--jobs", type=int, default=2, help="seeds run at a time")
    return parser
