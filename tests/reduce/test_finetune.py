"""The one fine-tuning step: every reduction (linearize, share, polyfit) reads every
FinetuneSettings field. Before there was one step, share and polyfit silently ignored
``recalibrate_bn=False``, ``select_by="fair"`` and ``start_candidate``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import torch

import pifair
from pifair import FinetuneSettings, ReductionResult
from pifair.training import evaluate

REDUCTIONS: dict[str, Callable[..., ReductionResult]] = {
    "linearize": lambda dense, data, ft: pifair.linearize(
        dense, data, 300, method="naive", finetune=ft, progress=False
    ),
    "share": lambda dense, data, ft: pifair.share(dense, data, 300, finetune=ft, progress=False),
    "polyfit": lambda dense, data, ft: pifair.polyfit(dense, data, finetune=ft, progress=False),
}
# a fine-tuning that wrecks the model: huge learning rate and weight decay
WRECK = FinetuneSettings(epochs=1, batch_size=64, lr=2.0, weight_decay=0.5)


def _bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_recalibrate_bn_false_keeps_the_parents_statistics(reduction, digits, digits_lenet):
    reduce = REDUCTIONS[reduction]
    parent = _bn_buffers(digits_lenet)
    assert parent, "the test model needs batch norm"
    kept = _bn_buffers(
        reduce(digits_lenet, digits, FinetuneSettings(epochs=0, recalibrate_bn=False)).model
    )
    redone = _bn_buffers(reduce(digits_lenet, digits, FinetuneSettings(epochs=0)).model)
    for name, value in parent.items():
        torch.testing.assert_close(kept[name], value)
    assert any(not torch.allclose(redone[n], v) for n, v in parent.items())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_select_by_fair_picks_the_epoch_by_the_gap_penalised_score(reduction, digits, digits_lenet):
    settings = FinetuneSettings(epochs=3, batch_size=64, lr=0.05, select_by="fair")
    result = REDUCTIONS[reduction](digits_lenet, digits, settings)
    scores = [h["val_score"] for h in result.history]  # absent when selecting by accuracy
    chosen = [h["epoch"] for h in result.history if h["selected"]]
    assert chosen == [result.history[scores.index(max(scores))]["epoch"]]
    for h in result.history:  # accuracy minus |gap|: never above the accuracy
        assert h["val_score"] <= h["val_accuracy"] + 1e-12
    plain = REDUCTIONS[reduction](digits_lenet, digits, replace(settings, select_by="accuracy"))
    assert all("val_score" not in h for h in plain.history)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_start_candidate_keeps_the_model_before_a_wrecking_fine_tuning(
    reduction, digits, digits_lenet
):
    reduce = REDUCTIONS[reduction]
    kept = reduce(digits_lenet, digits, replace(WRECK, start_candidate=True))
    assert kept.kept_before_finetune and not any(h["selected"] for h in kept.history)
    assert kept.val_accuracy_before_finetune is not None
    assert evaluate(kept.model, digits, "val").accuracy == pytest.approx(
        kept.val_accuracy_before_finetune
    )
    lost = reduce(digits_lenet, digits, replace(WRECK, start_candidate=False))
    assert not lost.kept_before_finetune
    assert evaluate(lost.model, digits, "val").accuracy < kept.val_accuracy_before_finetune
