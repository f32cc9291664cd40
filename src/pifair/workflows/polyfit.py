"""``pifair polyfit``: an HE-ready copy of a trained run, ReLUs replaced by trained polynomials."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from ..config_types import setting
from ..reduce.finetune import FinetuneSettings
from ..reduce.polyfit import PolyfitResult, polyfit
from ..relu.polynomial import PolyGranularity
from ..runs import Run
from ..training import evaluate
from ._jobs import RunJob
from ._reduce import Parent, reduce_into_run, write_reduced

__all__ = ["PolyfitJob", "run_polyfit"]


@dataclass
class PolyfitJob(RunJob):
    """What ``pifair polyfit`` runs; its dict is the run's config.yaml."""

    from_run: str
    degree: int = setting(2, help="polynomial degree (the HE engines run 1 or 2)", ge=1)
    granularity: PolyGranularity = "element"
    seed: int = setting(0, help="seed of the reduction and its fine-tuning")
    device: str = setting("auto", help="auto (CUDA when present), cpu or cuda[:N]")
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

    def reduce(parent: Parent, run: Run, resume_finetune: bool) -> PolyfitResult:
        return polyfit(
            parent.model,
            parent.data,
            degree=job.degree,
            granularity=job.granularity,
            finetune=job.finetune,
            device=parent.device,
            progress=progress,
            checkpoints=run,
            resume=resume_finetune,
        )

    run, parent, result = reduce_into_run(job, "polyfit", out, resume=resume, reduce=reduce)
    assert isinstance(result, PolyfitResult)
    write_reduced(
        run,
        result,
        parent,
        kind="polyfit",
        curves_title=f"KD fine-tuning, degree-{job.degree} {job.granularity}-wise polynomials",
        groups_title="test accuracy per group, polynomial model",
        degree=result.degree,
        granularity=result.granularity,
        poly_sites=result.sites,
        coefficients=result.coefficients,
        val_accuracy_before_finetune=result.val_accuracy_before_finetune,
        val_accuracy=evaluate(result.model, parent.data, "val").accuracy,
    )
    return run
