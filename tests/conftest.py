"""Shared fixtures: small real data (scikit-learn digits) and temporary run folders."""

from __future__ import annotations

import pytest

from pifair.data import load_dataset
from pifair.training import TrainConfig
from pifair.workflows.train import train


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits: real images, small enough for every test."""
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def digits_lenet(digits):
    """The digits LeNet (16 and 32 channels, 1,664 ReLUs) trained 3 epochs: the dense parent of
    the reduction tests. Read it; deepcopy it to change it."""
    import torch
    import torch.nn.functional as F

    from pifair.models import create_model
    from pifair.training import LoopSettings, fit

    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10, input_shape=(1, 8, 8))
    fit(
        model,
        digits,
        LoopSettings(epochs=3, batch_size=64, lr=0.05, progress=False),
        loss_fn=lambda logits, y, x, g: F.cross_entropy(logits, y),
    )
    return model.eval()


@pytest.fixture(autouse=True)
def _quiet_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PIFAIR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def digits_mlp_run(tmp_path_factory):
    """A finished ``pifair train`` run folder: the digits MLP, 2 epochs. Read it; copy it to
    change it."""
    out = tmp_path_factory.mktemp("dense") / "run"
    cfg = TrainConfig(data="digits", model="mlp", epochs=2, lr=0.05, batch_size=64, device="cpu")
    train(cfg, out=out, progress=False)
    return out
