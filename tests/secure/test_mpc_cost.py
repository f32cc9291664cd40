"""Cost models: DELPHI's per-ReLU arithmetic, linear work by hand count, the Cheetah fit, the
shipped calibration and ``pifair cost``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

# named test_mpc_*: it imports JAX, so it runs after the HE tests, whose workers are forked
pytest.importorskip("jax")

from pifair.cli import main
from pifair.errors import ConfigError
from pifair.relu.sites import DenseReLU, MaskedReLU
from pifair.secure.cost import (
    DEFAULT_CALIBRATION,
    DELPHI,
    CheetahModel,
    LinearWork,
    ModelWork,
    linear_work,
)


def test_delphi_costs_are_per_relu_and_split_over_cores():
    est = DELPHI.estimate(1000)
    assert est["offline_bytes"] == pytest.approx(1000 * 17.07 * 1024)
    assert est["online_bytes"] == pytest.approx(1000 * 1.18 * 1024)
    assert est["offline_seconds"] == pytest.approx(0.104) and est[
        "online_seconds"
    ] == pytest.approx(0.054)
    assert DELPHI.estimate(1000, cores=4)["online_seconds"] == pytest.approx(0.054 / 4)
    with pytest.raises(ValueError, match="relus must be >= 0"):
        DELPHI.estimate(-1)


def test_linear_work_matches_a_hand_count():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), DenseReLU(), nn.Flatten(), nn.Linear(18, 4))
    work = linear_work(model, (1, 5, 5))
    # conv: 2x3x3 outputs of 9 MACs each; linear: 18 x 4
    assert work == LinearWork(
        macs=18 * 9 + 72, io_elements=(25 + 18) + (18 + 4), weights=18 + 72, layers=2
    )


def _per_image(cmp: float, mul: float, lin: float, seconds: float = 1.0) -> dict:
    cats = {
        "comparison": (cmp, seconds),
        "multiplication": (mul, seconds),
        "linear": (lin, seconds),
        "data movement": (0, 0),
    }
    return {
        "by_category": {k: {"bytes": b, "seconds": s, "messages": 0} for k, (b, s) in cats.items()}
    }


def test_cheetah_fit_recovers_per_comparison_costs_and_reproduces_its_samples():
    lin_a, lin_b = LinearWork(100, 1000, 50, 2), LinearWork(400, 3000, 500, 3)
    samples = [
        (ModelWork(1000, 1000, 0, lin_a), _per_image(80_000, 17_000, 2_000_000)),
        (ModelWork(100, 100, 0, lin_a), _per_image(8_000, 1_700, 2_000_000)),
        (ModelWork(0, 0, 300, lin_b), _per_image(0, 90_000, 5_000_000)),
    ]
    model = CheetahModel.fit(samples, {"machine": "test"})
    assert model.bytes_per_comparison == pytest.approx(80.0)
    assert model.bytes_per_mux == pytest.approx(
        17.0
    ) and model.bytes_per_poly_product == pytest.approx(300.0)
    for row in model.check(samples):
        assert row["estimated_bytes"] == pytest.approx(row["measured_bytes"], rel=1e-6)
    one = CheetahModel.fit(samples[:1])
    assert math.isnan(one.bytes_per_poly_product)  # nothing to fit it on
    # a figure the model does not need counts zero, not NaN (a ReLU model on one ReLU run)
    assert one.estimate(samples[1][0])["bytes"] == pytest.approx(8_000 + 1_700 + 2_000_000)
    with pytest.raises(ConfigError, match="no figure for polynomial products"):
        one.estimate(samples[2][0])  # a polynomial model on that calibration


def test_shipped_calibration_says_where_it_was_measured(tmp_path):
    model = CheetahModel.load()
    assert DEFAULT_CALIBRATION.exists()
    assert {"machine", "commit", "command"} <= set(model.provenance)
    assert "+dirty" not in model.provenance["commit"]  # measured by committed code
    # it reproduces its own calibration runs: bytes within 5 %
    for row in model.provenance["check"]:
        assert row["estimated_bytes"] == pytest.approx(row["measured_bytes"], rel=0.05), row[
            "model"
        ]
    model.save(tmp_path / "c.json")
    assert CheetahModel.load(tmp_path / "c.json") == model
    with pytest.raises(ConfigError, match="write-calibration"):
        CheetahModel.load(tmp_path / "missing.json")
    (tmp_path / "foreign.json").write_text('{"a": 1}')
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    for name in ("foreign.json", "binary.json"):
        with pytest.raises(ConfigError, match="not a Cheetah calibration file"):
            CheetahModel.load(tmp_path / name)


def test_cost_command_for_a_zoo_model_and_a_masked_model(capsys, tmp_path):
    assert main(["cost", "--model", "resnet18", "--input-shape", "3,32,32"]) == 0
    out = capsys.readouterr().out
    assert "557,056 ReLUs" in out
    assert f"{557056 * 17.07 * 1024 / 1e6:,.2f}" in out  # DELPHI offline MB
    # a masked model: DELPHI counts the kept ReLUs only
    from pifair.secure.cost import model_work

    torch.manual_seed(0)
    mask = torch.zeros(2, 3, 3)
    mask[0, 0, :2] = 1
    masked = nn.Sequential(nn.Conv2d(1, 2, 3), MaskedReLU(mask), nn.Flatten(), nn.Linear(18, 4))
    masked[1].feature_shape = (2, 3, 3)
    assert model_work(masked, (1, 5, 5)).relus == 2
    assert main(["cost"]) == 2
