"""``pifair share``: a ReLU-sharing reduction of a trained run, into its own run folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from ..config_types import setting
from ..reduce.finetune import FinetuneSettings
from ..reduce.share import ShareResult, ShareRule, ShareScheme, share
from ..runs import Run
from ..training import evaluate
from ._jobs import RunJob
from ._reduce import Parent, reduce_into_run, write_reduced

__all__ = ["ShareJob", "run_share"]


@dataclass
class ShareJob(RunJob):
    """What ``pifair share`` runs; its dict is the run's config.yaml."""

    from_run: str
    budget: str
    scheme: ShareScheme = "patch"
    rule: ShareRule = "mean"
    seed: int = setting(0, help="seed of the reduction and its fine-tuning")
    device: str = setting("auto", help="auto (CUDA when present), cpu or cuda[:N]")
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    _nested: ClassVar[dict[str, type]] = {"finetune": FinetuneSettings}


def run_share(
    job: ShareJob,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    walks: str | os.PathLike | None = None,
) -> Run:
    """Run ``job``: ReLU sharing of the parent run's model into one run folder (``walks``: a
    folder where the allocation's greedy walks are kept for other budgets of the same parent)."""

    def reduce(parent: Parent, run: Run, resume_finetune: bool) -> ShareResult:
        return share(
            parent.model,
            parent.data,
            job.budget,
            scheme=job.scheme,
            rule=job.rule,
            finetune=job.finetune,
            device=parent.device,
            progress=progress,
            checkpoints=run,
            resume=resume_finetune,
            walks=walks,
        )

    run, parent, result = reduce_into_run(job, "share", out, resume=resume, reduce=reduce)
    assert isinstance(result, ShareResult)
    write_reduced(
        run,
        result,
        parent,
        kind="share",
        curves_title=f"fine-tuning with {result.relus:,} shared decisions",
        groups_title=f"test accuracy per group, {result.relus:,} decisions",
        method=f"share-{job.scheme}-{job.rule}",
        scheme=job.scheme,
        rule=job.rule,
        budget=result.budget,
        allocation=result.allocation,
        val_accuracy=evaluate(result.model, parent.data, "val").accuracy,
    )
    return run
