"""Every ``pifair`` command: its flags (from its job dataclass) and what it runs.

A command is a :class:`Command`: ``add`` declares its flags, ``run`` builds the job from
``--resume`` / ``--config`` and the explicit flags, runs the workflow and prints its summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config_types import settings_from_dict
from ..data import list_datasets
from ..demo import run_demo
from ..dp import DPConfig
from ..errors import ConfigError
from ..models import create_model, get_model_spec, list_models
from ..relu import count_relus
from ..report import build_report, default_report_path
from ..runs import Run
from ..secure.he.exchange import serve
from ..training import TrainConfig
from ..workflows.cost import estimate_cost
from ..workflows.dp_sweep import DPSweepJob, run_dp_sweep
from ..workflows.dp_train import dp_train
from ..workflows.evaluate import evaluate_run
from ..workflows.fairness import AuditJob, MitigateJob, run_audit, run_mitigate
from ..workflows.he import HEInferJob, run_he_infer
from ..workflows.import_model import ImportJob, run_import
from ..workflows.linearize import LinearizeJob, run_linearize
from ..workflows.mpc import MPCInferJob, run_mpc_infer
from ..workflows.polyfit import PolyfitJob, run_polyfit
from ..workflows.share import ShareJob, run_share
from ..workflows.sweep import SHARE_METHODS, run_sweep
from ..workflows.train import load_from_run, train
from . import summaries
from .flags import (
    Flag,
    add_flags,
    at_least,
    config_from_flags,
    dataclass_flags,
    require_keys,
    resume_or_config,
    run_folder,
)
from .tables import (
    FINETUNE_FLAGS,
    HE_FLAGS,
    MITIGATE_FLAGS,
    MPC_FLAGS,
    POLYFIT_FLAGS,
    SHARE_FLAGS,
    audit_flags,
    linearize_flags,
)

__all__ = ["COMMANDS", "Command"]


@dataclass(frozen=True)
class Command:
    """One ``pifair`` subcommand."""

    name: str
    help: str
    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    description: str | None = None


def _run_flags(p: argparse.ArgumentParser, what: str, *, config: bool = True) -> None:
    """``--config``, ``--out``, ``--resume``, ``--no-progress`` of a command with a run folder."""
    if config:
        p.add_argument(
            "--config", type=Path, help="config.yaml of an earlier run (flags override it)"
        )
    p.add_argument("--out", type=Path, help=f"run folder (default runs/{what}-TIMESTAMP)")
    p.add_argument("--resume", type=Path, help="continue the killed run in this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


# -- train, dp-train ---------------------------------------------------------------------------


def _add_train(p: argparse.ArgumentParser) -> None:
    add_flags(p, TrainConfig, dataclass_flags(TrainConfig))
    _run_flags(p, "train")


def _run_train(ns: argparse.Namespace) -> None:
    base = config_from_flags(ns, dataclass_flags(TrainConfig), resume_or_config(ns))
    cfg = TrainConfig.from_dict(base)
    run = train(cfg, out=run_folder(ns), resume=ns.resume is not None, progress=not ns.no_progress)
    summaries.train(run)


def _add_dp_train(p: argparse.ArgumentParser) -> None:
    add_flags(p, DPConfig, dataclass_flags(DPConfig))
    _run_flags(p, "dp-train")


def _run_dp_train(ns: argparse.Namespace) -> None:
    base = resume_or_config(ns)
    if "epsilon" in ns or "noise_multiplier" in ns:  # one replaces the other
        base = {k: v for k, v in base.items() if k not in ("epsilon", "noise_multiplier")}
    cfg = DPConfig.from_dict(config_from_flags(ns, dataclass_flags(DPConfig), base))
    run = dp_train(
        cfg, out=run_folder(ns), resume=ns.resume is not None, progress=not ns.no_progress
    )
    if run is not None:  # None on a torchrun rank other than 0
        summaries.dp_train(run)


def _add_import(p: argparse.ArgumentParser) -> None:
    add_flags(p, ImportJob, dataclass_flags(ImportJob))
    p.add_argument("--out", type=Path, help="run folder (default runs/import-TIMESTAMP)")


def _run_import(ns: argparse.Namespace) -> None:
    config = config_from_flags(ns, dataclass_flags(ImportJob), {})
    job = settings_from_dict(ImportJob, config)
    summaries.imported(run_import(job, out=ns.out))


# -- reductions: linearize, sweep, share, polyfit, mitigate --------------------------------------


def _add_linearize(p: argparse.ArgumentParser) -> None:
    add_flags(p, LinearizeJob, linearize_flags(sweep=None))
    _run_flags(p, "linearize")


def _add_sweep(p: argparse.ArgumentParser) -> None:
    sweeps = p.add_subparsers(dest="sweep", required=True, metavar="WHAT")
    for what, text in (
        ("linearize", "SNL (one shared search) and the naive baseline at several budgets"),
        ("share", "ReLU sharing (and SNL) at several budgets, on one Pareto plot"),
    ):
        q = sweeps.add_parser(what, help=text)
        add_flags(q, LinearizeJob, linearize_flags(sweep=what))
        _run_flags(q, "linearize")
    q = sweeps.add_parser(
        "dp-train",
        help="a DP method over a grid of learning rates and clip bounds, picked on validation",
    )
    add_flags(q, DPConfig, _dp_sweep_flags())
    q.add_argument("--lr", type=_floats, default=[0.01, 0.03, 0.1, 0.3, 1.0], help="learning rates")
    q.add_argument(
        "--clip",
        type=_floats,
        default=[],
        help="clip bounds: C, or Z for global and global-adapt (default: the method's)",
    )
    q.add_argument("--out", type=Path, help="sweep folder (default runs/sweep-dp-train-TIMESTAMP)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers like 0.01,0.1,1, got {text!r}"
        ) from None


def _dp_sweep_flags() -> list[Flag]:
    """dp-train's flags but the two the grid sets (--lr, --clip)."""
    return [
        dataclasses.replace(f, default_text="0.1: the sweep selects on it")
        if f.name == "--val-fraction"
        else f
        for f in dataclass_flags(DPConfig)
        if f.name not in ("--lr", "--clip", "--z")
    ]


def _run_dp_sweep(ns: argparse.Namespace) -> None:
    config = config_from_flags(ns, _dp_sweep_flags(), {})
    config.setdefault("val_fraction", 0.1)  # the sweep selects on it
    base = DPConfig.from_dict(config)
    job = DPSweepJob(base=base, lrs=ns.lr, bounds=ns.clip)
    summaries.dp_sweep(run_dp_sweep(job, out=ns.out, progress=not ns.no_progress))


def _linearize_job(ns: argparse.Namespace, sweep: str | None) -> LinearizeJob:
    base = resume_or_config(ns)
    if not base and sweep:
        share = sweep == "share"
        base = {"methods": ["share-patch", "share-cluster", "snl"] if share else ["snl", "naive"]}
    config = config_from_flags(ns, linearize_flags(sweep=sweep), base)
    require_keys(
        config,
        {
            "from": "give --from RUN (the dense model's run folder), or --resume / --config",
            "budgets": "give "
            + ("--budgets 15k,25k,..." if sweep else "--budget N (e.g. 50k or 10%)"),
        },
    )
    methods = config.get("methods", ["snl"])
    if not sweep and len(methods) != 1:
        raise ConfigError("linearize runs one method; use 'pifair sweep linearize' for several")
    unknown = set(methods) - {"snl", "naive", *SHARE_METHODS}
    if unknown:
        known = sorted({"snl", "naive", *SHARE_METHODS})
        raise ConfigError(f"unknown method(s) {sorted(unknown)}; choose from {known}")
    return LinearizeJob.from_config(config)


def _run_linearize(ns: argparse.Namespace) -> None:
    job = _linearize_job(ns, sweep=None)
    run = run_linearize(
        job, out=run_folder(ns), resume=ns.resume is not None, progress=not ns.no_progress
    )
    summaries.linearize(run)


def _run_sweep(ns: argparse.Namespace) -> None:
    if ns.sweep == "dp-train":
        _run_dp_sweep(ns)
        return
    job = _linearize_job(ns, sweep=ns.sweep)
    run = run_sweep(
        job, out=run_folder(ns), resume=ns.resume is not None, progress=not ns.no_progress
    )
    summaries.sweep(run)


def _add_share(p: argparse.ArgumentParser) -> None:
    add_flags(p, ShareJob, SHARE_FLAGS + FINETUNE_FLAGS)
    _run_flags(p, "share")


def _run_share(ns: argparse.Namespace) -> None:
    config = config_from_flags(ns, SHARE_FLAGS + FINETUNE_FLAGS, resume_or_config(ns))
    require_keys(
        config,
        {
            "from": "give --from RUN (the parent model's run folder), or --resume RUN",
            "budget": "give --budget N (e.g. 5k or 1%)",
        },
    )
    run = run_share(
        ShareJob.from_config(config),
        out=run_folder(ns),
        resume=ns.resume is not None,
        progress=not ns.no_progress,
    )
    summaries.share(run)


def _add_polyfit(p: argparse.ArgumentParser) -> None:
    add_flags(p, PolyfitJob, POLYFIT_FLAGS + FINETUNE_FLAGS)
    _run_flags(p, "polyfit")


def _run_polyfit(ns: argparse.Namespace) -> None:
    config = config_from_flags(ns, POLYFIT_FLAGS + FINETUNE_FLAGS, resume_or_config(ns))
    require_keys(config, {"from": "give --from RUN (the parent model's run folder), or --resume"})
    run = run_polyfit(
        PolyfitJob.from_config(config),
        out=run_folder(ns),
        resume=ns.resume is not None,
        progress=not ns.no_progress,
    )
    summaries.polyfit(run)


def _add_mitigate(p: argparse.ArgumentParser) -> None:
    add_flags(p, MitigateJob, MITIGATE_FLAGS)
    _run_flags(p, "linearize", config=False)


def _flat_job(job_type: type, ns: argparse.Namespace, flags: list[Flag]):
    """A job of flat fields (``from`` is ``from_run``) from the explicit flags."""
    config = config_from_flags(ns, flags, {})
    require_keys(config, {"from": "give --from RUN"})
    config["from_run"] = config.pop("from")
    return settings_from_dict(job_type, config)


def _run_mitigate(ns: argparse.Namespace) -> None:
    job = _flat_job(MitigateJob, ns, MITIGATE_FLAGS)
    run = run_mitigate(
        job, out=run_folder(ns), progress=not ns.no_progress, resume=ns.resume is not None
    )
    summaries.mitigate(run)


# -- audit, private inference, cost ------------------------------------------------------------


def _add_audit(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dense", type=Path, help="the dense run (parent of reduced runs that do not name theirs)"
    )
    p.add_argument(
        "reduced", type=Path, nargs="+", help="reduced runs (linearize runs, or sweep folders)"
    )
    add_flags(p, AuditJob, audit_flags())
    p.add_argument("--out", type=Path, help="run folder (default runs/audit-TIMESTAMP)")


def _expand_sweeps(paths: list[Path]) -> list[str]:
    """Sweep folders stand for their sub-runs."""
    out = []
    for p in paths:
        subs = []
        if p.is_dir() and not (p / "model.pt").exists():
            subs = sorted(q for q in p.iterdir() if (q / "model.pt").exists())
        out += [str(q) for q in subs or [p]]
    return out


def _run_audit(ns: argparse.Namespace) -> None:
    config = config_from_flags(ns, audit_flags(), {})
    config |= {"dense": str(ns.dense), "reduced": _expand_sweeps(ns.reduced)}
    job = settings_from_dict(AuditJob, config)
    summaries.audit(run_audit(job, out=ns.out))


def _add_he_infer(p: argparse.ArgumentParser) -> None:
    add_flags(p, HEInferJob, HE_FLAGS)
    p.add_argument("--out", type=Path, help="run folder (default runs/he-infer-TIMESTAMP)")


def _run_he_infer(ns: argparse.Namespace) -> None:
    summaries.he_infer(run_he_infer(_flat_job(HEInferJob, ns, HE_FLAGS), out=ns.out))


def _add_he_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("exchange", type=Path, help="the exchange folder pifair he-infer wrote")
    p.add_argument(
        "--workers",
        type=at_least(0),
        default=0,
        help="processes for SEAL's steps (0: one per core)",
    )


def _run_he_serve(ns: argparse.Namespace) -> None:
    serve(ns.exchange, workers=ns.workers or os.cpu_count() or 1)


def _add_mpc_infer(p: argparse.ArgumentParser) -> None:
    add_flags(p, MPCInferJob, MPC_FLAGS)
    p.add_argument("--config", type=Path, help="a job's config (flags override it)")
    p.add_argument("--out", type=Path, help="run folder (default runs/mpc-infer-TIMESTAMP)")


def _run_mpc_infer(ns: argparse.Namespace) -> None:
    config = config_from_flags(ns, MPC_FLAGS, resume_or_config(ns))
    require_keys(config, {"from": "give --from RUN"})
    summaries.mpc_infer(run_mpc_infer(MPCInferJob.from_config(config), out=ns.out))


def _model_flags(p: argparse.ArgumentParser) -> None:
    """A run folder, or a zoo model with its input shape (``relus`` and ``cost``)."""
    p.add_argument("run", type=Path, nargs="?", help="a run folder (or give --model)")
    p.add_argument("--model", help="a model of the zoo instead of a run")
    p.add_argument(
        "--input-shape",
        default="3,32,32",
        help="with --model: per-sample input shape, e.g. 3,32,32 (default 3,32,32)",
    )
    p.add_argument(
        "--num-classes",
        type=at_least(2),
        default=10,
        help="with --model: classes (default 10)",
    )


def _add_cost(p: argparse.ArgumentParser) -> None:
    _model_flags(p)
    p.add_argument(
        "--cores", type=at_least(1), default=1, help="server cores for the DELPHI times (default 1)"
    )
    p.add_argument(
        "--calibration",
        type=Path,
        help="a Cheetah calibration JSON (default: the one shipped with pifair)",
    )
    p.add_argument(
        "--calibrate",
        type=Path,
        nargs="+",
        metavar="MPC_RUN",
        help="fit the Cheetah model on these mpc-infer runs instead",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")


def input_shape(text: str) -> tuple[int, ...]:
    """``--input-shape C,H,W`` (or ``F`` for flat inputs) as a tuple of positive ints."""
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (1, 3) or min(shape, default=0) < 1:
        raise ConfigError(
            f"--input-shape {text!r} must be C,H,W (e.g. 3,32,32) or F (e.g. 784) with positive "
            "sizes"
        )
    return shape


def _run_cost(ns: argparse.Namespace) -> None:
    est = estimate_cost(
        run=ns.run,
        model_name=ns.model,
        input_shape=input_shape(ns.input_shape),
        num_classes=ns.num_classes,
        cores=ns.cores,
        calibration=ns.calibration,
        calibrate=ns.calibrate,
    )
    print(json.dumps(est, indent=2)) if ns.json else summaries.cost(est)


# -- small commands ---------------------------------------------------------------------------


def _add_relus(p: argparse.ArgumentParser) -> None:
    _model_flags(p)
    p.add_argument(
        "--snl-variant", action="store_true", help="resnet18 without the stem ReLU (SNL's code)"
    )
    p.add_argument("--width", type=at_least(1), help="first-stage channels (resnet18; default 64)")


def _run_relus(ns: argparse.Namespace) -> None:
    if ns.run and ns.model:
        raise ConfigError("give a run folder or --model NAME, not both")
    if ns.run:
        model, record, _ = load_from_run(ns.run)
        shape = tuple(record["input_shape"])
    elif ns.model:
        shape = input_shape(ns.input_shape)
        options = ({"snl_variant": True} if ns.snl_variant else {}) | (
            {"width": ns.width} if ns.width else {}
        )
        model = create_model(ns.model, num_classes=ns.num_classes, input_shape=shape, **options)
    else:
        raise ConfigError("give a run folder or --model NAME")
    print(count_relus(model, shape).table())


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path)
    p.add_argument(
        "--split", default="test", choices=["train", "val", "test"], help="the split to evaluate"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")


def _run_eval(ns: argparse.Namespace) -> None:
    report = evaluate_run(ns.run, split=ns.split, device=ns.device)
    print(json.dumps(report.as_dict(), indent=2) if ns.json else report.table())


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument(
        "--out", type=Path, help="HTML file (default: report.html in the first run's parent)"
    )
    p.add_argument("--title", default="pifair report", help="the report's title")


def _run_report(ns: argparse.Namespace) -> None:
    out = ns.out or default_report_path([Run.open(p) for p in ns.runs])
    print(f"report: {build_report(ns.runs, out, title=ns.title)}")


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="demo folder (kept stages are reused)"
    )
    p.add_argument("--epochs", type=at_least(1), help="epochs of the dense model (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    p.add_argument("--data-dir", help="the data sets' folder (unset: where the packages put them)")
    p.add_argument(
        "--limit", type=at_least(1), help="N evenly spaced images of train and test (a quick look)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_demo(ns: argparse.Namespace) -> None:
    run_demo(
        ns.out,
        epochs=ns.epochs,
        seed=ns.seed,
        data_dir=ns.data_dir,
        limit=ns.limit,
        progress=not ns.no_progress,
    )


def _run_list(ns: argparse.Namespace) -> None:
    print("data sets:", ", ".join(list_datasets()))
    print("models:")
    for name in list_models():
        print(f"  {name:<12} {get_model_spec(name).description}")
    print("  torchvision:NAME, timm:NAME  any classification builder of torchvision or timm")
    print("  FILE.py:ClassName            your own nn.Module (pifair import loads its weights)")


COMMANDS = [
    Command(
        "train",
        "train a model; writes a run folder",
        _add_train,
        _run_train,
        "Train a model. Every option has a default; --config re-runs a saved config.yaml.",
    ),
    Command("eval", "overall and per-group accuracy of a run's model", _add_eval, _run_eval),
    Command("report", "one self-contained HTML page for run folders", _add_report, _run_report),
    Command(
        "demo",
        "the whole pipeline on Fashion-MNIST on CPU, ending with the report",
        _add_demo,
        _run_demo,
    ),
    Command(
        "import",
        "a run folder from your own model and weights (torchvision, timm or your file)",
        _add_import,
        _run_import,
        "Build --arch for --data, load --weights into it (every mismatched key named), convert "
        "its ReLUs to sites and evaluate it per group: a run folder that linearize, share, "
        "polyfit, audit, mitigate, cost and mpc-infer start from.",
    ),
    Command("relus", "count a model's ReLUs per layer", _add_relus, _run_relus),
    Command(
        "linearize",
        "SNL: keep exactly a budget of ReLUs, fine-tune with KD",
        _add_linearize,
        _run_linearize,
        "Selective network linearization (Cho et al. 2022) to an exact ReLU budget.",
    ),
    Command(
        "sweep", "run a reduction at several budgets: Pareto table and plot", _add_sweep, _run_sweep
    ),
    Command(
        "share",
        "ReLU sharing: one sign decision per group of activations, under a budget",
        _add_share,
        _run_share,
    ),
    Command(
        "audit",
        "per-group accuracy, drop, margins and gradient norms of reduced models "
        "vs their dense parent",
        _add_audit,
        _run_audit,
    ),
    Command(
        "mitigate",
        "redo a reduced model's fine-tuning with a fairness-aware objective",
        _add_mitigate,
        _run_mitigate,
    ),
    Command(
        "polyfit",
        "HE-ready model: every ReLU becomes a trained low-degree polynomial (KD from the parent)",
        _add_polyfit,
        _run_polyfit,
    ),
    Command(
        "he-infer",
        "encrypted inference under CKKS (TenSEAL/SEAL), one image per slot: accuracy and time",
        _add_he_infer,
        _run_he_infer,
    ),
    Command(
        "he-serve",
        "the CKKS server's side: run the program on the ciphertexts of an exchange folder",
        _add_he_serve,
        _run_he_serve,
        "Reads only the parameter, public and relinearization key files, the program and the "
        "ciphertexts that pifair he-infer (--role client) wrote into EXCHANGE, and writes the "
        "encrypted results there. Refuses a key folder that holds anything else.",
    ),
    Command(
        "mpc-infer",
        "2PC/3PC inference under SPU (Cheetah, SEMI2K, ABY3): agreement, time, bytes, messages",
        _add_mpc_infer,
        _run_mpc_infer,
        "Run a model's first N test images under MPC and compare with the plaintext model. "
        "--parties threads runs every party here; processes, one OS process per party on "
        "loopback sockets; host:port,host:port (one per party) with --rank R plays one party "
        "of a deployment: run the same command on each machine.",
    ),
    Command(
        "cost",
        "a model's private-inference cost without running it: DELPHI garbled "
        "circuits and calibrated Cheetah",
        _add_cost,
        _run_cost,
    ),
    Command(
        "dp-train",
        "train with DP-SGD, DPSGD-Global, DPSGD-Global-Adapt or DPSGD-F (Opacus)",
        _add_dp_train,
        _run_dp_train,
        "Differentially private training with per-group diagnostics. Give --epsilon (the "
        "noise multiplier is derived, every count release included) or --noise-multiplier "
        "(epsilon is reported). Unset method settings (lr, clip, z, tau, count-noise) take "
        "the fair-dp MNIST script's values. Under torchrun the run is data-parallel.",
    ),
    Command("list", "the registered data sets and models", lambda p: None, _run_list),
]
