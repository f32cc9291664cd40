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
