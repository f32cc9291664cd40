"""``pifair sweep dp-train``: a DP method over a grid of learning rates and clip bounds, the
setting picked on a validation split held out of the training set, never on the test set.

Every grid point is a ``dp-train`` run folder (``lr0.1-clip1``) with the same data, model,
epochs, expected batch size and privacy level; only the learning rate and the method's clip
bound (C; Z for the Global methods, whose C is not the bound that clips) change. A point that
finished with the same settings is kept, an interrupted one resumed: the sweep is resumable.
The selection (:func:`select_point`) reads validation metrics only: by validation accuracy and
by the validation accuracy of the worst group. The test accuracy of the selected points is
read after the selection, for the report. Tuning on the training data is not accounted in
epsilon (as in the papers): the sweep says so in its metrics.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..atomic import atomic_open
from ..dp import DPConfig
from ..errors import ConfigError
from ..report import plots
from ..runs import MODEL, Run
from .dp_train import dp_train

__all__ = [
    "BOUND_FIELD",
    "DPSweepJob",
    "SelectBy",
    "bound_field",
    "grid_configs",
    "point_name",
    "run_dp_sweep",
    "select_point",
    "train_point",
    "validation_view",
]

SelectBy = Literal["accuracy", "worst-group"]
#: the validation metric each selection maximises
SELECTION_METRIC: dict[str, str] = {
    "accuracy": "val_accuracy",
    "worst-group": "val_worst_group_accuracy",
}
#: the clip bound a grid varies, per method (the Global methods clip at Z; C only scales)
BOUND_FIELD: dict[str, str] = {"global": "z", "global-adapt": "z"}
NOT_ACCOUNTED = (
    "the grid was chosen on a validation split of the private training data; like the papers, "
    "epsilon does not account for this tuning"
)


def bound_field(method: str) -> str:
    """The config field the grid's clip bound sets for ``method``."""
    return BOUND_FIELD.get(method, "clip")


def point_name(lr: float, bound: float | None) -> str:
    return f"lr{lr:g}" + ("" if bound is None else f"-clip{bound:g}")


def grid_configs(
    base: DPConfig, lrs: Sequence[float], bounds: Sequence[float]
) -> dict[str, DPConfig]:
    """One config per (lr, bound), named by :func:`point_name`; the non-private method has no
    bound, so its grid is the learning rates alone."""
    if not lrs:
        raise ConfigError("give at least one learning rate: --lr 0.01,0.1,1")
    if base.val_fraction <= 0:
        raise ConfigError(
            "a sweep selects on a validation split held out of the training set: give "
            "--val-fraction 0.1 (never the test set)"
        )
    out: dict[str, DPConfig] = {}
    for lr in lrs:
        if not base.private or not bounds:
            out[point_name(lr, None)] = replace(base, lr=lr)
            continue
        for b in bounds:
            bounded = (
                replace(base, z=b) if bound_field(base.method) == "z" else replace(base, clip=b)
            )
            out[point_name(lr, b)] = replace(bounded, lr=lr)
    return out


def validation_view(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run's metrics a selection may read: its validation numbers, nothing of
    the test split."""
    return {k: metrics[k] for k in metrics if k.startswith("val")}


def select_point(points: Mapping[str, Mapping[str, Any]], by: SelectBy) -> str:
    """The grid point with the best validation metric ``by`` (ties: the first in order).

    ``points`` maps a point's name to its :func:`validation_view`; a point whose metric is
    missing or not finite (a diverged run) is never selected."""
    key = SELECTION_METRIC[by]
    best, best_value = None, -math.inf
    for name, view in points.items():
        value = view.get(key)
        if value is not None and math.isfinite(value) and value > best_value:
            best, best_value = name, value
    if best is None:
        raise ConfigError(f"no grid point has a finite {key}; every run failed or diverged")
    return best


@dataclass
class DPSweepJob:
    """What ``pifair sweep dp-train`` runs: a base config and the grid."""

    base: DPConfig
    lrs: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])
    bounds: list[float] = field(default_factory=list)  # empty: the method's default bound

    def as_config(self) -> dict[str, Any]:
        return {"base": self.base.as_dict(), "lrs": self.lrs, "bounds": self.bounds}


def train_point(cfg: DPConfig, path: Path, progress: bool = False) -> Run:
    """The ``dp-train`` run of ``cfg`` at ``path``: kept when it finished with these settings,
    resumed when it was interrupted with them, trained afresh when the folder is new; a folder
    holding other settings is refused (``Run.resume``). Grid points and benchmarks share it."""
    if (path / MODEL).exists():
        run = Run.open(path)
        if run.finished and DPConfig.from_dict(run.config) == cfg:
            return run
    resume = (path / "config.yaml").exists()
    trained = dp_train(cfg, out=path, resume=resume, progress=progress)
    assert trained is not None  # one process
    return trained


def run_dp_sweep(
    job: DPSweepJob, *, out: str | os.PathLike | None = None, progress: bool = True
) -> Run:
    """Every grid point of ``job`` (resumable), the validation table, the selected points and,
    only after the selection, their test accuracy."""
    configs = grid_configs(job.base, job.lrs, job.bounds)  # refuses a sweep without val split
    root_path = Path(out) if out else None
    root = (  # an interrupted sweep continues where it stopped (same settings, checked)
        Run.resume(root_path, job.as_config() | {"command": "sweep-dp-train"}, allow_finished=True)
        if root_path is not None and (root_path / "config.yaml").exists()
        else Run.create("sweep-dp-train", job.as_config(), out=root_path)
    )
    views: dict[str, dict[str, Any]] = {}
    for name, cfg in configs.items():
        run = train_point(cfg, root.path / name, progress)
        views[name] = validation_view(run.metrics)
    rows = [
        {
            "point": name,
            "lr": configs[name].lr,
            "bound": getattr(configs[name], bound_field(job.base.method))
            if job.base.private
            else None,
            "val_accuracy": v.get("val_accuracy"),
            "val_worst_group_accuracy": v.get("val_worst_group_accuracy"),
            "val_minority_majority_gap": v.get("val_minority_majority_gap"),
        }
        for name, v in views.items()
    ]
    criteria: tuple[SelectBy, ...] = ("accuracy", "worst-group")
    selected = {by: select_point(views, by) for by in criteria}
    # only now, for the report: the test numbers of the selected points
    chosen = {}
    for by, name in selected.items():
        test = Run.open(root.path / name).metrics
        chosen[by] = {
            "point": name,
            "lr": configs[name].lr,
            "bound_field": bound_field(job.base.method),
            "bound": getattr(configs[name], bound_field(job.base.method)),
            "test_accuracy": test.get("test_accuracy"),
            "test_worst_group_accuracy": test.get("test", {}).get("worst_group_accuracy"),
        }
    root.update_metrics(
        kind="sweep-dp-train",
        method=job.base.method,
        points=len(configs),
        epochs=job.base.epochs,
        batch_size=job.base.batch_size,
        rows=rows,
        selected=chosen,
        not_accounted=NOT_ACCOUNTED,
    )
    with atomic_open(root.file("grid.csv"), "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plots.dp_grid(rows, root.file("grid.png"), title=f"{job.base.method}: validation over the grid")
    root.log.info("selected %s; %s", chosen, NOT_ACCOUNTED)
    return root
