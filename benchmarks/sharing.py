"""ReLU sharing against SNL at equal numbers of sign decisions, down to 1000x fewer.

CPU (always): the LeNet CNN on Fashion-MNIST (18,944 ReLUs) at 18,944 / 5,000 / 1,000 / 200 / 50
/ 19 decisions. CUDA (when a GPU is lent): ResNet18 on CIFAR-10 (JPEG) at 491,520 / 100K / 25K
/ 5K / 1K / 492. Methods: sharing by patches (group mean), sharing by sign clusters (members copy
their prototype), SNL (one shared search). The claim under test: sharing keeps accuracy at
ReLU counts up to three orders of magnitude below the dense model, where linearization fails.

    python benchmarks/sharing.py [--dense RUN] [--out runs/bench-sharing] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CIFAR10_RESNET18, commit, machine_line, print_table, save_results  # noqa: E402
from pifair.reduce import FinetuneSettings  # noqa: E402
from pifair.reduce.snl import SearchSettings  # noqa: E402
from pifair.runs import MODEL, Run  # noqa: E402
from pifair.training import TrainConfig  # noqa: E402
from pifair.workflows.linearize import LinearizeJob  # noqa: E402
from pifair.workflows.sweep import run_sweep  # noqa: E402
from pifair.workflows.train import train  # noqa: E402

GPU = dict(
    dense=dict(CIFAR10_RESNET18),
    budgets=["491520", "100k", "25k", "5k", "1k", "492"],
    search=SearchSettings(max_epochs=30, batch_size=256),
    finetune=FinetuneSettings(epochs=20, batch_size=256),
)
CPU = dict(
    dense=dict(data="fashion-mnist", model="lenet", epochs=4, batch_size=128, lr=0.05),
    budgets=["18944", "5000", "1000", "200", "50", "19"],
    search=SearchSettings(
        max_epochs=10, batch_size=256, mask_lr=1e-2, lambda_init=1e-4, lambda_growth=1.5
    ),
    finetune=FinetuneSettings(epochs=3, batch_size=128),
)
METHODS = ["share-patch", "share-cluster", "snl"]


def _budget_count(budget: str) -> int:
    """``"5k"`` -> 5000, ``"200"`` -> 200."""
    return int(float(budget.rstrip("k")) * (1000 if budget.endswith("k") else 1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dense", type=Path, help="reuse this dense run")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-sharing"))
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    setting = GPU if torch.cuda.is_available() else CPU
    print(
        f"machine: {machine_line()}\ncommit:  {commit()}\nsetting: {setting['dense']['model']} on "
        f"{setting['dense']['data']}\n"
    )
    dense_dir = args.dense or args.out / "dense"
    if not (dense_dir / MODEL).exists():
        train(
            TrainConfig(**setting["dense"], data_dir=args.data_dir), out=dense_dir, progress=False
        )
    dense = Run.open(dense_dir).metrics
    sweep = args.out / "sweep"
    job = LinearizeJob(
        from_run=str(dense_dir),
        budgets=setting["budgets"],
        methods=METHODS,
        search=setting["search"],
        finetune=setting["finetune"],
    )
    run_sweep(job, out=sweep, resume=(sweep / "config.yaml").exists(), progress=False)
    rows = Run.open(sweep).metrics["rows"]
    table = []
    for b in setting["budgets"]:
        cells = [
            b,
            f"{dense['relus'] / max(1, _budget_count(b)):.0f}x",
        ]
        for method in METHODS:
            r = next((r for r in rows if r["method"] == method and r["budget"] == b), None)
            cells.append(
                "unreachable" if r is None else f"{100 * r['test_accuracy']:.2f} ({r['relus']:,})"
            )
        table.append(cells)
    print(f"dense: {100 * dense['test_accuracy']:.2f}% with {dense['relus']:,} ReLUs\n")
    header = ["budget", "fewer", *[f"{m} % (decisions)" for m in METHODS]]
    print_table(header, table)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "machine": machine_line(),
                "commit": commit(),
                "dense": dense["test_accuracy"],
                "rows": rows,
            },
            indent=2,
        )
    )
    save_results(
        "sharing_" + ("gpu" if setting is GPU else "cpu"),
        tables={"sharing vs SNL": (header, table)},
        summary=[f"dense {100 * dense['test_accuracy']:.2f} % with {dense['relus']:,} ReLUs"],
        data={"dense": dense["test_accuracy"], "rows": rows},
        setting={k: str(v) for k, v in setting.items()},
    )


if __name__ == "__main__":
    main()
