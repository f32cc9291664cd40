"""``pifair cost``: DELPHI's and calibrated Cheetah's per-image cost of any model."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from ..models import create_model
from ..runs import Run
from ..secure.cost import DEFAULT_CALIBRATION, CheetahModel, ModelWork, model_cost, model_work
from .train import load_from_run

__all__ = ["estimate_cost", "calibrate_cheetah", "calibration_sample"]


def _model_of(run: str | os.PathLike):
    model, record, _ = load_from_run(run)
    return model, tuple(record["input_shape"]), record["model"]


def calibration_sample(mpc_run: str | os.PathLike) -> tuple[ModelWork, dict]:
    """The work of a finished Cheetah ``mpc-infer`` run's model and its measured per-image costs."""
    run = Run.open(mpc_run)
    m = run.metrics
    if m.get("kind") != "mpc-infer" or not m.get("per_image"):
        raise ConfigError(f"{mpc_run} is not a finished pifair mpc-infer run with a profile")
    if m["protocol"] != "cheetah":
        raise ConfigError(
            f"{mpc_run} ran {m['protocol']}; the Cheetah model is calibrated on cheetah runs"
        )
    parent = run.parent()
    if parent is None:
        raise ConfigError(f"{mpc_run} names no parent model run ('from' in its config.yaml)")
    model, shape, _ = _model_of(parent)
    return model_work(model, shape), m["per_image"]


def calibrate_cheetah(
    mpc_runs: list[str | os.PathLike], provenance: dict | None = None
) -> CheetahModel:
    """Fit the Cheetah model on finished ``pifair mpc-infer`` runs under Cheetah."""
    samples = [calibration_sample(p) for p in mpc_runs]
    return CheetahModel.fit(samples, provenance or {"runs": [str(p) for p in mpc_runs]})


def estimate_cost(
    *,
    run: str | os.PathLike | None = None,
    model_name: str | None = None,
    input_shape: tuple[int, ...] = (3, 32, 32),
    num_classes: int = 10,
    cores: int = 1,
    calibration: str | os.PathLike | None = None,
    calibrate: list[str | os.PathLike] | None = None,
) -> dict:
    """Work, DELPHI estimate and Cheetah estimate for a run's model or a zoo model."""
    if run is not None:
        model, input_shape, name = _model_of(run)
        name = f"{name} ({run})"
    elif model_name is not None:
        model, name = (
            create_model(model_name, num_classes=num_classes, input_shape=input_shape),
            model_name,
        )
    else:
        raise ConfigError("give a run folder or --model NAME")
    if calibrate:
        cheetah = calibrate_cheetah(calibrate)
        source = f"fitted on {', '.join(map(str, calibrate))}"
    else:
        cheetah = CheetahModel.load(calibration or DEFAULT_CALIBRATION)
        prov = cheetah.provenance
        where = prov.get("machine", "?") + (
            f", commit {prov['commit']}" if "commit" in prov else ""
        )
        source = f"{Path(calibration or DEFAULT_CALIBRATION).name} (measured on {where})"
    cost = model_cost(model.eval(), input_shape, cores=cores, cheetah=cheetah)
    return {"model": name, **cost, "calibration": source}
