"""``pifair dp-train``: a DP-SGD variant on Opacus in a run folder, accounted, diagnosed,
resumable (the training pieces are :mod:`pifair.dp.private`)."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from ..atomic import atomic_copy, atomic_write_json
from ..data import Dataset, load_dataset
from ..dp.config import DPConfig
from ..dp.diagnostics import privacy_cost_summary
from ..dp.private import (
    PrivateTraining,
    check_dp_compatible,
    distributed_rank,
    ranks_agree,
    train_epoch,
)
from ..errors import ConfigError
from ..fairness.audit import minority_gap, minority_groups
from ..models import create_model
from ..report import plots
from ..runs import MODEL, Run
from ..training.loop import evaluate, resolve_device
from .train import save_trained_model

__all__ = ["DPConfig", "dp_train"]

ALIGNMENT = "alignment.json"  # per step and group: direction and magnitude error
UNACCOUNTED_NOTE = (
    "Misalignment diagnostics (per-group batch counts, cosines and norm ratios of clipped vs "
    "unclipped gradients) are exact statistics of the private training data: epsilon does NOT "
    "cover them. Keep alignment.json and the history's 'alignment' entries for research; do "
    "not release them with the model."
)


def dp_train(
    cfg: DPConfig,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Run | None:
    """Train ``cfg.model`` with ``cfg.method`` into a run folder, every release accounted;
    returns the run (``None`` on torchrun ranks other than 0).

    Examples
    --------
    >>> import tempfile, pifair
    >>> cfg = pifair.DPConfig(data="digits", model="mlp", method="global-adapt", epochs=1,
    ...                       epsilon=3.0, delta=1e-5)
    >>> run = pifair.dp_train(cfg, out=tempfile.mkdtemp() + "/dp", progress=False)
    >>> round(run.metrics["epsilon"], 1) <= 3.0, sorted(run.metrics["test_groups"])[:3]
    (True, ['0', '1', '2'])
    """
    if cfg.baseline:
        _check_baseline(cfg.baseline)
    rank, world = distributed_rank()
    if world > 1 and not cfg.private:
        raise ConfigError("the non-private baseline trains in one process: run it without torchrun")
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    data = load_dataset(**cfg.data_config.load_kwargs(cfg.seed))
    model = create_model(
        cfg.model, num_classes=data.num_classes, input_shape=data.input_shape, **cfg.model_options()
    )
    if cfg.private:
        check_dp_compatible(model)
    model.to(device)
    run = _open_run(cfg, out, resume) if rank == 0 else None
    private = PrivateTraining(cfg, model, data, rank, world) if cfg.private else None
    assert cfg.lr is not None  # DPConfig fills the method's default
    optimizer = (
        private.optimizer
        if private
        else torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    )
    history: list[dict] = []
    start = 0
    ckpt = Run.open(out).load_checkpoint() if resume and out is not None else None
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        history, start = ckpt["history"], ckpt["epoch"]
        if private:
            private.load_state(ckpt["private"])
    if run:
        _log_start(run, cfg, data, world, private)
    train = data.train.to(device)
    for epoch in range(start, cfg.epochs):
        record = train_epoch(
            cfg, model, data, train, optimizer, private, epoch, device, progress and rank == 0
        )
        if world > 1:
            torch.distributed.barrier()
        if run is not None:  # rank 0 holds the run folder
            history.append(_epoch_record(run, cfg, model, data, private, record, epoch))
            run.save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "history": history,
                    "epoch": epoch + 1,
                    "private": private.state() if private else None,
                }
            )
    in_sync = ranks_agree(model) if world > 1 else True
    if world > 1:  # after the last collective: a group left to exit tore gloo down (SIGABRT)
        torch.distributed.destroy_process_group()
    if rank != 0 or run is None:
        return None
    _finish(cfg, run, model, data, history, private, world_size=world, ranks_in_sync=in_sync)
    return run


def _open_run(cfg: DPConfig, out: str | os.PathLike | None, resume: bool) -> Run:
    """The run folder: a new one, or the killed run at ``out`` with the same settings."""
    if resume:
        return Run.resume(out, cfg.as_dict(), normalize=lambda d: DPConfig.from_dict(d).as_dict())
    return Run.create("dp-train", cfg.as_dict(), out=out)


def _log_start(
    run: Run, cfg: DPConfig, data: Dataset, world: int, private: PrivateTraining | None
) -> None:
    """What the run is about to do, and the warning of releases epsilon does not cover."""
    if cfg.releases_unaccounted_diagnostics:
        run.log.warning(UNACCOUNTED_NOTE)
        run.update_metrics(
            unaccounted_diagnostics={
                "covered_by_epsilon": False,
                "files": [ALIGNMENT],
                "history_key": "alignment",
                "note": UNACCOUNTED_NOTE,
            }
        )
    run.log.info(
        "dp-train %s on %s: %d train samples, %d groups, world size %d%s",
        cfg.method,
        cfg.data,
        len(data.train),
        len(data.group_names),
        world,
        f", noise multiplier {private.noise_multiplier:.4f}, sample rate {private.sample_rate:.5f}"
        if private
        else "",
    )


def _epoch_record(
    run: Run,
    cfg: DPConfig,
    model: nn.Module,
    data: Dataset,
    private: PrivateTraining | None,
    record: dict,
    epoch: int,
) -> dict:
    """The epoch's history entry: training numbers, test accuracy per group and, for a
    private run, epsilon spent so far; the alignment measurements go to their own file."""
    measured = record.pop("_measured")
    if measured:
        path = run.file(ALIGNMENT)
        previous = json.loads(path.read_text()) if path.exists() else []
        run.write_json(ALIGNMENT, [m for m in previous if m["epoch"] <= epoch] + measured)
    test = evaluate(model, data, "test")
    record |= {
        "test_accuracy": test.accuracy,
        "test_groups": {r.name: r.accuracy for r in test.groups},
    }
    if private:
        record |= {"epsilon": private.ledger.epsilon(cfg.delta), "rule_state": private.rule.state()}
    run.log.info(
        "epoch %d: loss %.4f, test %.4f%s, %.0f samples/s",
        epoch + 1,
        record["train_loss"],
        test.accuracy,
        f", epsilon {record['epsilon']:.3f}" if private else "",
        record["samples_per_s"],
    )
    return record


TRAINING_STATISTICS_NOTE = (
    "the per-group training counts and the per-epoch training loss in metrics.json are exact "
    "statistics of the private training data: epsilon does not cover them. Publish the release/ "
    "folder (the model, the privacy ledger and test metrics), not the run folder"
)
RELEASE = "release"


def _write_release(run: Run, metrics: dict) -> None:
    """``release/``: what epsilon covers, or what is public: the model (trained with DP-SGD),
    the privacy ledger and the test-set metrics. Nothing else of the run goes in."""
    folder = run.file(RELEASE)
    folder.mkdir(exist_ok=True)
    atomic_copy(run.file(MODEL), folder / MODEL)
    privacy_keys = ("method", "epsilon", "delta", "noise_multiplier", "sample_rate", "steps")
    atomic_write_json(
        folder / "privacy.json",
        {k: metrics[k] for k in privacy_keys} | {"releases": metrics["releases"]},
    )
    test_keys = ("model", "test", "test_accuracy", "test_groups")
    atomic_write_json(folder / "test.json", {k: metrics[k] for k in test_keys})


VALIDATION_NOTE = (
    "validation metrics are exact statistics of the validation split, which is held out of the "
    "private training data: epsilon does not cover them; use them to tune, do not release them"
)


def _accuracy_gap(report: dict, minority: set[str]) -> float | None:
    """Majority minus minority accuracy, each side weighted by size (the minority's error minus
    the majority's, :func:`~pifair.fairness.audit.minority_gap`); None without both sides."""
    groups = [g for g in report["groups"] if g["count"]]
    return minority_gap(
        [1.0 - g["accuracy"] for g in groups],
        [g["count"] for g in groups],
        [g["name"] in minority for g in groups],
    )


def _check_baseline(path: str) -> None:
    base = Run.open(path)
    if base.config.get("command") != "dp-train" or "test_groups" not in base.metrics:
        raise ConfigError(
            f"--baseline {path} is not a finished dp-train run; train one with "
            f"`pifair dp-train --method nonprivate` on the same data first"
        )


def _finish(
    cfg: DPConfig, run: Run, model: nn.Module, data: Dataset, history: list[dict], private, **extra
) -> None:
    test = evaluate(model, data, "test")
    save_trained_model(run, model, cfg, data)
    metrics = {
        "kind": "dp-train",
        "method": cfg.method,
        "model": cfg.model,
        "data": data.summary(),
        "history": history,
        "test": test.as_dict(),
        "test_accuracy": test.accuracy,
        "test_groups": {r.name: r.accuracy for r in test.groups},
        "samples_per_s": sum(h["samples"] for h in history)
        / max(sum(h["seconds"] for h in history), 1e-9),
        **extra,
    }
    if private:
        metrics |= {
            "epsilon": private.ledger.epsilon(cfg.delta),
            "delta": cfg.delta,
            "noise_multiplier": private.noise_multiplier,
            "sample_rate": private.sample_rate,
            "steps": private.steps_per_epoch * cfg.epochs,
            "releases": private.ledger.state(),
            "rule_state": private.rule.state(),
            "grad_path": private.grad_path,
        }
    minority = {data.group_names[g] for g in minority_groups(data)}
    if len(data.val):  # a held-out split of the training set: what tuning selects on
        val = evaluate(model, data, "val")
        metrics |= {
            "val": val.as_dict(),
            "val_accuracy": val.accuracy,
            "val_worst_group_accuracy": val.worst_group_accuracy,
            "val_minority_majority_gap": _accuracy_gap(val.as_dict(), minority),
            "minority_groups": sorted(minority),
        }
        if private:  # the validation split is private training data held out: not DP
            metrics["unaccounted_validation"] = {
                "covered_by_epsilon": False,
                "keys": ["val", "val_accuracy", "val_worst_group_accuracy"]
                + ["val_minority_majority_gap"],
                "note": VALIDATION_NOTE,
            }
    if cfg.baseline:
        base = Run.open(cfg.baseline).metrics
        metrics |= {"baseline": cfg.baseline} | privacy_cost_summary(
            base["test"], metrics["test"], minority
        )
    if private:
        metrics["unaccounted_training_statistics"] = {
            "covered_by_epsilon": False,
            "keys": ["data.train_groups", "data.sizes", "history[].train_loss"],
            "note": TRAINING_STATISTICS_NOTE,
        }
    metrics = run.update_metrics(**metrics)
    if private:
        _write_release(run, metrics)
    plots.dp_curves(history, run.file("dp_curves.png"), title=f"{cfg.method} on {cfg.data}")
    plots.group_accuracy(
        test.as_dict(), run.file("groups.png"), title=f"test accuracy per group, {cfg.method}"
    )
    run.log.info("test accuracy %.4f\n%s", test.accuracy, test.table())
