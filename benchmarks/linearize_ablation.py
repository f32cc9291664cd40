"""Linearization ablation: one change at a time against the old default, several seeds, paired.

Every row reduces the same dense model to the same budget; rows differ from the old default
(binarize the soft SNL snapshot by top-k, then fine-tune, keeping the best fine-tuning epoch on
validation) by one setting. Rows that change only
what happens after the search reuse the seed's search (the same soft masks), so their
differences are the change's alone. For each row and seed the table gives the validation
accuracy of the soft searched model, right after binarization (and batch-norm recalibration)
and the test accuracy after fine-tuning; the last column is the paired difference of the drop
against the old default over the seeds, with its 95 % t-interval.

Settings (``--setting``):
  cifar10-cpu    ResNet18 at width 16 (SNL variant, 122,880 ReLUs) on 5,000 CIFAR-10 (JPEG)
                 training images, budget 12.5K (the share of ReLUs 50K is of ResNet18): the
                 CPU-scale setting, about 30 minutes on 2 cores for 3 seeds
  fashion-mnist  the demo's LeNet (18,944 ReLUs) on 12,000 Fashion-MNIST images at 1,000 ReLUs
  tiny           a few hundred CIFAR-10 images from tests/data/slices: checks the script

    python benchmarks/linearize_ablation.py --setting cifar10-cpu [--seeds 0,1,2] [--out DIR]

The script resumes from its own run folders: a row whose model exists is read, not rerun.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    CIFAR10_RESNET18_CPU,
    commit,
    machine_line,
    print_table,
    save_results,
    settings_parser,
)
from pifair.reduce import FinetuneSettings  # noqa: E402
from pifair.reduce.snl import SearchSettings  # noqa: E402
from pifair.runs import MODEL, Run  # noqa: E402
from pifair.training import TrainConfig  # noqa: E402
from pifair.workflows.linearize import LinearizeJob, run_linearize  # noqa: E402
from pifair.workflows.train import train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Row:
    """One ablation row: its changes to the base search and fine-tuning settings."""

    key: str
    label: str
    search: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)
    own_search: bool = False  # changes the search itself: cannot reuse the seed's search


def rows_for(harden: float) -> list[Row]:
    """The ablation's rows; ``harden`` is the hardening length (epochs) of the setting."""
    h = {"harden_epochs": harden}
    return [
        Row("old", "old default: top-k of the soft snapshot"),
        Row(
            "old-longer",
            f"old default, fine-tuning {math.ceil(harden):g} ep longer (hardening's compute)",
            {},
            {"extra_epochs": math.ceil(harden)},
        ),
        Row("harden", f"new default: + hardening {harden:g} ep (top-k, STE, hysteresis)", h),
        Row(
            "start",
            "+ hardening + the model before fine-tuning a candidate",
            h,
            {"start_candidate": True},
        ),
        Row("progressive", "+ hardening, progressive blend", h | {"harden_mode": "progressive"}),
        Row(
            "sensitivity",
            "+ hardening + layer budgets by sensitivity",
            h | {"allocation": "sensitivity"},
        ),
        Row(
            "lambda",
            "+ hardening + lambda by distance to budget",
            h | {"lambda_rule": "budget"},
            own_search=True,
        ),
        Row("ft-lr", "+ hardening + fine-tune lr / 3", h, {"lr_scale": 1 / 3}),
        Row("ft-kd", "+ hardening + KD weight 3", h, {"kd_weight": 3.0}),
    ]


SETTINGS = {
    "cifar10-cpu": dict(
        dense=dict(CIFAR10_RESNET18_CPU),
        budget="12.5k",
        harden=1.0,
        search=SearchSettings(
            max_epochs=8,
            batch_size=128,
            mask_lr=0.02,
            lambda_init=3e-4,
            lambda_growth=1.5,
            harden_epochs=0.0,
        ),
        finetune=FinetuneSettings(epochs=3, batch_size=128, lr=0.01, start_candidate=False),
    ),
    "fashion-mnist": dict(
        dense=dict(
            data="fashion-mnist",
            model="lenet",
            limit=12000,
            epochs=6,
            batch_size=128,
            lr=0.05,
            schedule="cosine",
        ),
        budget="1000",
        harden=1.0,
        search=SearchSettings(
            max_epochs=10,
            batch_size=128,
            mask_lr=0.02,
            lambda_init=3e-4,
            lambda_growth=1.5,
            harden_epochs=0.0,
        ),
        finetune=FinetuneSettings(epochs=3, batch_size=128, lr=0.01, start_candidate=False),
    ),
    "tiny": dict(
        dense=dict(
            data="cifar10",
            data_dir=str(REPO / "tests/data/slices/cifar10"),
            model="resnet18",
            snl_variant=True,
            width=4,
            epochs=2,
            batch_size=64,
            lr=0.05,
        ),
        budget="3k",
        harden=0.5,
        search=SearchSettings(
            max_epochs=2, batch_size=64, mask_lr=0.05, lambda_init=1e-3, harden_epochs=0.0
        ),
        finetune=FinetuneSettings(epochs=1, batch_size=64, lr=0.01, start_candidate=False),
    ),
}


def _finetune_changes(base: FinetuneSettings, changes: dict) -> dict:
    changes = dict(changes)
    if "extra_epochs" in changes:
        changes["epochs"] = base.epochs + changes.pop("extra_epochs")
    if "lr_scale" in changes:
        changes["lr"] = base.lr * changes.pop("lr_scale")
    return changes


def run_row(row: Row, setting: dict, seed: int, dense_dir: Path, out: Path) -> dict:
    """The row's run folder for this seed (created, resumed, or read when finished)."""
    path = out / f"seed{seed}" / row.key
    if not (path / MODEL).exists():
        search, finetune = replace(setting["search"], seed=seed, **row.search), setting["finetune"]
        finetune = replace(finetune, seed=seed, **_finetune_changes(finetune, row.finetune))
        job = LinearizeJob(
            from_run=str(dense_dir),
            budgets=[setting["budget"]],
            seed=seed,
            search=search,
            finetune=finetune,
        )
        shared = out / f"seed{seed}" / "old" / "search.pt"
        run_linearize(
            job,
            out=path,
            resume=(path / "config.yaml").exists(),
            progress=False,
            search_from=shared if shared.exists() and not row.own_search else None,
        )
    return Run.open(path).metrics


def paired(differences: list[float]) -> str:
    """Mean and 95 % t-interval of paired differences (points)."""
    if len(differences) < 2:
        return f"{differences[0]:+.2f}" if differences else "-"
    mean = statistics.fmean(differences)
    half = (
        stats.t.ppf(0.975, len(differences) - 1)
        * statistics.stdev(differences)
        / math.sqrt(len(differences))
    )
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def spread(values: list[float]) -> str:
    """Mean ± standard deviation over seeds (points)."""
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = settings_parser(__doc__, SETTINGS, "cifar10-cpu")
    parser.add_argument("--rows", help="comma list of row keys (default: all)")
    parser.add_argument("--out", type=Path, help="run folders (default runs/ablation-SETTING)")
    parser.add_argument(
        "--results-dir", type=Path, help="where the JSON goes (default benchmarks/results)"
    )
    args = parser.parse_args()
    setting = SETTINGS[args.setting]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = rows_for(setting["harden"])
    if args.rows:
        rows = [r for r in rows if r.key in args.rows.split(",") or r.key == "old"]
    out = args.out or Path(f"runs/ablation-{args.setting}")
    print(
        f"machine: {machine_line()}\ncommit:  {commit()}\nsetting: {args.setting}, seeds {seeds}\n"
    )
    t0 = time.perf_counter()
    dense_dir = out / "dense"
    if not (dense_dir / MODEL).exists():
        resume = (dense_dir / "checkpoint.pt").exists()
        train(TrainConfig(**setting["dense"]), out=dense_dir, resume=resume, progress=False)
    dense = Run.open(dense_dir).metrics
    dense_s = time.perf_counter() - t0
    print(
        f"dense: test {100 * dense['test_accuracy']:.2f} %, {dense['relus']:,} ReLUs "
        f"({dense_s:.0f} s)"
    )

    results: dict[str, dict[int, dict]] = {r.key: {} for r in rows}
    for seed in seeds:
        for row in rows:
            t1 = time.perf_counter()
            m = run_row(row, setting, seed, dense_dir, out)
            results[row.key][seed] = {
                "relus": m["relus"],
                "val_soft": m.get("val_accuracy_soft"),
                "val_binarized": m["val_accuracy_before_finetune"],
                "val_final": m["val_accuracy"],
                "test": m["test_accuracy"],
                "drop": m["drop"],
                "seconds": m["seconds"],
                "wall_s": time.perf_counter() - t1,
                "binarize": m["binarize"],
            }
            r = results[row.key][seed]
            print(
                f"seed {seed} {row.key:12s} soft {100 * r['val_soft']:.2f}  binarized "
                f"{100 * r['val_binarized']:.2f}  "
                f"test {100 * r['test']:.2f}  drop {100 * r['drop']:.2f}  ({r['wall_s']:.0f} s)",
                flush=True,
            )

    header = [
        "row",
        "val soft %",
        "val binarized %",
        "binarization loss (pts)",
        "test after FT %",
        "drop (pts)",
        "drop vs old default (pts, 95% CI)",
        "s per seed",
    ]
    table, old = [], results["old"]
    for row in rows:
        per = results[row.key]

        def pts(key: str, per: dict = per) -> list[float]:
            return [100 * per[s][key] for s in seeds]

        loss = [100 * (per[s]["val_soft"] - per[s]["val_binarized"]) for s in seeds]
        diff = [100 * (per[s]["drop"] - old[s]["drop"]) for s in seeds]
        secs = statistics.fmean(per[s]["seconds"]["total"] for s in seeds)
        table.append(
            [
                row.label,
                spread(pts("val_soft")),
                spread(pts("val_binarized")),
                spread(loss),
                spread(pts("test")),
                spread(pts("drop")),
                "-" if row.key == "old" else paired(diff),
                f"{secs:.0f}",
            ]
        )
    print()
    print_table(header, table)
    relus = results["old"][seeds[0]]["relus"]
    summary = [
        f"dense {100 * dense['test_accuracy']:.2f} % test with {dense['relus']:,} ReLUs; budget "
        f"{relus:,} ReLUs; "
        f"{len(seeds)} seeds; each row from the same dense model, paired by seed",
    ]
    title = f"{args.setting}: one change at a time at {relus:,} ReLUs"
    save_results(
        f"linearize_ablation_{args.setting}",
        tables={title: (header, table)},
        summary=summary,
        data={
            "dense": {"test_accuracy": dense["test_accuracy"], "relus": dense["relus"]},
            "budget": relus,
            "seeds": seeds,
            "rows": {
                r.key: {
                    "label": r.label,
                    "search": r.search,
                    "finetune": r.finetune,
                    "by_seed": results[r.key],
                }
                for r in rows
            },
        },
        setting={k: str(v) for k, v in setting.items()},
        results_dir=args.results_dir,
    )


if __name__ == "__main__":
    main()
