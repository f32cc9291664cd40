"""``pifair demo``: the whole pipeline on Fashion-MNIST, on CPU, in minutes, ending with the report.

Stages are idempotent: a finished stage is kept, a killed one resumes, so re-running the demo
after Ctrl-C continues where it stopped. Every capability adds its stage here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .evaluation import evaluate_run
from .report import build_report
from .runs import CHECKPOINT, MODEL
from .training import TrainConfig, train

__all__ = ["run_demo", "DEMO_TRAIN"]

# The demo's dense model: LeNet-style CNN, about 7 s an epoch on 2 cores, >= 90 % in 4 epochs.
DEMO_TRAIN = dict(data="fashion-mnist", model="lenet", epochs=4, batch_size=128, lr=0.05, seed=0)


def _stage(name: str) -> None:
    print(f"\n=== {name} ===", flush=True)


def run_demo(
    out: str | os.PathLike = "runs/demo",
    *,
    epochs: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    progress: bool = True,
) -> Path:
    """Run every stage into ``out`` and return the path of the HTML report."""
    out = Path(out)
    t0 = time.perf_counter()
    cfg = TrainConfig(
        **(
            DEMO_TRAIN
            | {"seed": seed, "data_dir": data_dir}
            | ({"epochs": epochs} if epochs else {})
        )
    )
    base = out / "train"
    _stage("1. train the dense CNN")
    if (base / MODEL).exists():
        print(f"kept {base} (already trained)")
    else:
        train(
            cfg, out=base, resume=base if (base / CHECKPOINT).exists() else None, progress=progress
        )

    _stage("2. evaluate per group")
    print(evaluate_run(base).table())

    _stage("report")
    report = build_report([base], out / "report.html", title="pifair demo: Fashion-MNIST on CPU")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; report: {report}")
    return report
