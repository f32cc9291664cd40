"""The ``pifair`` command line: a thin layer over the Python API (DESIGN.md section 1)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from pathlib import Path

from .errors import ConfigError, PifairError

__all__ = ["main", "build_parser"]


def _field_type(hints: dict, name: str) -> type:
    """The flag's value type: ``X`` for fields typed ``X`` or ``X | None``."""
    tp = hints[name]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per field; defaults stay in the dataclass (SUPPRESS marks explicit flags)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp, default = _field_type(hints, f.name), f.default
        if tp is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"(default: {default})",
            )
        else:
            parser.add_argument(
                flag, dest=f.name, type=tp, default=argparse.SUPPRESS, help=f"(default: {default})"
            )


def _explicit(ns: argparse.Namespace, cls: type) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(ns).items() if k in names}


def build_parser() -> argparse.ArgumentParser:
    from .training import TrainConfig

    parser = argparse.ArgumentParser(
        prog="pifair",
        description="Privacy-preserving deep learning that stays accurate, cheap and fair.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a model; writes a run folder",
        description="Train a model. Every option has a default; --config re-runs a saved config.yaml.",
    )
    _add_dataclass_flags(p, TrainConfig)
    p.add_argument("--config", type=Path, help="config.yaml of an earlier run (flags override it)")
    p.add_argument("--out", type=Path, help="run folder (default runs/train-TIMESTAMP)")
    p.add_argument("--resume", type=Path, help="continue the killed run in this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("eval", help="overall and per-group accuracy of a run's model")
    p.add_argument("run", type=Path)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")

    p = sub.add_parser("report", help="one self-contained HTML page for run folders")
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument(
        "--out", type=Path, help="HTML file (default: report.html in the first run's parent)"
    )
    p.add_argument("--title", default="pifair report")

    p = sub.add_parser(
        "demo", help="the whole pipeline on Fashion-MNIST on CPU, ending with the report"
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--epochs", type=int, help="epochs of the dense model (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir")
    p.add_argument(
        "--limit", type=int, help="N evenly spaced images of train and test (a quick look)"
    )
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("relus", help="count a model's ReLUs per layer")
    p.add_argument("run", type=Path, nargs="?", help="a run folder (or give --model)")
    p.add_argument("--model")
    p.add_argument("--input-shape", default="3,32,32", help="per-sample input shape, e.g. 3,32,32")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--snl-variant", action="store_true")
    p.add_argument("--width", type=int, help="first-stage channels (resnet18; default 64)")

    p = sub.add_parser(
        "linearize",
        help="SNL: keep exactly a budget of ReLUs, fine-tune with KD",
        description="Selective network linearization (Cho et al. 2022) to an exact ReLU budget.",
    )
    p.add_argument(
        "--budget",
        dest="budgets",
        type=lambda s: [s],
        default=argparse.SUPPRESS,
        help="ReLUs to keep: 50000, 50k or 12.5%%",
    )
    _add_linearize_flags(p, method_flag="--method")

    p = sub.add_parser("sweep", help="run a reduction at several budgets: Pareto table and plot")
    sweeps = p.add_subparsers(dest="sweep", required=True, metavar="WHAT")
    for what, help_text, example in (
        (
            "linearize",
            "SNL (one shared search) and the naive baseline at several budgets",
            "15k,25k,50k,100k",
        ),
        ("share", "ReLU sharing (and SNL) at several budgets, on one Pareto plot", "5k,1k,200,50"),
    ):
        p = sweeps.add_parser(what, help=help_text)
        p.add_argument(
            "--budgets",
            type=lambda s: [b.strip() for b in s.split(",") if b.strip()],
            default=argparse.SUPPRESS,
            help=f"e.g. {example}",
        )
        _add_linearize_flags(p, method_flag="--methods")

    p = sub.add_parser(
        "share", help="ReLU sharing: one sign decision per group of activations, under a budget"
    )
    p.add_argument("--from", dest="from_run", type=Path, help="run folder of the dense model")
    p.add_argument("--budget", help="sign decisions to keep: 5000, 5k or 1%%")
    p.add_argument(
        "--scheme",
        choices=["patch", "channel", "cluster"],
        default="patch",
        help="spatial patches per channel, channel groups per pixel, or clusters of activations whose signs agree",
    )
    p.add_argument(
        "--rule",
        choices=["mean", "representative", "learned"],
        default="mean",
        help="what decides a group's sign",
    )
    _add_finetune_run_flags(p)

    p = sub.add_parser(
        "audit",
        help="per-group accuracy, drop, margins and gradient norms of reduced models vs their dense parent",
    )
    p.add_argument(
        "dense", type=Path, help="the dense run (parent of reduced runs that do not name theirs)"
    )
    p.add_argument(
        "reduced", type=Path, nargs="+", help="reduced runs (linearize runs, or sweep folders)"
    )
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument(
        "--grad-samples",
        type=int,
        default=128,
        help="samples per group for the gradient norms (0: skip)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path)

    p = sub.add_parser(
        "mitigate", help="redo a reduced model's fine-tuning with a fairness-aware objective"
    )
    p.add_argument(
        "--from", dest="from_run", type=Path, required=True, help="a linearize run folder"
    )
    _add_objective_flags(p, default_objective="constrained")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the run's)")
    p.add_argument("--out", type=Path)
    p.add_argument("--resume", type=Path, help="continue the killed mitigation in this folder")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser(
        "polyfit",
        help="HE-ready model: every ReLU becomes a trained low-degree polynomial (KD from the parent)",
    )
    p.add_argument("--from", dest="from_run", type=Path, help="run folder of the ReLU model")
    p.add_argument("--degree", type=int, default=2, help="polynomial degree (default 2)")
    p.add_argument(
        "--granularity",
        choices=["layer", "channel", "element"],
        default="element",
        help="one polynomial per layer, per channel or per activation position (default)",
    )
    _add_finetune_run_flags(p)

    p = sub.add_parser(
        "he-infer",
        help="encrypted inference under CKKS (TenSEAL/SEAL), one image per slot: accuracy and time",
    )
    p.add_argument("--from", dest="from_run", type=Path, required=True, help="run folder of a polynomial model (pifair polyfit)")  # fmt: skip
    p.add_argument("--batch", type=int, default=4096, help="images per ciphertext (default 4096; at most N/2)")  # fmt: skip
    p.add_argument("--images", type=int, help="test images to run (default: one batch)")
    p.add_argument("--scale-bits", type=int, default=40, help="CKKS scale (default 2^40)")
    p.add_argument(
        "--workers", type=int, default=0, help="server processes (default: one per core)"
    )
    p.add_argument("--compare-images", type=int, default=0, help="also run N images one per ciphertext (with rotations) and compare times")  # fmt: skip
    p.add_argument("--out", type=Path)

    p = sub.add_parser(
        "mpc-infer",
        help="2PC/3PC inference under SPU (Cheetah, SEMI2K, ABY3): agreement, time, bytes, messages",
        description=(
            "Run a model's first N test images under MPC and compare with the plaintext model. "
            "--parties threads runs every party here; processes, one OS process per party on "
            "loopback sockets; host:port,host:port (one per party) with --rank R plays one party "
            "of a deployment: run the same command on each machine."
        ),
    )
    p.add_argument("--from", dest="from_run", type=Path, required=True, help="run folder of any ReLU, SNL, shared-ReLU or polynomial model")  # fmt: skip
    p.add_argument("--protocol", default="cheetah", choices=["cheetah", "semi2k", "aby3"], help="cheetah (2PC, default), semi2k (2PC, trusted first party), aby3 (3PC)")  # fmt: skip
    p.add_argument("--images", type=int, default=8, help="first N test images (default 8)")
    p.add_argument("--parties", default="threads", help="threads (default), processes, or host:port per party")  # fmt: skip
    p.add_argument("--rank", type=int, help="with host:port parties: the party this machine plays (0 server, 1 client, 2 helper)")  # fmt: skip
    p.add_argument("--ot", default="ferret", choices=["ferret", "softspoken"], help="Cheetah's OT (default ferret: silent OT, fewest bytes)")  # fmt: skip
    p.add_argument("--batch", type=int, default=1, help="images per SPU run (default 1: latency)")  # fmt: skip
    p.add_argument("--fraction-bits", type=int, default=18, help="fixed-point fraction bits (default 18)")  # fmt: skip
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True, help="measure the one-time setup apart with a first run on a zero image (default on)")  # fmt: skip
    p.add_argument("--out", type=Path)

    p = sub.add_parser(
        "cost",
        help="a model's private-inference cost without running it: DELPHI garbled circuits and calibrated Cheetah",
    )
    p.add_argument("run", type=Path, nargs="?", help="a run folder (or give --model)")
    p.add_argument("--model", help="a model of the zoo instead of a run")
    p.add_argument("--input-shape", default="3,32,32", help="with --model: per-sample input shape")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--cores", type=int, default=1, help="server cores for the DELPHI times (default 1)")  # fmt: skip
    p.add_argument("--calibration", type=Path, help="a Cheetah calibration JSON (default: the one shipped with pifair)")  # fmt: skip
    p.add_argument("--calibrate", type=Path, nargs="+", metavar="MPC_RUN", help="fit the Cheetah model on these mpc-infer runs instead")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")

    from .dp.config import DPConfig

    p = sub.add_parser(
        "dp-train",
        help="train with DP-SGD, DPSGD-Global, DPSGD-Global-Adapt or DPSGD-F (Opacus)",
        description=(
            "Differentially private training with per-group diagnostics. Give --epsilon (the "
            "noise multiplier is derived, every count release included) or --noise-multiplier "
            "(epsilon is reported). Unset method settings (lr, clip, z, tau, count-noise) take "
            "the fair-dp MNIST script's values. Under torchrun the run is data-parallel."
        ),
    )
    _add_dataclass_flags(p, DPConfig)
    p.add_argument("--config", type=Path, help="config.yaml of an earlier run (flags override it)")
    p.add_argument("--out", type=Path, help="run folder (default runs/dp-train-TIMESTAMP)")
    p.add_argument("--resume", type=Path, help="continue the killed run in this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    sub.add_parser("list", help="the registered data sets and models")
    return parser


def _add_finetune_run_flags(p: argparse.ArgumentParser) -> None:
    """KD fine-tuning and run-folder flags of the commands that refit a model (share, polyfit)."""
    p.add_argument("--finetune-epochs", type=int, default=20)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path)
    p.add_argument("--resume", type=Path, help="continue the killed run in this folder")
    p.add_argument("--no-progress", action="store_true")


def _run_folder(ns: argparse.Namespace) -> Path | None:
    """The run folder of a command that takes ``--out`` and ``--resume RUN``."""
    if ns.resume and ns.out and ns.resume.resolve() != ns.out.resolve():
        raise ConfigError("give either --resume RUN or --out RUN, not two different folders")
    return ns.resume or ns.out


def _finetune_settings(ns: argparse.Namespace):
    from .relu.linearize import FinetuneSettings

    return FinetuneSettings(epochs=ns.finetune_epochs, lr=ns.finetune_lr, batch_size=ns.batch_size, seed=ns.seed)  # fmt: skip


def _saved_job(job_type: type, ns: argparse.Namespace):
    """With ``--resume RUN``: the job saved in that run; else check the flags a new job needs."""
    if ns.resume:
        return job_type.from_config(_load_config(ns.resume / "config.yaml"))
    if ns.from_run is None:
        raise ConfigError("give --from RUN (the parent model's run folder), or --resume RUN")
    if getattr(ns, "budget", "") is None:
        raise ConfigError("give --budget N (e.g. 5k or 1%)")
    return None


def _expand_sweeps(paths: list[Path]) -> list[Path]:
    """Sweep folders stand for their sub-runs."""
    out = []
    for p in paths:
        subs = (
            sorted(q for q in p.iterdir() if (q / "model.pt").exists())
            if p.is_dir() and not (p / "model.pt").exists()
            else []
        )
        out += subs or [p]
    return out


def _cmd_audit(ns: argparse.Namespace) -> None:
    from .workflows.fairness import run_audit

    run = run_audit(
        ns.dense,
        _expand_sweeps(ns.reduced),
        out=ns.out,
        split=ns.split,
        grad_samples=ns.grad_samples,
        device=ns.device,
    )
    pairs = run.metrics["pairs"]
    if pairs:
        sizes = ", ".join(f"{g['name']} {g['count']:,}" for g in pairs[0]["groups"])
        print(f"group sizes ({ns.split}): {sizes}")
    print(
        f"{'run':<28} {'ReLUs':>8} {'acc':>7} {'drop':>6} {'worst':>7} {'max-min':>7} {'min-maj':>8} {'unweighted':>10}"
    )
    for p in pairs:
        gap, flat = (
            ("-", "-")
            if p["minority_gap"] is None
            else (f"{100 * p['minority_gap']:.2f}", f"{100 * p['minority_gap_unweighted']:.2f}")
        )
        print(
            f"{Path(p['run']).name:<28} {p['relus']:>8,} {100 * p['reduced_accuracy']:6.2f}% {100 * p['drop']:6.2f} {100 * p['worst_group_accuracy']:6.2f}% {100 * p['drop_spread']:7.2f} {gap:>8} {flat:>10}"
        )
    print(
        "worst: worst-group accuracy; max-min: largest minus smallest group drop; min-maj: minority-majority gap, "
        "the size-weighted mean drop of the minority groups minus the majority's (points); unweighted: every group weighs the same"
    )
    print(f"audit: {run.path}")


def _cmd_share(ns: argparse.Namespace) -> None:
    from .workflows.share import ShareJob, run_share

    job = _saved_job(ShareJob, ns) or ShareJob(
        from_run=str(ns.from_run),
        budget=ns.budget,
        scheme=ns.scheme,
        rule=ns.rule,
        seed=ns.seed,
        device=ns.device,
        finetune=_finetune_settings(ns),
    )
    run = run_share(
        job, out=_run_folder(ns), resume=ns.resume is not None, progress=not ns.no_progress
    )
    m = run.metrics
    print(f"{m['relus']:,} shared decisions (budget {m['budget']:,}; {m['allocation']}): test {100 * m['test_accuracy']:.2f}% "
          f"(dense {100 * m['dense_test_accuracy']:.2f}%, drop {100 * m['drop']:.2f} points)  run: {run.path}")  # fmt: skip


def _cmd_polyfit(ns: argparse.Namespace) -> None:
    from .workflows.polyfit import PolyfitJob, run_polyfit

    job = _saved_job(PolyfitJob, ns) or PolyfitJob(from_run=str(ns.from_run), degree=ns.degree, granularity=ns.granularity, seed=ns.seed, device=ns.device, finetune=_finetune_settings(ns))  # fmt: skip
    run = run_polyfit(
        job, out=_run_folder(ns), resume=ns.resume is not None, progress=not ns.no_progress
    )
    m = run.metrics
    print(f"degree-{m['degree']} {m['granularity']}-wise polynomials at {m['poly_sites']} sites ({m['coefficients']:,} coefficients): "
          f"test {100 * m['test_accuracy']:.2f}% (ReLU parent {100 * m['parent_test_accuracy']:.2f}%), {m['relus']} ReLUs left  run: {run.path}")  # fmt: skip


def _cmd_he_infer(ns: argparse.Namespace) -> None:
    from .workflows.he import HEInferJob, run_he_infer

    job = HEInferJob(from_run=str(ns.from_run), batch=ns.batch, images=ns.images, scale_bits=ns.scale_bits, workers=ns.workers, compare_images=ns.compare_images)  # fmt: skip
    run = run_he_infer(job, out=ns.out)
    m = run.metrics
    p = m["params"]
    print(f"{m['images']} images under CKKS (N={p['poly_modulus_degree']}, log Q {p['log_q']}, depth {m['depth']}): "
          f"encrypted accuracy {100 * m['encrypted_accuracy']:.2f}% (plaintext {100 * m['plaintext_accuracy']:.2f}%), "
          f"agreement {100 * m['argmax_agreement']:.2f}%, max logit error {m['max_logit_error']:.1e}, "
          f"{m['amortized_ms_per_image']:.2f} ms per image amortized  run: {run.path}")  # fmt: skip
    if "batch_vs_image_layout" in m:
        c = m["batch_vs_image_layout"]
        print(f"one image per ciphertext: {c['image_layout_ms_per_image']:.0f} ms per image; batch packing takes "
              f"{100 * c['time_reduction']:.1f}% less time per image")  # fmt: skip


def _cmd_mitigate(ns: argparse.Namespace) -> None:
    from .workflows.fairness import run_mitigate

    run = run_mitigate(
        ns.from_run,
        objective=ns.objective,
        settings={k: getattr(ns, k) for k in _OBJECTIVE_FLAGS if hasattr(ns, k)},
        out=_run_folder(ns),
        epochs=ns.epochs,
        progress=not ns.no_progress,
        resume=ns.resume is not None,
    )
    m = run.metrics
    print(
        f"{ns.objective} fine-tuning at {m['relus']:,} ReLUs: test {100 * m['test_accuracy']:.2f}% (dense {100 * m['dense_test_accuracy']:.2f}%), "
        f"worst group {100 * m['test']['worst_group_accuracy']:.2f}%  run: {run.path}"
    )


_OBJECTIVE_FLAGS = ("mu", "multiplier_init", "dro_step", "logit_tau", "dual_update", "select_by")
# flag -> (section of LinearizeJob, key); section None is the job itself
_LINEARIZE_FLAGS = {
    "from_run": (None, "from_run"), "granularity": (None, "granularity"), "reference": (None, "reference"),
    "seed": (None, "seed"), "device": (None, "device"), "budgets": (None, "budgets"), "methods": (None, "methods"),
    "search_epochs": ("search", "max_epochs"), "mask_lr": ("search", "mask_lr"), "lambda_init": ("search", "lambda_init"),
    "lambda_growth": ("search", "lambda_growth"), "lambda_warmup": ("search", "lambda_warmup"),
    "lambda_rule": ("search", "lambda_rule"), "harden_epochs": ("search", "harden_epochs"),
    "harden_mode": ("search", "harden_mode"), "allocation": ("search", "allocation"),
    "finetune_kd_weight": ("finetune", "kd_weight"),
    "finetune_epochs": ("finetune", "epochs"), "finetune_lr": ("finetune", "lr"), "batch_size": (None, "batch_size"),
    "objective": ("finetune", "objective"), "search_objective": ("search", "objective"),
} | {name: ("finetune", name) for name in _OBJECTIVE_FLAGS}  # fmt: skip


def _add_objective_flags(p: argparse.ArgumentParser, *, default_objective: str | None) -> None:
    """The fairness objective and its parameters (defaults: FinetuneSettings')."""
    from .fairness.mitigation import DUAL_UPDATES, OBJECTIVES
    from .relu.linearize import FinetuneSettings

    d, S = FinetuneSettings(), argparse.SUPPRESS
    p.add_argument(
        "--objective", choices=OBJECTIVES, default=default_objective or S,
        help=f"fine-tuning objective (default {default_objective or d.objective}): constrained = Das et al. 2024, "
        "anchored = no group loses more than its share against the dense model, group-dro = Sagawa et al. 2020, "
        "logit-adjust = Menon et al. 2021, reweight = inverse group frequency",
    )  # fmt: skip
    for flag, tp, what in (
        ("--mu", float, "dual step of constrained and anchored"),
        ("--multiplier-init", float, "their multipliers' warm start"),
        ("--dro-step", float, "group DRO's step"),
        ("--logit-tau", float, "logit adjustment's tau"),
    ):
        name = flag[2:].replace("-", "_")
        p.add_argument(flag, type=tp, default=S, help=f"{what} (default {getattr(d, name)})")
    p.add_argument("--dual-update", choices=DUAL_UPDATES, default=S,
                   help=f"multipliers updated per step or per epoch (default {d.dual_update})")  # fmt: skip
    p.add_argument(
        "--select-by", choices=["accuracy", "fair"], default=S,
        help="fine-tuning epoch kept: best validation accuracy, or fair = accuracy - |minority-majority gap| "
        f"against the dense model (default {d.select_by})",
    )  # fmt: skip


def _add_linearize_flags(p: argparse.ArgumentParser, *, method_flag: str) -> None:
    from .fairness.mitigation import OBJECTIVES

    S = argparse.SUPPRESS
    p.add_argument("--from", dest="from_run", default=S, help="run folder of the dense model")
    if method_flag == "--method":
        p.add_argument(
            "--method",
            dest="methods",
            type=lambda s: [s],
            default=S,
            help="snl (default) or naive (top-k mean |x|)",
        )
    else:
        p.add_argument(
            "--methods",
            dest="methods",
            type=lambda s: s.split(","),
            default=S,
            help="comma list of snl, naive, share-patch, share-channel, share-cluster (default: snl,naive; sweep share: share-patch,share-cluster,snl)",
        )
    p.add_argument(
        "--granularity", choices=["pixel", "channel"], default=S, help="(default: pixel)"
    )
    p.add_argument(
        "--reference",
        action="store_true",
        default=S,
        help="SNL's reference settings: lambda x1.1, threshold binarization, no corrections",
    )
    p.add_argument(
        "--mitigate", dest="objective", action="store_const", const="constrained", default=S,
        help="fine-tune with Das et al.'s fairness-constrained objective instead of plain CE + KD",
    )  # fmt: skip
    p.add_argument(
        "--search-epochs", type=int, default=S, help="most SNL search epochs (default 30)"
    )
    p.add_argument(
        "--mask-lr", type=float, default=S, help="Adam lr of the masks (default: the weights' 1e-3)"
    )
    p.add_argument("--lambda-init", type=float, default=S, help="(default 1e-5)")
    p.add_argument(
        "--lambda-growth",
        type=float,
        default=S,
        help="(default 1.5 after every epoch; SNL: 1.1 when the count stalls)",
    )
    p.add_argument(
        "--lambda-warmup",
        type=int,
        default=S,
        help="epochs before lambda may grow (default 0; SNL 5)",
    )
    p.add_argument(
        "--lambda-rule", choices=["always", "stall", "budget"], default=S,
        help="lambda growth: after every epoch, when the count stalls (SNL), or by the distance to the budget",
    )  # fmt: skip
    p.add_argument(
        "--harden-epochs", type=float, default=S,
        help="per budget, epochs of training with the exact top-k mask before binarizing (0: none)",
    )  # fmt: skip
    p.add_argument("--harden-mode", choices=["ste", "progressive"], default=S, help="(default ste)")
    p.add_argument(
        "--allocation", choices=["global", "sensitivity"], default=S,
        help="one global top-k, or per-layer budgets by ReLU sensitivity (SENet; pixel-wise)",
    )  # fmt: skip
    p.add_argument("--finetune-epochs", type=int, default=S, help="(default 20)")
    p.add_argument("--finetune-kd-weight", type=float, default=S, help="(default 1.0)")
    _add_objective_flags(p, default_objective=None)
    p.add_argument(
        "--search-objective", choices=OBJECTIVES, default=S,
        help="objective of the SNL search and hardening (default kd): a fairness objective puts the "
        "groups' losses into which ReLUs are kept",
    )  # fmt: skip
    p.add_argument("--finetune-lr", type=float, default=S, help="(default 0.01)")
    p.add_argument(
        "--batch-size", type=int, default=S, help="search and fine-tuning batch (default 128)"
    )
    p.add_argument("--seed", type=int, default=S)
    p.add_argument("--device", default=S)
    p.add_argument("--config", type=Path, help="config.yaml of an earlier run (flags override it)")
    p.add_argument("--out", type=Path, help="run folder (default runs/linearize-TIMESTAMP)")
    p.add_argument("--resume", type=Path, help="continue the killed run in this folder")
    p.add_argument("--no-progress", action="store_true")


def _linearize_job(ns: argparse.Namespace, *, sweep: bool):
    from .workflows.linearize import SHARE_METHODS, LinearizeJob

    if ns.resume:
        base = LinearizeJob.from_config(_load_config(ns.resume / "config.yaml")).as_config()
    elif ns.config:
        base = LinearizeJob.from_config(_load_config(ns.config)).as_config()
    else:
        default_methods = (
            ["share-patch", "share-cluster", "snl"]
            if getattr(ns, "sweep", None) == "share"
            else ["snl", "naive"]
        )
        base = {"search": {}, "finetune": {}} | ({"methods": default_methods} if sweep else {})
    for flag, (section, key) in _LINEARIZE_FLAGS.items():
        if flag not in ns:
            continue
        value = getattr(ns, flag)
        if flag == "batch_size":
            base["search"]["batch_size"] = base["finetune"]["batch_size"] = value
        elif section:
            base[section][key] = value
        else:
            base["from" if key == "from_run" else key] = value
    if "from" not in base:
        raise ConfigError("give --from RUN (the dense model's run folder), or --resume / --config")
    if not base.get("budgets"):
        raise ConfigError(
            "give " + ("--budgets 15k,25k,..." if sweep else "--budget N (e.g. 50k or 10%)")
        )
    if not sweep and len(base.get("methods", ["snl"])) != 1:
        raise ConfigError("linearize runs one method; use 'pifair sweep linearize' for several")
    known = {"snl", "naive", *SHARE_METHODS}
    unknown = set(base.get("methods", [])) - known
    if unknown:
        raise ConfigError(f"unknown method(s) {sorted(unknown)}; choose from {sorted(known)}")
    return LinearizeJob.from_config(base)


def _load_config(path: Path) -> dict:
    from .runs import read_config

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; give the config.yaml of a run")
    return read_config(path)


def _input_shape(text: str) -> tuple[int, ...]:
    """``--input-shape C,H,W`` (or ``F`` for flat inputs) as a tuple of positive ints."""
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (1, 3) or min(shape, default=0) < 1:
        raise ConfigError(
            f"--input-shape {text!r} must be C,H,W (e.g. 3,32,32) or F (e.g. 784) with positive sizes"
        )
    return shape


def _cmd_linearize(ns: argparse.Namespace) -> None:
    from .workflows.linearize import run_linearize

    job = _linearize_job(ns, sweep=False)
    run = run_linearize(
        job, out=_run_folder(ns), resume=ns.resume is not None, progress=not ns.no_progress
    )
    m = run.metrics
    print(
        f"{m['relus']:,} ReLUs (budget {m['budget']:,}): test {100 * m['test_accuracy']:.2f}% (dense {100 * m['dense_test_accuracy']:.2f}%, drop {100 * m['drop']:.2f} points)  run: {run.path}"
    )


def _cmd_sweep(ns: argparse.Namespace) -> None:
    from .workflows.linearize import run_linearize

    job = _linearize_job(ns, sweep=True)
    run = run_linearize(
        job,
        out=_run_folder(ns),
        resume=ns.resume is not None,
        progress=not ns.no_progress,
        sweep=True,
    )
    rows = run.metrics["rows"]
    print(f"{'method':<7} {'budget':>8} {'ReLUs':>9} {'test':>7} {'drop':>6} {'time s':>7}")
    for r in sorted(rows, key=lambda r: (r["method"], r["relus"])):
        print(
            f"{r['method']:<7} {r['budget']:>8} {r['relus']:>9,} {100 * r['test_accuracy']:6.2f}% {100 * r['drop']:6.2f} {r['total_s']:7.0f}"
        )
    print(f"sweep: {run.path} (pareto.csv, pareto.png)")


def _cmd_train(ns: argparse.Namespace) -> None:
    from .runs import Run
    from .training import TrainConfig, train

    explicit = _explicit(ns, TrainConfig)
    if ns.resume:
        saved = {k: v for k, v in Run.open(ns.resume).config.items() if k != "command"}
        cfg = TrainConfig.from_dict(saved | explicit)
    elif ns.config:
        base = {k: v for k, v in _load_config(ns.config).items() if k != "command"}
        cfg = TrainConfig.from_dict(base | explicit)
    else:
        cfg = TrainConfig(**explicit)
    run = train(cfg, out=ns.out, resume=ns.resume, progress=not ns.no_progress)
    m = run.metrics
    print(f"test accuracy {100 * m['test_accuracy']:.2f}%  ({m['relus']:,} ReLUs)  run: {run.path}")


def _cmd_dp_train(ns: argparse.Namespace) -> None:
    from .dp import DPConfig, dp_train
    from .runs import Run

    explicit = _explicit(ns, DPConfig)
    base: dict = {}
    if ns.resume:
        base = dict(Run.open(ns.resume).config)
    elif ns.config:
        base = _load_config(ns.config)
    base = {k: v for k, v in base.items() if k != "command"}
    if "epsilon" in explicit or "noise_multiplier" in explicit:  # one replaces the other
        base = {k: v for k, v in base.items() if k not in ("epsilon", "noise_multiplier")}
    cfg = DPConfig.from_dict(base | explicit)
    run = dp_train(cfg, out=ns.out, resume=ns.resume, progress=not ns.no_progress)
    if run is None:  # a torchrun rank other than 0
        return
    m = run.metrics
    if "unaccounted_diagnostics" in m:
        print(f"warning: {m['unaccounted_diagnostics']['note']}", file=sys.stderr)
    privacy = (
        f"epsilon {m['epsilon']:.2f} at delta {m['delta']:g} (noise multiplier {m['noise_multiplier']:.3f})"
        if "epsilon" in m
        else "non-private"
    )
    worst = min(m["test_groups"].items(), key=lambda kv: kv[1])
    print(
        f"{cfg.method}: test accuracy {100 * m['test_accuracy']:.2f}%, worst group {worst[0]} "
        f"{100 * worst[1]:.2f}%, {privacy}  run: {run.path}"
    )


def _cmd_eval(ns: argparse.Namespace) -> None:
    import json

    from .evaluation import evaluate_run

    report = evaluate_run(ns.run, split=ns.split, device=ns.device)
    print(json.dumps(report.as_dict(), indent=2) if ns.json else report.table())


def _cmd_report(ns: argparse.Namespace) -> None:
    from .report import build_report

    out = ns.out or ns.runs[0].parent / "report.html"
    print(f"report: {build_report(ns.runs, out, title=ns.title)}")


def _cmd_demo(ns: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(
        ns.out,
        epochs=ns.epochs,
        seed=ns.seed,
        data_dir=ns.data_dir,
        limit=ns.limit,
        progress=not ns.no_progress,
    )


def _cmd_mpc_infer(ns: argparse.Namespace) -> None:
    from .workflows.mpc import MPCInferJob, run_mpc_infer

    job = MPCInferJob(from_run=str(ns.from_run), protocol=ns.protocol, images=ns.images, parties=ns.parties, rank=ns.rank, ot=ns.ot, batch=ns.batch, fraction_bits=ns.fraction_bits, warmup=ns.warmup)  # fmt: skip
    run = run_mpc_infer(job, out=ns.out)
    m = run.metrics
    if "argmax_agreement" not in m:
        p = m["party"]
        print(f"party {p['rank']} ({p['role']}) done: {len(p['run_seconds'])} runs, {sum(p['run_seconds']):.2f} s  run: {run.path}")  # fmt: skip
        return
    print(
        f"{m['images']} images under {m['protocol']} ({m['security']}); parties: {m['placement']}"
    )
    print(f"agreement with plaintext {100 * m['argmax_agreement']:.1f}%, max logit error {m['max_logit_error']:.1e}; "
          f"accuracy {100 * m['mpc_accuracy']:.1f}% (plaintext {100 * m['plaintext_accuracy']:.1f}%)")  # fmt: skip
    if m.get("per_image"):
        print(f"{m['relus']:,} ReLUs, {m['comparisons']:,} comparisons per image; {m['seconds_per_image']:.2f} s, "
              f"{m['bytes_per_image'] / 1e6:.2f} MB, {m['per_image']['messages']:.0f} messages per image (rank {m['profiled_rank']}'s link)")  # fmt: skip
        rows = [(c, f"{v['seconds']:.3f}", f"{v['bytes'] / 1e6:.3f}", f"{v['messages']:.0f}") for c, v in m["per_image"]["by_category"].items()]  # fmt: skip
        print(_table([("per image", "seconds", "MB", "messages"), *rows]))
    if m.get("setup"):
        print(f"one-time setup (warm-up run {m['setup']['seconds']:.2f} s, {m['setup']['bytes'] / 1e6:.2f} MB): "
              f"{m['setup']['one_time_seconds']:.2f} s and {m['setup']['one_time_bytes'] / 1e6:.2f} MB beyond one run")  # fmt: skip
    print(f"run: {run.path}")


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)  # fmt: skip


def _cmd_cost(ns: argparse.Namespace) -> None:
    import json

    from .workflows.cost import estimate_cost

    shape = _input_shape(ns.input_shape)
    est = estimate_cost(run=ns.run, model_name=ns.model, input_shape=shape, num_classes=ns.num_classes, cores=ns.cores, calibration=ns.calibration, calibrate=ns.calibrate)  # fmt: skip
    if ns.json:
        print(json.dumps(est, indent=2))
        return
    w, d, c = est["work"], est["delphi"], est["cheetah"]
    print(f"{est['model']}: {w['relus']:,} ReLUs (comparisons), {w['muxes']:,} multiplexers, {w['poly_products']:,} polynomial products, "
          f"{w['linear']['macs'] / 1e6:.2f} M multiply-accumulates in {w['linear']['layers']} linear layers")  # fmt: skip
    mb = lambda b: f"{b / 1e6:,.2f}"  # noqa: E731
    rows = [
        ("per image", "offline MB", "online MB", "offline s", "online s"),
        (f"DELPHI GC ({d['cores']} core{'s' if d['cores'] > 1 else ''}, ReLUs only)", mb(d["offline_bytes"]), mb(d["online_bytes"]), f"{d['offline_seconds']:.3f}", f"{d['online_seconds']:.3f}"),
        ("Cheetah (this engine, calibrated)", "-", mb(c["bytes"]), "-", f"{c['seconds']:.3f}"),
        ("  of which comparisons", "-", mb(c["comparison_bytes"]), "-", f"{c['comparison_seconds']:.3f}"),
        ("  of which linear layers", "-", mb(c["linear_bytes"]), "-", f"{c['linear_seconds']:.3f}"),
        ("  of which multiplexers and products", "-", mb(c["multiplication_bytes"]), "-", f"{c['multiplication_seconds']:.3f}"),
    ]  # fmt: skip
    print(_table(rows))
    print(f"Cheetah calibration: {est['calibration']}")


def _cmd_relus(ns: argparse.Namespace) -> None:
    from .models import create_model
    from .relu import count_relus

    if ns.run:
        from .training import load_from_run

        model, record, _ = load_from_run(ns.run)
        shape = tuple(record["input_shape"])
    elif ns.model:
        shape = _input_shape(ns.input_shape)
        model = create_model(
            ns.model,
            num_classes=ns.num_classes,
            input_shape=shape,
            **({"snl_variant": True} if ns.snl_variant else {}),
            **({"width": ns.width} if ns.width else {}),
        )
    else:
        raise ConfigError("give a run folder or --model NAME")
    print(count_relus(model, shape).table())


def _cmd_list(ns: argparse.Namespace) -> None:
    from .data import list_datasets
    from .models import get_model_spec, list_models

    print("data sets:", ", ".join(list_datasets()))
    print("models:")
    for name in list_models():
        print(f"  {name:<12} {get_model_spec(name).description}")


_COMMANDS = {
    "linearize": _cmd_linearize,
    "audit": _cmd_audit,
    "share": _cmd_share,
    "mitigate": _cmd_mitigate,
    "sweep": _cmd_sweep,
    "train": _cmd_train,
    "dp-train": _cmd_dp_train,
    "polyfit": _cmd_polyfit,
    "he-infer": _cmd_he_infer,
    "mpc-infer": _cmd_mpc_infer,
    "cost": _cmd_cost,
    "eval": _cmd_eval,
    "report": _cmd_report,
    "demo": _cmd_demo,
    "relus": _cmd_relus,
    "list": _cmd_list,
}


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        _COMMANDS[ns.command](ns)
    except PifairError as err:  # pifair's own refusals; anything else is a bug: its traceback shows
        if os.environ.get("PIFAIR_DEBUG"):
            raise
        print(f"pifair {ns.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted; the last checkpoint is intact: continue with --resume RUN_FOLDER",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
