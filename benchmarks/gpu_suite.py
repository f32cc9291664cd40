"""The linearization GPU suite: ResNet18 on CIFAR-10, dense model to the ReLU-budget table.

One prepared command for a lent GPU (docs/gpu.md). Stages, each a run folder under ``--out``:

1. dense ResNet18 (SNL variant, 491,520 ReLUs) on CIFAR-10 (JPEG q75);
2. SNL with pifair's default (one shared search, per budget hardening at the exact budget,
   fine-tuning with KD) at 15K, 25K, 50K and 100K ReLUs (pixel-wise);
3. the naive baseline (top-k mean |x|) at 50K;
4. channel-wise SNL at 50K;
5. ReLU sharing (clustered groups) at 15K, 5K and 1K.

Every stage checkpoints each epoch, and the results file is rewritten after each stage, so a
call cut by the device's time limit loses at most one epoch: call the same command again and it
continues. ``--deadline S`` makes a call stop cleanly before starting a stage it has no time
for (estimated from the stages done). ``--tiny`` runs the whole suite on CPU in a minute on the
CIFAR-10 slice of the tests (it checks the script, not the method).

    python benchmarks/gpu_suite.py --data-dir gpu_data --out $OUT/suite --deadline 500
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    CIFAR10_RESNET18,
    CIFAR10_RESNET18_CPU,
    commit,
    machine_line,
    print_table,
    save_results,
    seconds_for_budget,
)
from pifair.reduce import FinetuneSettings  # noqa: E402
from pifair.reduce.snl import SearchSettings  # noqa: E402
from pifair.runs import MODEL, Run  # noqa: E402
from pifair.training import TrainConfig  # noqa: E402
from pifair.workflows.linearize import LinearizeJob  # noqa: E402
from pifair.workflows.sweep import SNL_PUBLISHED_CIFAR10, run_sweep  # noqa: E402
from pifair.workflows.train import train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

FULL = dict(
    dense=CIFAR10_RESNET18 | {"epochs": 30},
    budgets=["15k", "25k", "50k", "100k"],
    naive=["50k"],
    channel=["50k"],
    share=["15k", "5k", "1k"],
    search=SearchSettings(max_epochs=20, batch_size=256, harden_epochs=1.0),
    finetune=FinetuneSettings(epochs=10, batch_size=256, lr=0.01),
)
# The CPU-scale stand-in: ResNet18 at width 16 (a quarter of the ReLUs: 122,880) on 5,000
# CIFAR-10 images, every budget a quarter of the GPU one; the dense model of
# benchmarks/linearize_ablation.py --setting cifar10-cpu (the same settings, so --dense may
# reuse it).
CPU = dict(
    dense=dict(CIFAR10_RESNET18_CPU),
    budgets=["3.75k", "6.25k", "12.5k", "25k"],
    naive=["12.5k"],
    channel=["12.5k"],
    share=["3.75k", "1.25k", "250"],
    search=SearchSettings(
        max_epochs=8,
        batch_size=128,
        mask_lr=0.02,
        lambda_init=3e-4,
        lambda_growth=1.5,
        harden_epochs=1.0,
    ),
    finetune=FinetuneSettings(epochs=3, batch_size=128, lr=0.01),
)
TINY = dict(
    dense=dict(
        data="cifar10",
        data_dir=str(REPO / "tests/data/slices/cifar10"),
        model="resnet18",
        snl_variant=True,
        width=4,
        epochs=1,
        batch_size=64,
        lr=0.05,
    ),
    budgets=["1k", "3k"],
    naive=["3k"],
    channel=["3k"],
    share=["1k"],
    search=SearchSettings(
        max_epochs=2, batch_size=64, mask_lr=0.05, lambda_init=1e-3, harden_epochs=0.5
    ),
    finetune=FinetuneSettings(epochs=1, batch_size=64, lr=0.01),
)


def stages(setting: dict) -> list[tuple[str, dict]]:
    """(folder, LinearizeJob fields) of every reduction stage, in order."""
    common = {"search": setting["search"], "finetune": setting["finetune"]}
    return [
        ("snl", {"budgets": setting["budgets"], "methods": ["snl"]} | common),
        ("naive", {"budgets": setting["naive"], "methods": ["naive"]} | common),
        (
            "snl-channel",
            {"budgets": setting["channel"], "methods": ["snl"], "granularity": "channel"} | common,
        ),
        ("share", {"budgets": setting["share"], "methods": ["share-cluster"]} | common),
    ]


def collect(
    out: Path, dense: dict, *, published: bool = True
) -> tuple[list[str], list[list[str]], list[dict]]:
    """The table of every finished reduction under ``out`` (a partial suite gives a partial one)."""
    header = [
        "method",
        "ReLUs",
        "test %",
        "drop (pts)",
        "SNL published drop",
        "val soft %",
        "val binarized %",
        "binarization loss (pts)",
        "s for this budget",
    ]
    rows, records = [], []
    paper = {p[0]: p for p in SNL_PUBLISHED_CIFAR10} if published else {}
    for metrics_file in sorted(out.glob("*/*/metrics.json")):
        run = Run.open(metrics_file.parent)
        m = run.metrics
        if m.get("kind") not in ("linearize", "share") or "test_accuracy" not in m:
            continue
        pub = min(paper.values(), key=lambda p: abs(p[0] - m["relus"]), default=None)
        soft, binar = m.get("val_accuracy_soft"), m.get("val_accuracy_before_finetune")
        seconds = seconds_for_budget(m)
        method = m["method"] + ("-channel" if m.get("granularity") == "channel" else "")
        rows.append(
            [
                method,
                f"{m['relus']:,}",
                f"{100 * m['test_accuracy']:.2f}",
                f"{100 * m['drop']:.2f}",
                f"{pub[2]:.1f} @ {pub[0] / 1000:.1f}K"
                if pub and abs(pub[0] - m["relus"]) < 0.1 * pub[0]
                else "-",
                f"{100 * soft:.2f}" if soft is not None else "-",
                f"{100 * binar:.2f}" if binar is not None else "-",
                f"{100 * (soft - binar):.2f}" if soft is not None and binar is not None else "-",
                f"{seconds:.0f}",
            ]
        )
        records.append(
            {
                "method": method,
                "relus": m["relus"],
                "test_accuracy": m["test_accuracy"],
                "drop": m["drop"],
                "val_soft": soft,
                "val_binarized": binar,
                "seconds": seconds,
                "run": str(metrics_file.parent),
            }
        )
    return header, rows, records


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", help="folder holding cifar10_jpeg.npz (default: pifair's search)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-suite"))
    parser.add_argument(
        "--deadline", type=float, help="seconds this call may use; stops cleanly before"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="the whole suite in minutes on CPU (script check)"
    )
    parser.add_argument(
        "--cpu-scale", action="store_true", help="the CPU-scale stand-in (width 16, 5,000 images)"
    )
    parser.add_argument(
        "--dense", type=Path, help="reuse this dense run (same settings) instead of training one"
    )
    parser.add_argument(
        "--results-dir", type=Path, help="where the JSON goes (default benchmarks/results)"
    )
    args = parser.parse_args()
    t_start = time.perf_counter()
    setting = TINY if args.tiny else CPU if args.cpu_scale else FULL
    name = (
        "linearize_gpu_tiny"
        if args.tiny
        else "linearize_cpu_scale"
        if args.cpu_scale
        else "linearize_gpu"
    )
    if setting is FULL and not torch.cuda.is_available():
        print("no CUDA device: the full suite is for a GPU; --tiny checks the script on CPU")
    dense_cfg = dict(setting["dense"])
    if args.data_dir and not args.tiny:
        dense_cfg["data_dir"] = args.data_dir
    print(f"machine: {machine_line()}\ncommit:  {commit()}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    durations: dict[str, float] = {}

    def time_left() -> float:
        return (
            float("inf")
            if args.deadline is None
            else args.deadline - (time.perf_counter() - t_start)
        )

    def save(note: str) -> None:
        dense = Run.open(dense_dir).metrics
        header, rows, records = collect(args.out, dense, published=setting is FULL)
        print_table(header, rows)
        title = (
            "ResNet18 on CIFAR-10 (JPEG q75)"
            if setting is FULL
            else "CPU scale: ResNet18 width 16, 5,000 CIFAR-10 (JPEG q75) images"
        )
        save_results(
            name,
            tables={title: (header, rows)},
            summary=[
                f"dense {100 * dense['test_accuracy']:.2f} % with {dense['relus']:,} ReLUs",
                note,
            ],
            data={
                "dense": {"test_accuracy": dense["test_accuracy"], "relus": dense["relus"]},
                "rows": records,
                "stage_seconds_this_call": durations,
            },
            setting={k: str(v) for k, v in setting.items()},
            results_dir=args.results_dir,
        )

    dense_dir = args.dense or args.out / "dense"
    if not (dense_dir / MODEL).exists():
        t0 = time.perf_counter()
        resume = (dense_dir / "checkpoint.pt").exists()
        train(TrainConfig(**dense_cfg), out=dense_dir, resume=resume, progress=False)
        durations["dense"] = time.perf_counter() - t0
    for stage, fields in stages(setting):
        path = args.out / stage
        finished = all(
            (path / f"{m}-{b}" / MODEL).exists()
            for m in fields["methods"]
            for b in fields["budgets"]
        )
        if finished:
            continue
        estimate = max(durations.values(), default=0.0)
        if time_left() < estimate:
            save(f"stopped before stage {stage} (deadline): call the same command again to go on")
            return
        t0 = time.perf_counter()
        job = LinearizeJob(from_run=str(dense_dir.resolve()), **fields)
        run_sweep(job, out=path, resume=(path / "config.yaml").exists(), progress=False)
        durations[stage] = time.perf_counter() - t0
        save(f"stages done up to {stage}")
    for plot in args.out.glob("*/pareto.png"):
        shutil.copy(plot, args.out / f"pareto-{plot.parent.name}.png")
    save("complete")


if __name__ == "__main__":
    main()
