"""BEAA's accuracy claim (#30): element-wise polynomial activations against channel-wise and
layer-wise ones, same ReLU parent, same KD fine-tuning, paired over seeds.

For each seed a ReLU parent is trained once; ``pifair polyfit`` then replaces its ReLUs by
degree-2 polynomials with one coefficient set per element, per channel or per layer, each
fine-tuned with the same KD schedule at every learning rate of ``--lrs``; each granularity's
rate is chosen on the validation split (the same tuning budget for all), then its test accuracy
counts. The table gives each granularity's accuracy (mean and 95 % interval over the seeds) and
element minus channel, element minus layer on the same seeds (paired 95 % intervals). Every run
folder is kept: a rerun resumes.

Settings:
  fashion-mnist  LeNet-5 (lenet5) on 12,000 Fashion-MNIST images, 6 ReLU epochs, 3 KD epochs
  cifar10-cpu    he_cifar on 10,000 CIFAR-10 images, 15 ReLU epochs, 3 KD epochs (CPU scale)
  tiny           he_cnn on digits: checks the script

    python benchmarks/poly_granularity.py --setting fashion-mnist [--seeds 0,1,2] [--jobs 2]
        [--lrs 0.1,0.03,0.01,0.003] [--out DIR]
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, print_table, save_results, settings_parser  # noqa: E402
from pifair.fairness.audit import mean_ci, paired_difference  # noqa: E402
from pifair.reduce import FinetuneSettings  # noqa: E402
from pifair.runs import MODEL, Run  # noqa: E402
from pifair.training import TrainConfig  # noqa: E402
from pifair.workflows.polyfit import PolyfitJob, run_polyfit  # noqa: E402
from pifair.workflows.train import train  # noqa: E402

GRANULARITIES = ("element", "channel", "layer")
SETTINGS = {
    "fashion-mnist": dict(
        parent=dict(
            data="fashion-mnist", model="lenet5", limit=12000, epochs=6, batch_size=128, lr=0.05
        ),
        finetune=dict(epochs=3, batch_size=128),
    ),
    "cifar10-cpu": dict(
        parent=dict(
            data="cifar10", model="he_cifar", limit=10000, epochs=15, batch_size=128, lr=0.05
        ),
        finetune=dict(epochs=3, batch_size=128),
    ),
    "tiny": dict(
        parent=dict(data="digits", model="he_cnn", epochs=2, batch_size=64, lr=0.05),
        finetune=dict(epochs=1, batch_size=64),
    ),
}


def run_seed(setting: str, seed: int, root: Path, lrs: list[float]) -> list[dict]:
    """One seed: its parent, then every granularity at every rate (each resumed or skipped
    when finished); one row per granularity with the rate its validation accuracy chose."""
    torch.set_num_threads(1)
    s = SETTINGS[setting]
    parent = root / f"seed{seed}" / "relu"
    if not (parent / MODEL).exists():
        resume = (parent / "checkpoint.pt").exists()
        train(TrainConfig(**s["parent"], seed=seed), out=parent, resume=resume, progress=False)
    rows = []
    for granularity in GRANULARITIES:
        runs = []
        for lr in lrs:
            out = root / f"seed{seed}" / f"{granularity}-lr{lr:g}"
            if not (out / MODEL).exists():
                job = PolyfitJob(
                    from_run=str(parent),
                    granularity=granularity,  # type: ignore[arg-type]
                    seed=seed,
                    finetune=FinetuneSettings(**s["finetune"], lr=lr, seed=seed),
                )
                run_polyfit(job, out=out, resume=(out / "config.yaml").exists(), progress=False)
            runs.append((Run.open(out).metrics, lr))
        best, lr = max(runs, key=lambda r: r[0]["val_accuracy"])
        rows.append(
            {
                "seed": seed,
                "granularity": granularity,
                "lr": lr,
                "val_accuracy": best["val_accuracy"],
                "test_accuracy": best["test_accuracy"],
                "parent_accuracy": Run.open(parent).metrics["test_accuracy"],
            }
        )
    return rows


def _cell(values: list[float]) -> str:
    mean, half = mean_ci(values)
    return f"{100 * mean:.2f} ± {100 * half:.2f}"


def tables(rows: list[dict], seeds: list[int]) -> tuple[dict, list[str]]:
    by = {(r["granularity"], r["seed"]): r for r in rows}
    accuracy = [
        [g, _cell([by[g, s]["test_accuracy"] for s in seeds])]
        + [", ".join(f"{by[g, s]['lr']:g}" for s in seeds)]
        for g in GRANULARITIES
    ]
    parent = [by["element", s]["parent_accuracy"] for s in seeds]
    summary = [f"ReLU parent: {_cell(parent)} % test accuracy ({len(seeds)} seeds)"]
    paired = []
    element = [by["element", s]["test_accuracy"] for s in seeds]
    for other in GRANULARITIES[1:]:
        mean, lo, hi = paired_difference([by[other, s]["test_accuracy"] for s in seeds], element)
        interval = f"{100 * mean:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
        paired.append([f"element - {other}", interval])
        verdict = "above" if lo > 0 else ("below" if hi < 0 else "not different from")
        summary.append(
            f"element-wise polynomials minus {other}-wise: {100 * mean:+.2f} points "
            f"[{100 * lo:+.2f}, {100 * hi:+.2f}] ({len(seeds)} seeds paired): {verdict}"
        )
    return (
        {
            "test accuracy % (rate chosen on validation, per seed)": (
                ["granularity", "test accuracy %", "chosen lr per seed"],
                accuracy,
            ),
            "element-wise minus coarser, same seeds (paired 95 %)": (
                ["comparison", "points"],
                paired,
            ),
        },
        summary,
    )


def main() -> None:
    parser = settings_parser(__doc__.split("\n\n")[0], SETTINGS, "fashion-mnist", jobs=True)
    parser.add_argument(
        "--lrs", default="0.1,0.03,0.01,0.003", help="KD fine-tuning rates to choose from"
    )
    parser.add_argument("--out", type=Path)
    ns = parser.parse_args()
    seeds = [int(s) for s in ns.seeds.split(",")]
    lrs = [float(v) for v in ns.lrs.split(",")]
    root = ns.out or Path(f"runs/bench-poly-{ns.setting}")
    print(f"machine: {machine_line()}\nsetting: {ns.setting}, seeds {seeds}, root {root}")
    with ProcessPoolExecutor(ns.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_seed, ns.setting, s, root, lrs) for s in seeds]
        rows = [r for f in futures for r in f.result()]
    tabs, summary = tables(rows, seeds)
    for title, (header, body) in tabs.items():
        print(f"\n{title}")
        print_table(header, body)
    print("\n" + "\n".join(summary))
    if ns.setting != "tiny":
        save_results(
            f"poly_granularity_{ns.setting}",
            tables=tabs,
            summary=summary,
            data={"rows": rows},
            setting={"seeds": seeds, "lrs": lrs} | SETTINGS[ns.setting],
        )


if __name__ == "__main__":
    main()
