"""Shared fixtures: small real data (scikit-learn digits) and temporary run folders."""

from __future__ import annotations

import pytest

from pifair.data import load_dataset


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits: real images, small enough for every test."""
    return load_dataset("digits", seed=0)


@pytest.fixture(autouse=True)
def _quiet_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PIFAIR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
