"""``pifair linearize``: SNL or naive reduction of a parent run into a run folder.

A linearize run folder holds the reduced model (``model.pt``), its metrics against the dense
parent, the search trajectory and the fine-tuning curves. Sweeps (several budgets and methods
on one Pareto plot) are :mod:`pifair.workflows.sweep`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

import torch

from ..atomic import atomic_open, load_torch_file
from ..config_types import setting
from ..errors import ConfigError
from ..reduce.finetune import FinetuneSettings
from ..reduce.linearize import LinearizeHooks, LinearizeResult, linearize_many
from ..reduce.snl import SearchSettings
from ..relu.budget import parse_budget
from ..report import plots
from ..runs import CHECKPOINT, MODEL, Run
from ..training import evaluate
from ._jobs import RunJob
from ._reduce import Parent, open_parent, write_reduced

__all__ = [
    "LinearizeJob",
    "budget_label",
    "linearize_into",
    "run_linearize",
    "search_checkpoint_of",
]

SEARCH = "search.pt"


@dataclass
class LinearizeJob(RunJob):
    """What ``pifair linearize`` / ``sweep linearize`` runs; its dict is the run's config.yaml."""

    from_run: str
    budgets: list[str]
    methods: list[str] = field(default_factory=lambda: ["snl"])
    granularity: Literal["pixel", "channel"] = setting(
        "pixel", help="keep single activations (pixel) or whole channels"
    )
    reference: bool = False
    seed: int = setting(0, help="seed of the reduction and its fine-tuning")
    device: str = setting("auto", help="auto (CUDA when present), cpu or cuda[:N]")
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


def budget_label(b: str | int) -> str:
    return str(b).replace("%", "pct")


def _write_result(run: Run, result: LinearizeResult, parent: Parent, job: LinearizeJob) -> dict:
    """Save the reduced model and its metrics and plots into ``run``."""
    metrics = write_reduced(
        run,
        result,
        parent,
        kind="linearize",
        curves_title=f"fine-tuning at {result.relus:,} ReLUs",
        groups_title=f"test accuracy per group, {result.relus:,} ReLUs",
        method=result.method,
        granularity=result.granularity,
        binarize=str(result.binarize),
        budget=result.budget,
        val_accuracy=evaluate(result.model, parent.data, "val").accuracy,
        val_accuracy_before_finetune=result.val_accuracy_before_finetune,
        val_accuracy_soft=result.val_accuracy_soft,
        hardening=result.hardening,
        site_budgets=result.site_budgets,
        kept_before_finetune=result.kept_before_finetune,
        search=result.search,
        reference=job.reference,
        objective=job.finetune.objective,
        search_objective=job.search.objective,
        select_by=job.finetune.select_by,
    )
    if result.search.get("history"):
        plots.search_trajectory(
            result.search["history"], run.file("search.png"), budgets=[result.budget]
        )
    return metrics


def _budget_run(root: Run, job: LinearizeJob, method: str, budget: str) -> Run:
    """The sub-run of a sweep for one (method, budget): created, or reopened to resume."""
    path = root.path / f"{method}-{budget_label(budget)}"
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


def linearize_into(
    root: Run,
    job: LinearizeJob,
    parent: Parent,
    method: str,
    *,
    sweep: bool,
    progress: bool,
    search_from: Path | None = None,
) -> None:
    """Run ``method`` (snl or naive) at every budget of ``job`` into ``root`` (a sweep: one
    sub-run per budget), keeping what is finished and resuming what was killed."""
    runs = {b: _budget_run(root, job, method, b) if sweep else root for b in job.budgets}
    todo = [b for b in job.budgets if not (runs[b].path / MODEL).exists()]
    if not todo:
        return
    by_count = {parse_budget(b, parent.relus): runs[b] for b in todo}
    search_file = root.file(SEARCH if len(job.methods) == 1 else f"search-{method}.pt")
    source = search_file if search_file.exists() else search_from
    state = load_torch_file(source) if source else None
    results = linearize_many(
        parent.model,
        parent.data,
        todo,
        granularity=job.granularity,
        method=method,
        search=job.search,
        finetune=job.finetune,
        reference=job.reference,
        device=parent.device,
        progress=progress,
        hooks=LinearizeHooks(
            search_state=state,
            on_search_epoch=partial(_save_search, search_file, root.log),
            finetune_checkpoints=partial(_finetune_run, by_count),
        ),
    )
    for budget, result in results.items():
        _write_result(by_count[budget], result, parent, job)


def run_linearize(
    job: LinearizeJob,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    search_from: Path | None = None,
) -> Run:
    """Run ``job`` (one method, one budget) into one run folder.

    ``search_from`` reuses the SNL search checkpoint of an earlier run (same search settings),
    so only the binarization and fine-tuning are redone (``pifair mitigate``). Several methods
    or budgets are a sweep: :func:`pifair.workflows.sweep.run_sweep`.
    """
    if len(job.methods) != 1 or len(job.budgets) != 1:
        raise ConfigError("linearize runs one method at one budget; use 'pifair sweep linearize'")
    parent = open_parent(job.from_run, job.device)
    root = job.open_run("linearize", out, resume=resume)
    torch.manual_seed(job.seed)
    linearize_into(
        root, job, parent, job.methods[0], sweep=False, progress=progress, search_from=search_from
    )
    return root
