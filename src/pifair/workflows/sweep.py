"""``pifair sweep linearize|share``: reductions at several budgets on one Pareto plot.

A sweep folder holds one run per (method, budget) (``linearize`` runs for SNL and the naive
baseline, sharing one SNL search per method; ``share`` runs for the sharing methods), the
search checkpoints, and the Pareto table (``pareto.csv``) and plot (``pareto.png``).
"""

from __future__ import annotations

import csv
import os
import shutil
import time
import typing

import torch

from ..atomic import atomic_open
from ..errors import BudgetError
from ..reduce.share import ShareRule, ShareScheme
from ..report import plots
from ..runs import MODEL, Run
from ._reduce import open_parent
from .linearize import LinearizeJob, budget_label, linearize_into
from .share import ShareJob, run_share

__all__ = ["SHARE_METHODS", "SNL_PUBLISHED_CIFAR10", "run_sweep"]

# SNL (Cho et al. 2022), CIFAR-10, lossless images, dense ~95.2 %: (ReLUs, top-1 %, drop in points)
SNL_PUBLISHED_CIFAR10 = [
    (14_900, 88.43, 6.8),
    (25_000, 90.88, 4.3),
    (49_400, 92.27, 2.9),
    (99_900, 93.50, 1.7),
]

# a sweep's sharing methods: share-SCHEME-RULE for every scheme and rule, and the short names
# of each scheme's usual rule
_EVERY_SHARING: dict[str, tuple[ShareScheme, ShareRule]] = {
    f"share-{scheme}-{rule}": (typing.cast(ShareScheme, scheme), typing.cast(ShareRule, rule))
    for scheme in typing.get_args(ShareScheme)
    for rule in typing.get_args(ShareRule)
}
SHARE_METHODS: dict[str, tuple[ShareScheme, ShareRule]] = {
    "share-patch": ("patch", "mean"),
    "share-channel": ("channel", "mean"),
    "share-cluster": ("cluster", "representative"),
    **_EVERY_SHARING,
}


def _share_budgets(root: Run, job: LinearizeJob, method: str) -> None:
    """ReLU sharing at each budget of a sweep, one ``share`` run each (same fine-tuning)."""
    scheme, rule = SHARE_METHODS[method]
    skipped = root.metrics.get("skipped", {})  # unreachable budgets: not retried on resume
    for budget in job.budgets:
        path = root.path / f"{method}-{budget_label(budget)}"
        if (path / MODEL).exists() or path.name in skipped:
            continue
        share_job = ShareJob(
            from_run=job.from_run,
            budget=budget,
            scheme=scheme,
            rule=rule,
            seed=job.seed,
            device=job.device,
            finetune=job.finetune,
        )
        try:
            run_share(
                share_job,
                out=path,
                resume=(path / "config.yaml").exists(),
                progress=False,
                walks=root.path / "walks",  # one greedy walk per method serves every budget
            )
        except BudgetError as err:  # a budget below what the scheme's coarsest grouping keeps
            root.log.warning("%s at %s skipped: %s", method, budget, err)
            shutil.rmtree(path, ignore_errors=True)
            skipped = root.update_metrics(skipped=skipped | {path.name: str(err)})["skipped"]


def _row(method: str, budget: str, m: dict) -> dict:
    """One Pareto row from a finished sub-run's metrics."""
    return {
        "method": method,
        "budget": budget,
        "relus": m["relus"],
        "test_accuracy": m["test_accuracy"],
        "drop": m["drop"],
        "val_accuracy": m["val_accuracy"],
        "reduce_s": m["seconds"].get("reduce", 0.0),
        "finetune_s": m["seconds"]["finetune"],
        "total_s": m["seconds"]["total"],
        "worst_group_accuracy": m["test"]["worst_group_accuracy"],
    }


def _write_pareto(
    root: Run, rows: list[dict], dense_accuracy: float, dense_relus: int, data_name: str
) -> None:
    root.update_metrics(
        kind="sweep-linearize",
        rows=rows,
        parent_test_accuracy=dense_accuracy,
        parent_relus=dense_relus,
        data=data_name,
        made=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    with atomic_open(root.file("pareto.csv"), "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    reference = SNL_PUBLISHED_CIFAR10 if data_name == "cifar10" else None
    plots.pareto(rows, dense_accuracy, dense_relus, root.file("pareto.png"), published=reference)


def run_sweep(
    job: LinearizeJob,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Run:
    """Every method of ``job`` at every budget, one sub-run each, and the Pareto table."""
    parent = open_parent(job.from_run, job.device)
    root = job.open_run("sweep-linearize", out, resume=resume)
    torch.manual_seed(job.seed)
    for method in job.methods:
        if method in SHARE_METHODS:
            _share_budgets(root, job, method)
        else:
            linearize_into(root, job, parent, method, sweep=True, progress=progress)
    rows = [
        _row(method, b, Run.open(path).metrics)
        for method in job.methods
        for b in job.budgets
        if ((path := root.path / f"{method}-{budget_label(b)}") / MODEL).exists()
    ]  # a missing one was skipped (unreachable for its method)
    if not rows:
        raise BudgetError(
            f"no method of the sweep reached any of the budgets {', '.join(job.budgets)} (see "
            f"{root.file('log.txt')}); give larger budgets, or add snl to --methods"
        )
    _write_pareto(root, rows, parent.test.accuracy, parent.relus, parent.data.name)
    return root
