"""``pifair sweep dp-train``: the grid's runs differ only in lr and clip bound, the selection
reads the validation split only, and picks the point a hand computation picks."""

from __future__ import annotations

import math

import pytest

from pifair import DPConfig
from pifair.cli import main
from pifair.errors import ConfigError, ResumeMismatchError
from pifair.runs import Run
from pifair.workflows.dp_sweep import (
    DPSweepJob,
    grid_configs,
    run_dp_sweep,
    select_point,
    validation_view,
)

pytest.importorskip("opacus")


class PoisonedTestSplit(dict):
    """Metrics whose test entries fail when read: a selection that looks at them fails."""

    def __getitem__(self, key):
        if not str(key).startswith("val"):
            raise AssertionError(f"the selection read {key!r}")
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default


def _metrics(val: float, worst: float, test: float) -> PoisonedTestSplit:
    return PoisonedTestSplit(
        val_accuracy=val,
        val_worst_group_accuracy=worst,
        test_accuracy=test,
        test={"worst_group_accuracy": test},
    )


def test_selection_reads_validation_only_and_picks_by_hand():
    # the test split prefers point c everywhere; validation prefers b (accuracy), a (worst group)
    runs = {
        "a": _metrics(0.80, 0.60, 0.50),
        "b": _metrics(0.85, 0.40, 0.51),
        "c": _metrics(0.70, 0.30, 0.99),
        "d": _metrics(float("nan"), float("nan"), 1.0),  # a diverged run is never chosen
    }
    views = {name: validation_view(m) for name, m in runs.items()}
    assert all(not k.startswith("test") for v in views.values() for k in v)
    assert select_point(views, "accuracy") == "b"
    assert select_point(views, "worst-group") == "a"
    assert select_point({"x": {"val_accuracy": 0.5}, "y": {"val_accuracy": 0.5}}, "accuracy") == "x"
    with pytest.raises(ConfigError, match="finite"):
        select_point({"d": views["d"]}, "accuracy")
    with pytest.raises(AssertionError, match="read 'test_accuracy'"):
        runs["a"]["test_accuracy"]  # the poison works


def test_grid_varies_only_lr_and_the_methods_bound():
    base = DPConfig(data="digits", model="mlp", method="global-adapt", epsilon=3.0, delta=1e-5,
                    epochs=2, val_fraction=0.1)  # fmt: skip
    grid = grid_configs(base, [0.01, 0.1, 1.0], [50.0, 100.0])
    assert list(grid) == [f"lr{lr}-clip{z}" for lr in ("0.01", "0.1", "1") for z in ("50", "100")]
    fixed = {k: v for k, v in base.as_dict().items() if k not in ("lr", "z")}
    for cfg in grid.values():
        assert {k: v for k, v in cfg.as_dict().items() if k not in ("lr", "z")} == fixed
        assert cfg.clip == base.clip  # Global-Adapt's grid moves Z, not C
    nonprivate = grid_configs(DPConfig(data="digits", method="nonprivate", val_fraction=0.1),
                              [0.1, 1.0], [0.5])  # fmt: skip
    assert list(nonprivate) == ["lr0.1", "lr1"]
    with pytest.raises(ConfigError, match="val-fraction"):
        grid_configs(DPConfig(data="digits", method="dpsgd", epsilon=3.0), [0.1], [1.0])


@pytest.mark.slow
def test_sweep_runs_the_grid_and_selects_the_best_validation_point(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "dp-train", "--data", "digits", "--model", "mlp", "--method", "dpsgd",
            "--epsilon", "3", "--delta", "1e-5", "--epochs", "1", "--lr", "0.1,1",
            "--clip", "0.5,2", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    m = Run.open(out).metrics
    assert m["points"] == 4 and len(m["rows"]) == 4
    best = max(m["rows"], key=lambda r: r["val_accuracy"])  # by hand, from the table
    assert m["selected"]["accuracy"]["point"] == best["point"]
    configs = [Run.open(out / r["point"]).config for r in m["rows"]]
    for key in ("epochs", "batch_size", "epsilon", "delta", "val_fraction", "seed", "method"):
        assert len({c[key] for c in configs}) == 1, key
    assert {(c["lr"], c["clip"]) for c in configs} == {
        (0.1, 0.5),
        (0.1, 2.0),
        (1.0, 0.5),
        (1.0, 2.0),
    }
    assert all(c["val_fraction"] == 0.1 for c in configs)
    for r in m["rows"]:  # validation numbers of a private run are named as not DP
        flag = Run.open(out / r["point"]).metrics["unaccounted_validation"]
        assert flag["covered_by_epsilon"] is False and "val_accuracy" in flag["keys"]
    eps = [Run.open(out / r["point"]).metrics["epsilon"] for r in m["rows"]]
    assert max(eps) <= 3.0 and max(eps) - min(eps) < 1e-9  # the same privacy level everywhere
    assert (out / "grid.png").exists() and (out / "grid.csv").exists()
    assert "not account" in capsys.readouterr().out
    # resumable: a second call trains nothing and selects the same point
    before = {r["point"]: (out / r["point"] / "model.pt").stat().st_mtime for r in m["rows"]}
    assert main(argv) == 0
    after = {p: (out / p / "model.pt").stat().st_mtime for p in before}
    assert before == after
    assert Run.open(out).metrics["selected"]["accuracy"]["point"] == best["point"]
    assert math.isfinite(m["selected"]["accuracy"]["test_accuracy"])
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "Not covered by epsilon" in page and best["point"] in page


def test_sweep_refuses_other_settings_in_the_same_folder(tmp_path):
    base = DPConfig(data="digits", model="mlp", method="dpsgd", epsilon=3.0, delta=1e-5,
                    epochs=1, val_fraction=0.1)  # fmt: skip
    out = tmp_path / "sweep"
    run_dp_sweep(DPSweepJob(base=base, lrs=[1.0], bounds=[1.0]), out=out, progress=False)
    with pytest.raises(ResumeMismatchError, match="lrs: saved"):
        run_dp_sweep(DPSweepJob(base=base, lrs=[0.5], bounds=[1.0]), out=out, progress=False)
