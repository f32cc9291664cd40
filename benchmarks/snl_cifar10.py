"""SNL against its published numbers and against the naive baseline, from a dense model trained
in the same run.

On CUDA (the issue's setting): ResNet18 (SNL variant, 491,520 ReLUs) on CIFAR-10 (JPEG q75),
dense 40 epochs, then one shared SNL search and KD fine-tuning at 15K, 25K, 50K and 100K
ReLUs, the naive baseline (top-k mean |x|) at the same budgets, and SNL's reference settings
(lambda x1.1 on stall, threshold binarization, no corrections) at 50K. Targets: a drop no larger
than SNL's published drop at each budget, above the naive baseline, < 5 minutes per budget.

Without a GPU the same pipeline runs at reduced scale on CPU: the LeNet CNN on Fashion-MNIST
(18,944 ReLUs) at 500, 1K, 3K and 6K ReLUs, reference settings at 3K.

    python benchmarks/snl_cifar10.py [--data-dir DIR] [--out runs/bench-snl] [--dense RUN]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    CIFAR10_RESNET18,
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
from pifair.workflows.linearize import LinearizeJob, run_linearize  # noqa: E402
from pifair.workflows.sweep import SNL_PUBLISHED_CIFAR10, run_sweep  # noqa: E402
from pifair.workflows.train import train  # noqa: E402

GPU = dict(
    dense=dict(CIFAR10_RESNET18),
    budgets=["15k", "25k", "50k", "100k"],
    reference_budget="50k",
    reference_epochs=150,
    search=SearchSettings(max_epochs=30, batch_size=256),
    finetune=FinetuneSettings(epochs=30, batch_size=256, lr=0.01),
)
CPU = dict(
    dense=dict(
        data="fashion-mnist", model="lenet", epochs=4, batch_size=128, lr=0.05, schedule="cosine"
    ),
    budgets=["500", "1000", "3000", "6000"],
    reference_budget="3000",
    reference_epochs=30,
    search=SearchSettings(
        max_epochs=8, batch_size=256, mask_lr=1e-2, lambda_init=1e-4, lambda_growth=1.5
    ),
    finetune=FinetuneSettings(epochs=4, batch_size=128, lr=0.01),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-snl"))
    parser.add_argument("--dense", type=Path, help="reuse this dense run instead of training one")
    parser.add_argument("--no-reference", action="store_true", help="skip SNL's reference settings")
    args = parser.parse_args()
    setting = GPU if torch.cuda.is_available() else CPU
    print(
        f"machine: {machine_line()}\ncommit:  {commit()}\nscale:   "
        + ("GPU (issue setting)" if setting is GPU else "CPU (reduced scale: Fashion-MNIST LeNet)")
        + "\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)

    dense_dir = args.dense or args.out / "dense"
    t0 = time.perf_counter()
    if not (dense_dir / MODEL).exists():
        train(
            TrainConfig(**setting["dense"], data_dir=args.data_dir),
            out=dense_dir,
            resume=(dense_dir / "checkpoint.pt").exists(),
            progress=False,
        )
    dense_s = time.perf_counter() - t0
    dense = Run.open(dense_dir).metrics

    sweep_dir = args.out / "sweep"
    job = LinearizeJob(
        from_run=str(dense_dir),
        budgets=setting["budgets"],
        methods=["snl", "naive"],
        search=setting["search"],
        finetune=setting["finetune"],
    )
    run_sweep(job, out=sweep_dir, resume=(sweep_dir / "config.yaml").exists(), progress=False)

    ref = None
    if not args.no_reference:
        ref_dir = args.out / f"reference-{setting['reference_budget']}"
        # SNL's code searches until the count is under the budget: give it more epochs
        ref_search = replace(setting["search"], max_epochs=setting["reference_epochs"])
        ref_job = LinearizeJob(
            from_run=str(dense_dir),
            budgets=[setting["reference_budget"]],
            reference=True,
            search=ref_search,
            finetune=setting["finetune"],
        )
        if not (ref_dir / MODEL).exists():
            run_linearize(
                ref_job, out=ref_dir, resume=(ref_dir / "config.yaml").exists(), progress=False
            )
        ref = Run.open(ref_dir).metrics

    published = {p[0]: p for p in SNL_PUBLISHED_CIFAR10}
    rows, result = (
        [],
        {
            "machine": machine_line(),
            "commit": commit(),
            "dense_test_accuracy": dense["test_accuracy"],
            "dense_relus": dense["relus"],
            "dense_train_s": dense_s,
            "budgets": [],
        },
    )
    for b in setting["budgets"]:
        snl = Run.open(sweep_dir / f"snl-{b}").metrics
        naive = Run.open(sweep_dir / f"naive-{b}").metrics
        pub = (
            min(published.values(), key=lambda p: abs(p[0] - snl["relus"]))
            if setting is GPU
            else None
        )
        rows.append(
            [
                f"{snl['relus']:,}",
                f"{100 * snl['test_accuracy']:.2f}",
                f"{100 * snl['drop']:.2f}",
                f"{100 * naive['test_accuracy']:.2f}",
                f"{pub[2]:.1f} @ {pub[0] / 1000:.1f}K" if pub else "-",
                f"{seconds_for_budget(snl):.0f}",
            ]
        )
        result["budgets"].append(
            {
                "budget": b,
                "snl": snl["test_accuracy"],
                "snl_drop": snl["drop"],
                "naive": naive["test_accuracy"],
                "seconds": seconds_for_budget(snl),
                "published_drop": pub[2] if pub else None,
            }
        )
    print(
        f"dense: {100 * dense['test_accuracy']:.2f}% with {dense['relus']:,} ReLUs ({dense_s:.0f} "
        "s)\n"
    )
    header = [
        "ReLUs",
        "SNL (pifair) %",
        "drop (pts)",
        "naive %",
        "SNL published drop",
        "s per budget",
    ]
    print_table(header, rows)
    summary = [f"dense {100 * dense['test_accuracy']:.2f} % with {dense['relus']:,} ReLUs"]
    if ref is not None:
        mine = Run.open(sweep_dir / f"snl-{setting['reference_budget']}").metrics
        summary.append(
            f"at {setting['reference_budget']}: pifair defaults {100 * mine['test_accuracy']:.2f} "
            f"% vs SNL reference settings {100 * ref['test_accuracy']:.2f} %"
        )
        print(
            f"\nat {setting['reference_budget']}: pifair defaults "
            f"{100 * mine['test_accuracy']:.2f}% ({mine['relus']:,} ReLUs) vs SNL reference "
            "settings "
            f"{100 * ref['test_accuracy']:.2f}% ({ref['relus']:,} ReLUs, "
            f"{seconds_for_budget(ref):.0f} s)"
        )
        result["reference"] = {
            "budget": setting["reference_budget"],
            "relus": ref["relus"],
            "test_accuracy": ref["test_accuracy"],
            "pifair": mine["test_accuracy"],
        }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    save_results(
        "snl_" + ("gpu" if setting is GPU else "cpu"),
        tables={"SNL vs naive": (header, rows)},
        summary=summary,
        data=result,
        setting={k: str(v) for k, v in setting.items()},
    )


if __name__ == "__main__":
    main()
