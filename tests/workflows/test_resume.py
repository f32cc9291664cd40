"""A run killed mid-way and resumed ends with the same weights as the run that was never
interrupted, and resumes rather than starting over (it trains only the epochs the killed run
did not finish): train, linearize, share, polyfit and mitigate (dp-train: tests/dp)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pifair.models.io import load_model
from pifair.reduce import FinetuneSettings
from pifair.reduce.snl import SearchSettings
from pifair.runs import Run
from pifair.training import TrainConfig
from pifair.workflows.fairness import MitigateJob, run_mitigate
from pifair.workflows.linearize import LinearizeJob, run_linearize
from pifair.workflows.polyfit import PolyfitJob, run_polyfit
from pifair.workflows.share import ShareJob, run_share
from pifair.workflows.train import train

FINETUNE = FinetuneSettings(epochs=3, batch_size=64, lr=0.02)


@pytest.fixture(scope="module")
def dense(digits_mlp_run) -> Path:
    return digits_mlp_run


def _killed_in_epoch(monkeypatch, epoch: int):
    """Ctrl-C in epoch ``epoch``: the checkpoints of the epochs before it are written."""
    real, calls = Run.save_checkpoint, {"n": 0}

    def save(self, state, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt
        return real(self, state, *args, **kwargs)

    monkeypatch.setattr(Run, "save_checkpoint", save)
    return lambda: monkeypatch.setattr(Run, "save_checkpoint", real)


def _same_weights(a: Path, b: Path) -> None:
    wa, _ = load_model(a / "model.pt")
    wb, _ = load_model(b / "model.pt")
    sa, sb = wa.state_dict(), wb.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _epochs_saved(monkeypatch, run) -> int:
    """How many epoch checkpoints ``run()`` writes."""
    real, calls = Run.save_checkpoint, {"n": 0}

    def save(self, state, *args, **kwargs):
        calls["n"] += 1
        return real(self, state, *args, **kwargs)

    monkeypatch.setattr(Run, "save_checkpoint", save)
    try:
        run()
    finally:
        monkeypatch.setattr(Run, "save_checkpoint", real)
    return calls["n"]


def _kill_and_resume(monkeypatch, tmp_path, start, resume) -> tuple[Path, Path]:
    whole = _epochs_saved(monkeypatch, lambda: start(tmp_path / "whole"))
    restore = _killed_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        start(tmp_path / "killed")
    restore()
    assert not (tmp_path / "killed" / "model.pt").exists()
    resumed = _epochs_saved(monkeypatch, lambda: resume(tmp_path / "killed"))
    # the killed run finished epoch 1: a resume trains the rest, a restart would train them all
    assert resumed == whole - 1, (whole, resumed)
    return tmp_path / "whole", tmp_path / "killed"


def test_train(monkeypatch, tmp_path):
    cfg = TrainConfig(data="digits", model="mlp", epochs=3, lr=0.05, batch_size=64, device="cpu")
    whole, killed = _kill_and_resume(
        monkeypatch,
        tmp_path,
        lambda out: train(cfg, out=out, progress=False),
        lambda out: train(cfg, out=out, resume=True, progress=False),
    )
    _same_weights(whole, killed)
    assert "resumed from epoch 1" in (killed / "log.txt").read_text()


def _linearize_job(dense: Path) -> LinearizeJob:
    search = SearchSettings(max_epochs=2, batch_size=64, lambda_init=1e-3, mask_lr=0.02)
    return LinearizeJob(
        from_run=str(dense),
        budgets=["300"],
        methods=["snl"],
        search=search,
        finetune=FINETUNE,
        device="cpu",
    )


def test_linearize(monkeypatch, tmp_path, dense):
    job = _linearize_job(dense)
    whole, killed = _kill_and_resume(
        monkeypatch,
        tmp_path,
        lambda out: run_linearize(job, out=out, progress=False),
        lambda out: run_linearize(job, out=out, resume=True, progress=False),
    )
    _same_weights(whole, killed)


def test_share(monkeypatch, tmp_path, dense):
    job = ShareJob(
        from_run=str(dense), budget="300", scheme="cluster", finetune=FINETUNE, device="cpu"
    )
    whole, killed = _kill_and_resume(
        monkeypatch,
        tmp_path,
        lambda out: run_share(job, out=out, progress=False),
        lambda out: run_share(job, out=out, resume=True, progress=False),
    )
    _same_weights(whole, killed)


def test_polyfit(monkeypatch, tmp_path, dense):
    job = PolyfitJob(from_run=str(dense), finetune=FINETUNE, device="cpu")
    whole, killed = _kill_and_resume(
        monkeypatch,
        tmp_path,
        lambda out: run_polyfit(job, out=out, progress=False),
        lambda out: run_polyfit(job, out=out, resume=True, progress=False),
    )
    _same_weights(whole, killed)


def test_mitigate(monkeypatch, tmp_path, dense):
    reduced = tmp_path / "reduced"
    run_linearize(_linearize_job(dense), out=reduced, progress=False)
    whole, killed = _kill_and_resume(
        monkeypatch,
        tmp_path,
        lambda out: run_mitigate(MitigateJob(str(reduced)), out=out, progress=False),
        lambda out: run_mitigate(MitigateJob(str(reduced)), out=out, resume=True, progress=False),
    )
    _same_weights(whole, killed)
    assert Run.open(killed).config["finetune"]["objective"] == "constrained"
