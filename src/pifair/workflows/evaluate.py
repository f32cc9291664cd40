"""``pifair eval RUN``: overall and per-group accuracy of a run's model, as a table and JSON."""

from __future__ import annotations

import os

from ..fairness import GroupReport
from ..report import plots
from ..training import evaluate, resolve_device
from .train import dataset_for_run, load_from_run

__all__ = ["evaluate_run"]


def evaluate_run(
    path: str | os.PathLike, *, split: str = "test", device: str = "auto"
) -> GroupReport:
    """Evaluate the model of run folder ``path`` on ``split`` of the data it was trained on.

    Writes ``eval-SPLIT.json`` and ``eval-SPLIT-groups.png`` into the run folder.
    """
    model, _, run = load_from_run(path)
    data = dataset_for_run(run)
    report = evaluate(model.to(resolve_device(device)), data, split)
    run.write_json(
        f"eval-{split}.json", {"split": split, "group_by": data.group_by} | report.as_dict()
    )
    plots.group_accuracy(
        report.as_dict(),
        run.file(f"eval-{split}-groups.png"),
        title=f"{split} accuracy per group ({data.group_by})",
    )
    run.log.info("eval on %s:\n%s", split, report.table())
    return report
