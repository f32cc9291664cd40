"""``pifair linearize`` and ``pifair sweep linearize``: SNL or naive reduction into run folders.

A linearize run folder holds the reduced model (``model.pt``), its metrics against the dense
parent, the search trajectory and the fine-tuning curves. A sweep folder holds one such run per
(method, budget), the shared SNL search checkpoint, and the Pareto table and plot.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

import torch

from ..atomic import atomic_open, load_torch_file
from ..models.io import save_model_like
from ..reduce.finetune import FinetuneSettings
from ..reduce.linearize import LinearizeResult, linearize_many
from ..reduce.share import ShareRule, ShareScheme
from ..reduce.snl import SearchSettings
from ..relu import count_relus
from ..relu.budget import parse_budget
from ..report import plots
from ..runs import CHECKPOINT, MODEL, Run
from ..training import evaluate, resolve_device
from ._jobs import RunJob
from .share import ShareJob, run_share
from .train import dataset_for_run, load_from_run

__all__ = ["LinearizeJob", "run_linearize", "SNL_PUBLISHED_CIFAR10"]

SEARCH = "search.pt"
# SNL (Cho et al. 2022), CIFAR-10, lossless images, dense ~95.2 %: (ReLUs, top-1 %, drop in points)
SNL_PUBLISHED_CIFAR10 = [
    (14_900, 88.43, 6.8),
    (25_000, 90.88, 4.3),
    (49_400, 92.27, 2.9),
    (99_900, 93.50, 1.7),
]


@dataclass
class LinearizeJob(RunJob):
    """What ``pifair linearize`` / ``sweep linearize`` runs; its dict is the run's config.yaml."""

    from_run: str
    budgets: list[str]
    methods: list[str] = field(default_factory=lambda: ["snl"])
    granularity: Literal["pixel", "channel"] = "pixel"
    reference: bool = False
    seed: int = 0
    device: str = "auto"
    search: SearchSettings = field(default_factory=SearchSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    _nested: ClassVar[dict[str, type]] = {"search": SearchSettings, "finetune": FinetuneSettings}


def search_checkpoint_of(run_dir: Path) -> Path | None:
    """The SNL search checkpoint that produced a linearize run (its own, or its sweep's)."""
    run_dir = Path(run_dir)
    config = Run.open(run_dir).config
    method = (config.get("methods") or ["snl"])[0]
    for candidate in (
        run_dir / SEARCH,
        run_dir.parent / f"search-{method}.pt",
        run_dir.parent / SEARCH,
    ):
        if candidate.exists():
            return candidate
    return None


SHARE_METHODS: dict[str, tuple[ShareScheme, ShareRule]] = {
    "share-patch": ("patch", "mean"),
    "share-channel": ("channel", "mean"),
    "share-cluster": ("cluster", "representative"),
}


def _share_budgets(root: Run, job: LinearizeJob, method: str) -> None:
    """ReLU sharing at each budget of a sweep, one ``share`` run each (same fine-tuning)."""
    scheme, rule = SHARE_METHODS[method]
    for budget in job.budgets:
        path = root.path / f"{method}-{_budget_label(budget)}"
        if (path / MODEL).exists():
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
            run_share(share_job, out=path, resume=(path / "config.yaml").exists(), progress=False)
        except ValueError as err:  # e.g. a budget below what the scheme's coarsest grouping keeps
            root.log.warning("%s at %s skipped: %s", method, budget, err)
            shutil.rmtree(path, ignore_errors=True)


def _budget_label(b: str | int) -> str:
    return str(b).replace("%", "pct")


def _write_result(
    run: Run,
    result: LinearizeResult,
    *,
    data,
    dense_test,
    dense_relus: int,
    job: LinearizeJob,
    parent: str,
) -> dict:
    """Save the reduced model and its metrics and plots into ``run``."""
    _, record, _ = load_from_run(parent)
    save_model_like(run.file(MODEL), result.model, record)
    test = evaluate(result.model, data, "test")
    val = evaluate(result.model, data, "val")
    metrics = run.update_metrics(
        kind="linearize",
        method=result.method,
        granularity=result.granularity,
        binarize=result.binarize,
        budget=result.budget,
        relus=result.relus,
        dense_relus=dense_relus,
        dense_test_accuracy=dense_test.accuracy,
        test_accuracy=test.accuracy,
        drop=dense_test.accuracy - test.accuracy,
        val_accuracy=val.accuracy,
        val_accuracy_before_finetune=result.val_accuracy_before_finetune,
        val_accuracy_soft=result.val_accuracy_soft,
        hardening=result.hardening,
        site_budgets=result.site_budgets,
        kept_before_finetune=result.kept_before_finetune,
        test=test.as_dict(),
        dense_test=dense_test.as_dict(),
        search=result.search,
        history=result.history,
        seconds=result.seconds | {"total": sum(result.seconds.values())},
        reference=job.reference,
        data=data.summary(),
        model=record["model"],
        device=str(resolve_device(job.device)),
        objective=job.finetune.objective,
        search_objective=job.search.objective,
        select_by=job.finetune.select_by,
    )
    if result.history:
        plots.training_curves(
            result.history,
            run.file("curves.png"),
            title=f"fine-tuning at {result.relus:,} ReLUs",
        )
    if result.search.get("history"):
        plots.search_trajectory(
            result.search["history"], run.file("search.png"), budgets=[result.budget]
        )
    plots.group_accuracy(
        test.as_dict(),
        run.file("groups.png"),
        title=f"test accuracy per group, {result.relus:,} ReLUs",
    )
    run.log.info(
        "%s %s: %s ReLUs, test %.4f (dense %.4f)",
        result.method,
        result.budget,
        f"{result.relus:,}",
        test.accuracy,
        dense_test.accuracy,
    )
    return metrics


def _budget_run(root: Run, job: LinearizeJob, method: str, budget: str) -> Run:
    """The sub-run of a sweep for one (method, budget): created, or reopened to resume."""
    path = root.path / f"{method}-{_budget_label(budget)}"
    sub = LinearizeJob(
        **(
            asdict(job)
            | {
                "budgets": [budget],
                "methods": [method],
                "search": job.search,
                "finetune": job.finetune,
            }
        )
    )
    return sub.open_run(
        "linearize", path, resume=(path / "config.yaml").exists(), allow_finished=True
    )


def _save_search(path: Path, log, state: dict) -> None:
    """Checkpoint the search (atomically) and log its epoch."""
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    last = state["history"][-1]
    log.info(
        "SNL search epoch %d: %s ReLUs above threshold, lambda %.3g, %.0f s",
        last["epoch"],
        f"{last['count']:,}",
        last["lambda"],
        last["seconds"],
    )


def _finetune_run(runs_by_count: dict[int, Run], budget: int) -> tuple[Run, bool]:
    run = runs_by_count[budget]
    return run, (run.path / CHECKPOINT).exists()


def run_linearize(
    job: LinearizeJob,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    sweep: bool = False,
    search_from: Path | None = None,
) -> Run:
    """Run ``job``; a single (method, budget) writes one run folder, a sweep a folder of them.

    ``search_from`` reuses the SNL search checkpoint of an earlier run (same search settings),
    so only the binarization and fine-tuning are redone (``pifair mitigate``).
    """
    device = resolve_device(job.device)
    dense, record, parent = load_from_run(job.from_run)
    data = dataset_for_run(parent)
    dense_relus = count_relus(dense, data.input_shape).total
    command = "sweep-linearize" if sweep else "linearize"
    root = job.open_run(command, out, resume=resume)
    dense_test = evaluate(dense.to(device), data, "test")
    torch.manual_seed(job.seed)
    for method in job.methods:
        if method.startswith("share-"):
            _share_budgets(root, job, method)
            continue
        runs = {b: _budget_run(root, job, method, b) if sweep else root for b in job.budgets}
        todo = [b for b in job.budgets if not (runs[b].path / MODEL).exists()]
        if not todo:
            continue
        by_count = {parse_budget(b, dense_relus): runs[b] for b in todo}
        search_file = root.file(SEARCH if len(job.methods) == 1 else f"search-{method}.pt")
        source = search_file if search_file.exists() else search_from
        state = load_torch_file(source) if source else None
        results = linearize_many(
            dense,
            data,
            todo,
            granularity=job.granularity,
            method=method,
            search=job.search,
            finetune=job.finetune,
            reference=job.reference,
            device=device,
            progress=progress,
            search_state=state,
            on_search_epoch=partial(_save_search, search_file, root.log),
            finetune_checkpoints=partial(_finetune_run, by_count),
        )
        for budget, result in results.items():
            _write_result(
                by_count[budget],
                result,
                data=data,
                dense_test=dense_test,
                dense_relus=dense_relus,
                job=job,
                parent=job.from_run,
            )
    rows = []
    if sweep:
        for method in job.methods:
            for b in job.budgets:
                path = root.path / f"{method}-{_budget_label(b)}"
                if not (path / MODEL).exists():
                    continue  # skipped (unreachable for this method)
                m = Run.open(path).metrics
                rows.append(
                    {
                        "method": method,
                        "budget": b,
                        "relus": m["relus"],
                        "test_accuracy": m["test_accuracy"],
                        "drop": m["drop"],
                        "val_accuracy": m["val_accuracy"],
                        "search_s": m["seconds"].get("search", m["seconds"].get("allocate", 0.0)),
                        "finetune_s": m["seconds"]["finetune"],
                        "total_s": m["seconds"]["total"],
                        "worst_group_accuracy": m["test"]["worst_group_accuracy"],
                    }
                )
        _write_pareto(root, rows, dense_test.accuracy, dense_relus, data.name)
    return root


def _write_pareto(
    root: Run, rows: list[dict], dense_accuracy: float, dense_relus: int, data_name: str
) -> None:
    root.update_metrics(
        kind="sweep-linearize",
        rows=rows,
        dense_test_accuracy=dense_accuracy,
        dense_relus=dense_relus,
        data=data_name,
        made=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    with atomic_open(root.file("pareto.csv"), "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    reference = SNL_PUBLISHED_CIFAR10 if data_name == "cifar10" else None
    plots.pareto(rows, dense_accuracy, dense_relus, root.file("pareto.png"), published=reference)
