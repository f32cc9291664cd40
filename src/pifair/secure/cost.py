"""What a model would cost under private inference, without running it.

Two models:

* :data:`DELPHI` -- the analytic garbled-circuit model that SNL-style papers report (DELPHI,
  Mishra et al. 2020; per-ReLU figures of the CryptoNite artifact): 17.07 KB of garbled
  circuit per ReLU sent offline, 1.18 KB of wire labels online, 0.104 ms to garble and
  0.054 ms to evaluate per ReLU on one core. It counts ReLUs only: DELPHI's linear layers are
  preprocessed with HE offline and cost little online. KB is read as 1,024 bytes.
* :class:`CheetahModel` -- first-order costs of *this* engine (SPU's Cheetah), calibrated from
  ``pifair mpc-infer`` runs: bytes and seconds per comparison and per secret product (from
  SPU's per-op profile), and the linear layers' bytes and seconds as a non-negative fit on
  their count, elements in and out, weights and multiply-accumulates (under SPU the weights
  are secret shares too, so their HE ciphertexts travel). Its default calibration ships with pifair
  and says on which machine and commit it was measured; ``benchmarks/mpc.py --write-calibration``
  measures a new one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write_json
from ..config_types import settings_from_dict
from ..errors import ConfigError
from .mpc.export import export_model

__all__ = [
    "GarbledCircuitModel",
    "model_cost",
    "DELPHI",
    "LinearWork",
    "linear_work",
    "CheetahModel",
    "DEFAULT_CALIBRATION",
    "ModelWork",
    "model_work",
]

KB = 1024
DEFAULT_CALIBRATION = Path(__file__).with_name("cheetah_calibration.json")


@dataclass(frozen=True)
class GarbledCircuitModel:
    """Per-ReLU costs of a garbled-circuit ReLU protocol."""

    name: str
    offline_bytes_per_relu: float
    online_bytes_per_relu: float
    garble_ms_per_relu: float  # offline, one core
    evaluate_ms_per_relu: float  # online, one core
    source: str

    def estimate(self, relus: int, *, cores: int = 1) -> dict[str, float]:
        """Bytes and seconds for ``relus`` ReLUs with the work spread over ``cores``."""
        if relus < 0:
            raise ConfigError(f"relus must be >= 0, got {relus}")
        if cores < 1:
            raise ConfigError(f"cores must be >= 1, got {cores}")
        return {
            "relus": relus,
            "cores": cores,
            "offline_bytes": relus * self.offline_bytes_per_relu,
            "online_bytes": relus * self.online_bytes_per_relu,
            "offline_seconds": relus * self.garble_ms_per_relu / 1000 / cores,
            "online_seconds": relus * self.evaluate_ms_per_relu / 1000 / cores,
        }


DELPHI = GarbledCircuitModel(
    "DELPHI (garbled circuits)",
    17.07 * KB,
    1.18 * KB,
    0.104,
    0.054,
    "DELPHI (Mishra et al. 2020) per-ReLU costs as used by SNL-style papers (CryptoNite artifact)",
)


@dataclass(frozen=True)
class LinearWork:
    """Convolutions and linear layers: multiply-accumulates, elements in and out, weights."""

    macs: int = 0
    io_elements: int = 0
    weights: int = 0
    layers: int = 0

    def features(self) -> list[float]:
        """What the Cheetah model's linear part is linear in: under SPU both the image and
        the weights are secret shares, so each layer sends HE ciphertexts of the inputs, the
        outputs and the weight shares, with a floor of a few ciphertexts per layer."""
        return [self.layers, self.io_elements, self.weights, self.macs]


def linear_work(model: nn.Module, input_shape: tuple[int, ...]) -> LinearWork:
    """Per-image linear work of ``model``, from one forward pass with hooks."""
    totals = {"macs": 0, "io": 0, "weights": 0, "layers": 0}

    def hook(module, inputs, output):
        x = inputs[0]
        per_in, per_out = x[0].numel(), output[0].numel()
        if isinstance(module, nn.Conv2d):
            k = module.weight[0].numel()  # (in / groups) * kh * kw
            macs = per_out * k
        else:
            macs = module.in_features * module.out_features
        totals["macs"] += macs
        totals["io"] += per_in + per_out
        totals["weights"] += module.weight.numel()
        totals["layers"] += 1

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return LinearWork(totals["macs"], totals["io"], totals["weights"], totals["layers"])


@dataclass(frozen=True)
class ModelWork:
    """What the cost models need to know of a model, per image."""

    relus: int  # comparisons (DReLUs): kept ReLUs, shared decisions
    muxes: int  # bit-times-secret products that apply the comparisons' bits
    poly_products: int  # secret-times-secret products of polynomial sites
    linear: LinearWork


def model_work(model: nn.Module, input_shape: tuple[int, ...]) -> ModelWork:
    """Comparisons and products from the MPC export's site list, linear work from hooks."""
    exported = export_model(model, input_shape, check=False)
    return ModelWork(
        exported.comparisons,
        exported.muxes,
        exported.poly_products,
        linear_work(model, input_shape),
    )


def _linear_fit(samples: list[tuple[ModelWork, dict]]) -> tuple[list[float], list[float]]:
    """Non-negative least squares of the linear category's bytes and seconds on the layer
    features, each feature scaled to unit size first so that none dominates the fit."""
    from scipy.optimize import nnls

    a = np.array([w.linear.features() for w, _ in samples], dtype=np.float64)
    scale = np.where(a.max(axis=0) > 0, a.max(axis=0), 1.0)
    coefs = []
    for key in ("bytes", "seconds"):
        b = np.array([p["by_category"]["linear"][key] for _, p in samples], dtype=np.float64)
        x, _ = nnls(a / scale, b)
        coefs.append((x / scale).tolist())
    return coefs[0], coefs[1]


def _cost_of(count: int, per_bytes: float, per_second: float, what: str) -> tuple[float, float]:
    """(bytes, seconds) of ``count`` operations at the fitted per-operation figures."""
    if count == 0:
        return 0.0, 0.0
    if math.isnan(per_bytes) or math.isnan(per_second):
        raise ConfigError(
            f"this Cheetah calibration has no figure for {what} (none of its runs measured "
            f"them apart); add an mpc-infer run of a model with {what} to --calibrate, or use "
            "the shipped calibration"
        )
    return count * per_bytes, count * per_second


@dataclass
class CheetahModel:
    """First-order per-image costs of SPU's Cheetah, fitted on measured runs."""

    bytes_per_comparison: float
    seconds_per_comparison: float
    bytes_per_mux: float
    seconds_per_mux: float
    bytes_per_poly_product: float
    seconds_per_poly_product: float
    linear_bytes: list[float]  # per layer, io element, weight, MAC (see LinearWork.features)
    linear_seconds: list[float]
    provenance: dict = field(default_factory=dict)

    def estimate(self, work: ModelWork) -> dict[str, float]:
        """Per-image bytes and seconds of ``work``; refused when the work needs a figure this
        calibration has no sample for (NaN): a figure that is not needed counts zero."""
        muxes = (work.muxes, self.bytes_per_mux, self.seconds_per_mux, "multiplexers")
        products = (
            work.poly_products,
            self.bytes_per_poly_product,
            self.seconds_per_poly_product,
            "polynomial products",
        )
        comparisons = (
            work.relus,
            self.bytes_per_comparison,
            self.seconds_per_comparison,
            "comparisons",
        )
        parts = {
            "comparison": _cost_of(*comparisons),
            "multiplication": tuple(
                a + b for a, b in zip(_cost_of(*muxes), _cost_of(*products), strict=True)
            ),
            "linear": (
                float(np.dot(self.linear_bytes, work.linear.features())),
                float(np.dot(self.linear_seconds, work.linear.features())),
            ),
        }
        out = {f"{k}_bytes": b for k, (b, _) in parts.items()} | {
            f"{k}_seconds": s for k, (_, s) in parts.items()
        }
        out["bytes"] = sum(b for b, _ in parts.values())
        out["seconds"] = sum(s for _, s in parts.values())
        return out

    @classmethod
    def fit(
        cls, samples: list[tuple[ModelWork, dict]], provenance: dict | None = None
    ) -> CheetahModel:
        """Ratio estimates (total measured / total work) from ``(work, per_image)`` pairs,
        ``per_image`` being the ``per_image`` block of an mpc-infer run's metrics. Products are
        fitted apart: multiplexers on models without polynomials, polynomial products on
        models without comparisons (a model with both calibrates neither). A figure no
        sample informs is NaN."""
        if not samples:
            raise ConfigError(
                "calibrating the Cheetah model needs at least one measured mpc-infer run"
            )

        def ratio(category: str, key: str, work_of, subset=samples) -> float:
            num = sum(p["by_category"][category][key] for _, p in subset)
            den = sum(work_of(w) for w, _ in subset)
            return num / den if den else math.nan

        relu_only = [s for s in samples if s[0].poly_products == 0]
        poly_only = [s for s in samples if s[0].muxes == 0]
        return cls(
            ratio("comparison", "bytes", lambda w: w.relus),
            ratio("comparison", "seconds", lambda w: w.relus),
            ratio("multiplication", "bytes", lambda w: w.muxes, relu_only),
            ratio("multiplication", "seconds", lambda w: w.muxes, relu_only),
            ratio("multiplication", "bytes", lambda w: w.poly_products, poly_only),
            ratio("multiplication", "seconds", lambda w: w.poly_products, poly_only),
            *_linear_fit(samples),
            provenance or {},
        )

    def check(self, samples: list[tuple[ModelWork, dict]]) -> list[dict]:
        """Estimated against measured bytes and seconds per image, per sample."""
        out = []
        for work, per_image in samples:
            est = self.estimate(work)
            measured_bytes = sum(c["bytes"] for c in per_image["by_category"].values())
            measured_s = sum(c["seconds"] for c in per_image["by_category"].values())
            out.append(
                {
                    "relus": work.relus,
                    "measured_bytes": measured_bytes,
                    "estimated_bytes": est["bytes"],
                    "measured_seconds": measured_s,
                    "estimated_seconds": est["seconds"],
                }
            )
        return out

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike = DEFAULT_CALIBRATION) -> CheetahModel:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"no Cheetah calibration at {path}; measure one with: python benchmarks/mpc.py "
                f"--write-calibration {path}"
            )
        try:
            values = json.loads(path.read_text())
            if not isinstance(values, dict):
                raise ConfigError(f"a mapping of {cls.__name__} fields is needed")
            model: CheetahModel = settings_from_dict(cls, values, ignore=())
            return model
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, ConfigError) as err:
            raise ConfigError(
                f"{path} is not a Cheetah calibration file ({err}); give one written by "
                "python benchmarks/mpc.py --write-calibration"
            ) from err


def model_cost(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    cores: int = 1,
    cheetah: CheetahModel | None = None,
) -> dict:
    """A model's private-inference cost per image, without running any cryptography.

    Parameters
    ----------
    model : nn.Module
        Any pifair model (dense, linearized, shared-ReLU or polynomial), in eval mode.
    input_shape : tuple of int
        Per-sample input shape, e.g. ``(1, 28, 28)``.
    cores : int
        Server cores for DELPHI's garbled-circuit times.
    cheetah : CheetahModel, optional
        A calibration of SPU's Cheetah; default: the one shipped with pifair.

    Returns
    -------
    dict
        ``work`` (comparisons, multiplexers, polynomial products, linear work), ``delphi``
        (garbled circuits, offline and online bytes and seconds) and ``cheetah`` (bytes and
        seconds by category, from the calibration).

    Examples
    --------
    >>> import pifair
    >>> model = pifair.create_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    >>> cost = pifair.cost(model.eval(), (1, 28, 28))
    >>> cost["work"]["relus"]
    18944
    >>> cost["delphi"]["online_bytes"] > cost["cheetah"]["comparison_bytes"]
    True
    """
    work = model_work(model, tuple(input_shape))
    cheetah = cheetah or CheetahModel.load(DEFAULT_CALIBRATION)
    return {
        "work": asdict(work),
        "delphi": DELPHI.estimate(work.relus, cores=cores) | {"source": DELPHI.source},
        "cheetah": cheetah.estimate(work),
    }
