"""``pifair polyfit``: an HE-ready copy of a trained run, ReLUs replaced by trained polynomials."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..reduce.finetune import FinetuneSettings
from ..reduce.polyfit import polyfit
from ..relu.polynomial import PolyGranularity
from ..runs import CHECKPOINT, Run
from ._jobs import RunJob
from ._reduce import open_parent, write_reduced

__all__ = ["PolyfitJob", "run_polyfit"]


@dataclass
class PolyfitJob(RunJob):
    """What ``pifair polyfit`` runs; its dict is the run's config.yaml."""

    from_run: str
    degree: int = 2
    granularity: PolyGranularity = "element"
    seed: int = 0
    device: str = "auto"
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    _nested: ClassVar[dict[str, type]] = {"finetune": FinetuneSettings}


def run_polyfit(
    job: PolyfitJob,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Run:
    """Run ``job``: the parent run's ReLUs replaced by trained polynomials, one run folder."""
    parent = open_parent(job.from_run, job.device)
    run = job.open_run("polyfit", out, resume=resume)
    torch.manual_seed(job.seed)
    result = polyfit(
        parent.model,
        parent.data,
        degree=job.degree,
        granularity=job.granularity,
        finetune=job.finetune,
        device=parent.device,
        progress=progress,
        checkpoints=run,
        resume=(run.path / CHECKPOINT).exists(),
    )
    write_reduced(
        run,
        result,
        parent,
        kind="polyfit",
        parent_key="parent",
        curves_title=f"KD fine-tuning, degree-{job.degree} {job.granularity}-wise polynomials",
        groups_title="test accuracy per group, polynomial model",
        degree=result.degree,
        granularity=result.granularity,
        poly_sites=result.sites,
        coefficients=result.coefficients,
        val_accuracy_before_finetune=result.val_accuracy_before_finetune,
    )
    return run
