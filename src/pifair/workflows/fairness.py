"""``pifair audit`` and ``pifair mitigate``: who pays for a reduction, and fine-tuning that
spreads the cost more evenly."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

from ..config_types import check_settings, help_of, setting
from ..errors import ConfigError, UnfinishedRunError
from ..fairness.audit import PairAudit, audit_pair, mean_ci
from ..fairness.mitigation import DualUpdate, ObjectiveName
from ..reduce.finetune import FinetuneSettings
from ..relu import count_relus
from ..report import plots
from ..runs import Run
from ..training import resolve_device
from .linearize import LinearizeJob, run_linearize, search_checkpoint_of
from .train import dataset_for_run, load_from_run

__all__ = ["AuditJob", "MitigateJob", "run_audit", "run_mitigate"]


def _parent_of(reduced: Path, default: Path) -> Path:
    parent = Run.open(reduced).parent()
    return parent if parent and (parent / "model.pt").exists() else default


def _label(run: Run) -> str:
    """method, then what differs from plain SNL: ``snl``, ``snl+anchored``,
    ``snl+search:group-dro+group-dro``, ``snl+constrained/fair-selected``."""
    m = run.metrics
    label = m.get("method", "reduced")
    if m.get("search_objective", "kd") != "kd":
        label += f"+search:{m['search_objective']}"
    if m.get("objective", "kd") != "kd":
        label += f"+{m['objective']}"
    if m.get("select_by", "accuracy") != "accuracy":
        label += f"/{m['select_by']}-selected"
    return label


@dataclass
class AuditJob:
    """What ``pifair audit`` runs; its dict is the run's config.yaml."""

    dense: str = setting(help="the dense run (parent of reduced runs that do not name theirs)")
    reduced: list[str] = setting(help="reduced runs (linearize runs, or sweep folders' sub-runs)")
    split: Literal["val", "test"] = setting("test", help="the split the audit reads")
    grad_samples: int = setting(
        128, help="samples per group for the gradient norms (0: skip)", ge=0
    )
    device: str = setting("auto", help="auto (CUDA when present), cpu or cuda[:N]")

    def __post_init__(self) -> None:
        check_settings(self)


def run_audit(job: AuditJob, *, out: str | os.PathLike | None = None) -> Run:
    """Audit each reduced run against its dense parent (its ``--from`` run, else ``job.dense``).

    Runs that differ only by seed are summarised with a 95 % confidence interval.
    """
    dense_dir, reduced_dirs, split, grad_samples = (
        job.dense,
        job.reduced,
        job.split,
        job.grad_samples,
    )
    for path in [dense_dir, *reduced_dirs]:
        Run.open(path)  # a missing or foreign folder is named before any work
    dev = resolve_device(job.device)
    config = {
        "dense": str(Path(dense_dir).resolve()),
        "reduced": [str(Path(r).resolve()) for r in reduced_dirs],
        "split": split,
        "grad_samples": grad_samples,
        "device": job.device,
    }
    run = Run.create("audit", config, out=out)
    pairs: list[tuple[Run, PairAudit]] = []
    for reduced_dir in map(Path, reduced_dirs):
        parent_dir = _parent_of(reduced_dir, Path(dense_dir))
        dense, _, parent = load_from_run(parent_dir)
        reduced, _, reduced_run = load_from_run(reduced_dir)
        data = dataset_for_run(parent)
        audit = audit_pair(
            dense,
            reduced,
            data,
            name=reduced_dir.name,
            relus=count_relus(reduced, data.input_shape).total,
            dense_relus=count_relus(dense, data.input_shape).total,
            split=split,
            grad_samples=grad_samples,
            device=dev,
        )
        pairs.append((reduced_run, audit))
        run.log.info(
            "%s: drop %.4f, worst group %.4f, spread %.4f, minority gap %s",
            reduced_dir,
            audit.drop,
            audit.worst_group_accuracy,
            audit.drop_spread,
            audit.minority_gap,
        )
    summary = _summarise(pairs)
    run.update_metrics(
        kind="audit",
        split=split,
        group_by=data.group_by,
        pairs=[a.as_dict() | {"run": str(r.path), "label": _label(r)} for r, a in pairs],
        summary=summary,
    )
    plots.drops_by_budget(summary, run.file("drops.png"))
    for i, (_, audit) in enumerate(pairs[:6]):
        plots.margin_distributions(
            audit.margins,
            run.file(f"margins-{i}.png"),
            title=f"distance to the decision boundary: {audit.name}",
        )
    return run


def _summarise(pairs: list[tuple[Run, PairAudit]]) -> list[dict]:
    """Per (label, ReLUs): mean and 95 % CI across seeds of the overall and per-group numbers."""
    by_key: dict[tuple[str, int], list[PairAudit]] = defaultdict(list)
    for run, audit in pairs:
        by_key[(_label(run), audit.relus)].append(audit)
    rows = []
    for (label, relus), audits in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        row = {"label": label, "relus": relus, "runs": len(audits)}
        for key, values in (
            ("drop", [a.drop for a in audits]),
            ("accuracy", [a.reduced_accuracy for a in audits]),
            ("worst_group_accuracy", [a.worst_group_accuracy for a in audits]),
            ("drop_spread", [a.drop_spread for a in audits]),
            ("minority_gap", [a.minority_gap for a in audits]),
            ("minority_gap_unweighted", [a.minority_gap_unweighted for a in audits]),
        ):
            mean, half = mean_ci(values)
            row[key], row[f"{key}_ci"] = mean, half
        names = [g.name for g in audits[0].groups]
        row["group_drops"] = {
            n: mean_ci([a.groups[i].drop for a in audits])[0] for i, n in enumerate(names)
        }
        row["minority"] = [g.name for g in audits[0].groups if g.minority]
        row["group_sizes"] = {g.name: g.count for g in audits[0].groups}
        rows.append(row)
    return rows


@dataclass
class MitigateJob:
    """What ``pifair mitigate`` runs: a linearize run's fine-tuning redone with a fairness-aware
    objective. Unset settings (None) are the reduced run's."""

    from_run: str = setting(help="a linearize run folder")
    objective: ObjectiveName = setting("constrained", help=help_of(FinetuneSettings, "objective"))
    # mitigation is a fine-tuning: at least one epoch
    epochs: int | None = setting(None, help="fine-tuning epochs", ge=1)
    mu: float | None = setting(None, help=help_of(FinetuneSettings, "mu"), ge=0)
    multiplier_init: float | None = setting(
        None, help=help_of(FinetuneSettings, "multiplier_init"), ge=0
    )
    dual_update: DualUpdate | None = setting(None, help=help_of(FinetuneSettings, "dual_update"))
    dro_step: float | None = setting(None, help=help_of(FinetuneSettings, "dro_step"), gt=0)
    logit_tau: float | None = setting(None, help=help_of(FinetuneSettings, "logit_tau"), ge=0)
    select_by: Literal["accuracy", "fair"] | None = setting(
        None, help=help_of(FinetuneSettings, "select_by")
    )

    def __post_init__(self) -> None:
        check_settings(self)

    def finetune_overrides(self) -> dict:
        """The FinetuneSettings fields this job sets."""
        names = {f.name for f in fields(FinetuneSettings)}
        return {k: v for k, v in asdict(self).items() if k in names and v is not None}


def run_mitigate(
    job: MitigateJob,
    *,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    resume: bool = False,
) -> Run:
    """Redo the fine-tuning of a linearize run with a fairness-aware objective.

    The reduction itself is replayed from the run's SNL search checkpoint (same masks), so the
    only difference from the original run is the fine-tuning (its objective and the settings
    the job sets). ``resume`` continues the killed mitigation in ``out``.
    """
    reduced_dir = Path(job.from_run)
    reduced = Run.open(reduced_dir)
    config = reduced.config
    if config.get("command") != "linearize":
        raise ConfigError(
            f"{reduced_dir} is not a linearize run (command {config.get('command')!r}); give a "
            "reduced model's run folder"
        )
    linearize = LinearizeJob.from_config(config)
    finetune = replace(linearize.finetune, **job.finetune_overrides())
    # the parent where it is now (a tree of runs moved together), not where it was saved
    linearize = replace(linearize, finetune=finetune, from_run=str(reduced.parent()))
    search = search_checkpoint_of(reduced_dir)
    if search is None and "snl" in linearize.methods:
        raise UnfinishedRunError(
            f"no SNL search checkpoint for {reduced_dir} (search.pt); rerun pifair linearize with "
            "--mitigate instead"
        )
    return run_linearize(linearize, out=out, progress=progress, search_from=search, resume=resume)
