"""ReLU sharing's accuracy claim (#28): accuracy against sign decisions, down to 1,000x fewer,
for every sharing scheme and decision rule against SNL and the naive top-k baseline at the same
budgets, 3 seeds (a dense model per seed), paired intervals, a Pareto plot.

Settings:
  fashion-mnist  the demo's LeNet (18,944 ReLUs) on 12,000 Fashion-MNIST images, budgets 1,000
                 / 200 / 50 / 19 (about 1,000x fewer); short schedules (CPU scale)
  cifar10-cpu    ResNet18 at width 16 (SNL variant, 122,880 ReLUs) on 5,000 CIFAR-10 images,
                 budgets 12.5K / 2.5K / 500 / 123 (CPU scale)
  cifar10-gpu    ResNet18 on CIFAR-10 (491,520 ReLUs), budgets 100K / 25K / 5K / 1K / 492
  tiny           a few hundred digits images: checks the script

Each seed is one sweep (``pifair sweep``: one shared SNL search, then every method at every
budget, the same fine-tuning for all), then sharing composed with SNL (``pifair share --from``
the SNL run at the first budget, down to the others: clusters and patches with the learned rule),
resumable from its run folders; seeds run ``--jobs`` at a
time, one thread each. A budget a scheme cannot reach is reported as such. Sharing keeps at
most the budget (its decisions can fall below it); the table gives the decisions reached. At
each budget the summary compares SNL with the sharing method chosen on validation accuracy
(mean over the seeds), not with the best on test, which would favour sharing by selection.

    python benchmarks/sharing.py --setting fashion-mnist [--seeds 0,1,2] [--jobs 2] [--out DIR]
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    CIFAR10_RESNET18,
    CIFAR10_RESNET18_CPU,
    RESULTS_DIR,
    machine_line,
    print_table,
    save_results,
    settings_parser,
)
from pifair.errors import BudgetError  # noqa: E402
from pifair.fairness.audit import mean_ci, paired_difference  # noqa: E402
from pifair.reduce import FinetuneSettings  # noqa: E402
from pifair.reduce.snl import SearchSettings  # noqa: E402
from pifair.runs import MODEL, Run  # noqa: E402
from pifair.training import TrainConfig  # noqa: E402
from pifair.workflows.linearize import LinearizeJob  # noqa: E402
from pifair.workflows.share import ShareJob, run_share  # noqa: E402
from pifair.workflows.sweep import run_sweep  # noqa: E402
from pifair.workflows.train import train  # noqa: E402

SCHEMES = ("patch", "channel", "cluster")
RULES = ("mean", "representative", "learned")
METHODS = ["snl", "naive", *(f"share-{s}-{r}" for s in SCHEMES for r in RULES)]
# sharing after linearization (pifair share --from SNL_RUN): from the SNL run at the first
# budget down to the others, against SNL alone at those budgets
COMPOSED = [("cluster", "learned"), ("patch", "learned")]
SETTINGS = {
    "fashion-mnist": dict(
        dense=dict(
            data="fashion-mnist", model="lenet", limit=12000, epochs=6, batch_size=128, lr=0.05
        ),
        budgets=["1000", "200", "50", "19"],
        search=SearchSettings(
            max_epochs=6, batch_size=128, mask_lr=1e-2, lambda_init=1e-4, lambda_growth=1.5
        ),
        finetune=FinetuneSettings(epochs=2, batch_size=128),
    ),
    "cifar10-cpu": dict(
        dense=dict(CIFAR10_RESNET18_CPU),
        budgets=["12500", "2500", "500", "123"],
        search=SearchSettings(max_epochs=4, batch_size=128),
        finetune=FinetuneSettings(epochs=3, batch_size=128),
    ),
    "cifar10-gpu": dict(
        dense=dict(CIFAR10_RESNET18),
        budgets=["100k", "25k", "5k", "1k", "492"],
        search=SearchSettings(max_epochs=30, batch_size=256),
        finetune=FinetuneSettings(epochs=20, batch_size=256),
    ),
    "tiny": dict(
        dense=dict(data="digits", model="lenet", epochs=2, batch_size=64, lr=0.05),
        budgets=["200", "20"],
        search=SearchSettings(max_epochs=2, batch_size=64),
        finetune=FinetuneSettings(epochs=1, batch_size=64),
    ),
}


def run_seed(setting: str, seed: int, root: Path, methods: list[str]) -> list[dict]:
    """One seed: its dense model and its sweep (both resumed when present); the sweep's rows."""
    torch.set_num_threads(1)
    s = SETTINGS[setting]
    dense = root / f"seed{seed}" / "dense"
    if not (dense / MODEL).exists():
        resume = (dense / "checkpoint.pt").exists()
        cfg = TrainConfig(**s["dense"], seed=seed)
        train(cfg, out=dense, resume=resume, progress=False)
    sweep = root / f"seed{seed}" / "sweep"
    job = LinearizeJob(
        from_run=str(dense),
        budgets=s["budgets"],
        methods=methods,
        search=s["search"],
        finetune=replace(s["finetune"], seed=seed),
        seed=seed,
    )
    run_sweep(job, out=sweep, resume=(sweep / "config.yaml").exists(), progress=False)
    rows = Run.open(sweep).metrics["rows"] + composed_rows(sweep, s, seed)
    dense_metrics = Run.open(dense).metrics
    return [r | {"seed": seed, "dense_accuracy": dense_metrics["test_accuracy"]} for r in rows]


def composed_name(budget: str, scheme: str, rule: str) -> str:
    return f"snl-{budget}+share-{scheme}-{rule}"


def composed_rows(sweep: Path, s: dict, seed: int) -> list[dict]:
    """Sharing from the SNL run at the first budget down to each lower budget (resumed from
    its run folders), as rows like the sweep's."""
    first, rows = s["budgets"][0], []
    snl = sweep / f"snl-{first}"
    for scheme, rule in COMPOSED:
        for budget in s["budgets"][1:]:
            path = sweep.parent / "composed" / f"{scheme}-{rule}-{budget}"
            if not (path / MODEL).exists():
                job = ShareJob(
                    from_run=str(snl),
                    budget=budget,
                    scheme=scheme,
                    rule=rule,
                    seed=seed,
                    finetune=replace(s["finetune"], seed=seed),
                )
                try:
                    run_share(
                        job,
                        out=path,
                        resume=(path / "config.yaml").exists(),
                        progress=False,
                        walks=path.parent / "walks",
                    )
                except BudgetError:
                    continue  # below what the scheme's coarsest grouping keeps
            m = Run.open(path).metrics
            name = composed_name(first, scheme, rule)
            rows.append(
                {"method": name, "budget": budget, "relus": m["relus"]}
                | {"test_accuracy": m["test_accuracy"], "val_accuracy": m["val_accuracy"]}
            )
    return rows


def _cell(values: list[float]) -> str:
    mean, half = mean_ci(values)
    return f"{100 * mean:.2f} ± {100 * half:.2f}"


def tables(rows: list[dict], budgets: list[str], methods: list[str], seeds: list[int]):
    """Accuracy per method and budget (mean ± 95 %), and each method minus SNL on the same
    seeds (paired 95 %); with the summary lines."""
    by = {(r["method"], r["budget"], r["seed"]): r for r in rows}
    accuracy, paired, summary = [], [], []
    for b in budgets:
        cells = [b]
        for m in methods:
            got = [by[(m, b, s)] for s in seeds if (m, b, s) in by]
            if len(got) < len(seeds):
                cells.append("unreachable" if not got else f"{len(got)} of {len(seeds)} seeds")
                continue
            decisions = sorted({g["relus"] for g in got})
            cells.append(f"{_cell([g['test_accuracy'] for g in got])} ({decisions[-1]:,})")
        accuracy.append(cells)
        snl = [by[("snl", b, s)]["test_accuracy"] for s in seeds if ("snl", b, s) in by]
        best = None  # the sharing method chosen on validation accuracy, not on test
        for m in methods:
            got = [by[(m, b, s)] for s in seeds if (m, b, s) in by]
            if m == "snl" or len(got) < len(seeds) or len(snl) < len(seeds):
                continue
            mean, lo, hi = paired_difference(snl, [g["test_accuracy"] for g in got])
            paired.append([b, m, f"{100 * mean:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"])
            val = sum(g["val_accuracy"] for g in got) / len(got)
            if "share" in m and (best is None or val > best[1]):
                best = (m, val, mean, lo, hi)
        if best is not None:
            m, val, mean, lo, hi = best
            verdict = "beats" if lo > 0 else ("is below" if hi < 0 else "does not differ from")
            summary.append(
                f"budget {b}: the sharing method chosen on validation, {m} ({100 * val:.2f} % "
                f"validation), {verdict} SNL on test: {100 * mean:+.2f} points "
                f"[{100 * lo:+.2f}, {100 * hi:+.2f}] ({len(seeds)} seeds)"
            )
    header_a = ["budget", *methods]
    return (
        {
            "test accuracy % (decisions reached)": (header_a, accuracy),
            "each method minus SNL, same seeds (paired 95 %)": (
                ["budget", "method", "accuracy - SNL (points)"],
                paired,
            ),
        },
        summary,
    )


def pareto_plot(rows: list[dict], methods: list[str], path: Path) -> None:
    """Test accuracy against decisions (log scale), mean and 95 % interval over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab20").colors  # 13+ methods: the default 10 colours repeat
    for k, m in enumerate(methods):
        points = {}
        for r in rows:
            if r["method"] == m:
                points.setdefault(r["budget"], []).append(r)
        xs, ys, es = [], [], []
        for group in points.values():
            mean, half = mean_ci([g["test_accuracy"] for g in group])
            xs.append(max(g["relus"] for g in group))
            ys.append(100 * mean)
            es.append(100 * half)
        if xs:
            order = sorted(range(len(xs)), key=xs.__getitem__)
            style = "-o" if m in ("snl", "naive") else "--."
            ax.errorbar(
                [xs[i] for i in order],
                [ys[i] for i in order],
                yerr=[es[i] for i in order],
                fmt=style,
                label=m,
                capsize=2,
                color=colours[k % len(colours)],
                linewidth=2.5 if m in ("snl", "naive") else 1.2,
            )
    ax.set_xscale("log")
    ax.set_xlabel("sign decisions (ReLUs) per image")
    ax.set_ylabel("test accuracy %")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> None:
    parser = settings_parser(__doc__.split("\n\n")[0], SETTINGS, "fashion-mnist", jobs=True)
    parser.add_argument("--out", type=Path)
    ns = parser.parse_args()
    seeds = [int(s) for s in ns.seeds.split(",")]
    root = ns.out or Path(f"runs/bench-sharing-{ns.setting}")
    budgets = SETTINGS[ns.setting]["budgets"]
    print(f"machine: {machine_line()}\nsetting: {ns.setting}, seeds {seeds}, root {root}")
    with ProcessPoolExecutor(ns.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_seed, ns.setting, s, root, METHODS) for s in seeds]
        rows = [r for f in futures for r in f.result()]
    methods = METHODS + [composed_name(budgets[0], *c) for c in COMPOSED]
    tabs, summary = tables(rows, budgets, methods, seeds)
    first = [r for r in rows if r["method"] == "snl" and r["budget"] == budgets[0]]
    dense = [r["dense_accuracy"] for r in first]
    summary.insert(0, f"dense: {_cell(dense)} % test accuracy ({len(seeds)} seeds)")
    for title, (header, body) in tabs.items():
        print(f"\n{title}")
        print_table(header, body)
    print("\n" + "\n".join(summary))
    if ns.setting != "tiny":
        pareto_plot(rows, methods, RESULTS_DIR / f"sharing_{ns.setting}.png")
        save_results(
            f"sharing_{ns.setting}",
            tables=tabs,
            summary=summary,
            data={"rows": rows},
            setting={"seeds": seeds, "budgets": budgets, "methods": methods},
        )


if __name__ == "__main__":
    main()
