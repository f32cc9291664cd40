"""Does linearization hurt the minority more, and does fairness-aware fine-tuning fix it?

Das et al. (ICML 2024) protocol: classes 0-4 kept at 90 % and 5-9 at 10 % in train and test.
For each seed: a dense model, SNL at three budgets (one shared search), the same reductions
fine-tuned with the fairness-constrained objective and with group reweighting (``pifair
mitigate``), then one audit of all
of them. Reported with the spread across seeds, whatever it shows:
- the minority-majority gap in accuracy drops (positive: the minority loses more);
- whether mitigation cuts that gap by at least half at a cost of at most 1 point overall.

On CUDA: ResNet18 on CIFAR-10 (JPEG); on CPU: the LeNet CNN on Fashion-MNIST.

    python benchmarks/fairness.py [--seeds 0,1,2] [--out runs/bench-fairness] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine_line, print_table, save_results  # noqa: E402
from pifair.relu.linearize import FinetuneSettings  # noqa: E402
from pifair.relu.snl import SearchSettings  # noqa: E402
from pifair.runs import MODEL  # noqa: E402
from pifair.training import TrainConfig, train  # noqa: E402
from pifair.workflows.fairness import run_audit, run_mitigate  # noqa: E402
from pifair.workflows.linearize import LinearizeJob, run_linearize  # noqa: E402

PROTOCOL = dict(keep="0-4:0.9,5-9:0.1", keep_test=True)
GPU = dict(
    dense=dict(data="cifar10", model="resnet18", snl_variant=True, epochs=40, batch_size=512, lr=0.2, label_smoothing=0.1, schedule="onecycle"),
    budgets=["15k", "50k", "100k"], search=SearchSettings(max_epochs=30, batch_size=256), finetune=FinetuneSettings(epochs=20, batch_size=256),
)  # fmt: skip
CPU = dict(
    dense=dict(data="fashion-mnist", model="lenet", epochs=6, batch_size=128, lr=0.05),
    budgets=["500", "1500", "4000"],
    search=SearchSettings(max_epochs=8, batch_size=256, mask_lr=1e-2, lambda_init=1e-4, lambda_growth=1.5),
    finetune=FinetuneSettings(epochs=3, batch_size=128),
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-fairness"))
    parser.add_argument("--data-dir")
    parser.add_argument(
        "--objectives", default="constrained,reweight", help="mitigation objectives to compare"
    )
    args = parser.parse_args()
    objectives = args.objectives.split(",")
    setting = GPU if torch.cuda.is_available() else CPU
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        f"machine: {machine_line()}\ncommit:  {commit()}\nsetting: {setting['dense']['data']} {setting['dense']['model']}, keep {PROTOCOL['keep']} (train and test), seeds {seeds}\n"
    )
    dense_dirs, reduced = [], []
    for seed in seeds:
        root = args.out / f"seed{seed}"
        dense_dir = root / "dense"
        if not (dense_dir / MODEL).exists():
            train(
                TrainConfig(**setting["dense"], **PROTOCOL, seed=seed, data_dir=args.data_dir),
                out=dense_dir,
                resume=dense_dir if (dense_dir / "checkpoint.pt").exists() else None,
                progress=False,
            )
        dense_dirs.append(dense_dir)
        sweep = root / "snl"
        job = LinearizeJob(
            from_run=str(dense_dir),
            budgets=setting["budgets"],
            methods=["snl"],
            seed=seed,
            search=setting["search"],
            finetune=setting["finetune"],
        )
        run_linearize(
            job, out=sweep, resume=(sweep / "config.yaml").exists(), progress=False, sweep=True
        )
        for b in setting["budgets"]:
            lin = sweep / f"snl-{b}"
            reduced.append(lin)
            for objective in objectives:
                mit = root / f"{'mitigated' if objective == 'constrained' else objective}-{b}"
                if not (mit / MODEL).exists():
                    shutil.rmtree(
                        mit, ignore_errors=True
                    )  # a killed one restarts; the search is reused
                    run_mitigate(lin, objective=objective, out=mit, progress=False)
                reduced.append(mit)
    audit_dir = args.out / "audit"
    shutil.rmtree(audit_dir, ignore_errors=True)  # cheap: always redone from the models
    audit = run_audit(dense_dirs[0], reduced, out=audit_dir, grad_samples=64)
    summary = audit.metrics["summary"]

    def pm(r: dict, key: str) -> str:
        return f"{100 * r[key]:.2f} ± {100 * r[key + '_ci']:.2f}"

    rows = [
        [
            r["label"],
            f"{r['relus']:,}",
            r["runs"],
            pm(r, "accuracy"),
            pm(r, "drop"),
            pm(r, "minority_gap"),
            pm(r, "worst_group_accuracy"),
        ]
        for r in summary
    ]
    header = [
        "fine-tuning",
        "ReLUs",
        "seeds",
        "accuracy %",
        "drop (pts)",
        "minority-majority gap (pts)",
        "worst group %",
    ]
    print_table(header, rows)
    lines = []
    verdicts = []
    for r, objective in ((r, o) for r in summary if r["label"] == "snl" for o in objectives):
        m = next(
            x for x in summary if x["label"] == f"snl+{objective}" and x["relus"] == r["relus"]
        )
        # halved in size: |gap| at most half; a gap that changes sign is reported as reversed
        halved = abs(m["minority_gap"]) <= 0.5 * abs(r["minority_gap"])
        reversed_ = m["minority_gap"] * r["minority_gap"] < 0
        cost = r["accuracy"] - m["accuracy"]
        verdicts.append(
            {
                "relus": r["relus"],
                "objective": objective,
                "minority_loses_more": r["minority_gap"] > 0,
                "gap": r["minority_gap"],
                "gap_mitigated": m["minority_gap"],
                "gap_halved": halved,
                "gap_reversed": reversed_,
                "accuracy_cost": cost,
            }
        )
        lines.append(
            f"{r['relus']:,} ReLUs: gap {100 * r['minority_gap']:.2f} pts; {objective}: gap {100 * m['minority_gap']:.2f} pts "
            f"({'halved' if halved else 'not halved'}{', reversed' if reversed_ else ''}), overall accuracy cost {100 * cost:.2f} pts"
        )
        print(f"{r['relus']:>7,} ReLUs: minority loses {'more' if r['minority_gap'] > 0 else 'less'} (gap {100 * r['minority_gap']:.2f} pts); "
              f"{objective}: gap {100 * m['minority_gap']:.2f} pts ({'halved' if halved else 'not halved'}{', reversed' if reversed_ else ''}), overall accuracy cost {100 * cost:.2f} pts")  # fmt: skip
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "machine": machine_line(),
                "commit": commit(),
                "summary": summary,
                "verdicts": verdicts,
            },
            indent=2,
        )
    )
    save_results("fairness_" + ("gpu" if setting is GPU else "cpu"), tables={"gap per fine-tuning": (header, rows)}, summary=lines,
                 data={"summary": summary, "verdicts": verdicts}, setting={"seeds": seeds, "objectives": objectives} | {k: str(v) for k, v in setting.items()})  # fmt: skip
    print(f"\naudit run: {audit.path}")


if __name__ == "__main__":
    main()
