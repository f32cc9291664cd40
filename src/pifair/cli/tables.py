"""Which job fields each command exposes as flags, with the help text of each.

Types, choices and defaults are not written here: :func:`pifair.cli.flags.add_flags` reads them
from the job dataclasses.
"""

from __future__ import annotations

from ..data import list_datasets
from ..models import list_models
from .flags import Flag

__all__ = [
    "DATA_HELP",
    "DP_TRAIN_HELP",
    "IMPORT_HELP",
    "TRAIN_HELP",
    "FINETUNE_FLAGS",
    "HE_FLAGS",
    "MITIGATE_FLAGS",
    "MPC_FLAGS",
    "POLYFIT_FLAGS",
    "SHARE_FLAGS",
    "audit_flags",
    "linearize_flags",
    "objective_flags",
]


# the data fields every training command shares (pifair.training.config.DataConfig)
DATA_HELP = {
    "data": "data set: " + ", ".join(list_datasets()),
    "data_dir": "the data set's folder; unset: where its package or the project puts it",
    "val_fraction": "fraction of the training set held out for validation",
    "keep": "subsample classes of the training set, e.g. 8:0.09 or 0-4:0.9,5-9:0.1",
    "keep_test": "subsample the test set the same way",
    "group_by": "the groups of fairness metrics: class, or sex / race for adult",
    "limit": "evenly spaced samples of each set (quick looks)",
    "download": "allow downloading a data set that is not on disk",
}
TRAIN_HELP = DATA_HELP | {
    "model": "model: "
    + ", ".join(list_models())
    + ", or torchvision:NAME, timm:NAME, FILE.py:ClassName (your own architecture)",
    "snl_variant": "resnet18 without the stem ReLU, as in SNL's code",
    "width": "channels of the first stage, for models that take it (resnet18)",
    "act": "activation of the model, for models that take one (relu, tanh, ...)",
    "epochs": "training epochs",
    "batch_size": "batch size",
    "lr": "peak learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "schedule": "learning-rate schedule",
    "label_smoothing": "label smoothing of the cross-entropy",
    "seed": "seed of the split, the initialisation and the batches",
    "device": "auto (CUDA when present), cpu or cuda[:N]",
    "loader": "resident: the data stays on the device; dataloader: torch DataLoader",
}
IMPORT_HELP = DATA_HELP | {
    "arch": "the architecture: torchvision:NAME, timm:NAME or FILE.py:ClassName (built with the "
    "data set's classes and input channels)",
    "weights": "the weights: a state dict or a whole module saved with torch.save (a pickled "
    "module is unpickled, which runs its code: give only your own files)",
    "seed": "seed of the data split (the same as the run that trained the weights, if pifair's)",
}
DP_TRAIN_HELP = DATA_HELP | {
    "method": "nonprivate, dpsgd, global, global-adapt, dpsgd-f or bounded-adapt",
    "model": "model without batch norm: fairdp_cnn, mlp, resnet18_gn, lenet, he_cnn",
    "act": "activation of the model (fairdp_cnn: tanh; mlp: relu, or tanh as in fair-dp)",
    "epochs": "training epochs (the noise is derived for this many)",
    "batch_size": "expected (Poisson) batch size",
    "lr": "SGD learning rate (unset: the method's fair-dp default)",
    "momentum": "SGD momentum",
    "clip": "clip bound C (DPSGD-F: C0; bounded-adapt: the starting bound); unset: the method's",
    "z": "Z of DPSGD-Global, Z0 of Global-Adapt",
    "tau": "Global-Adapt counts the gradients above tau * Z_t",
    "eta_z": "Global-Adapt's learning rate of Z_t",
    "count_noise": "noise of the released counts: s_b (Global-Adapt, bounded-adapt), sigma_1 "
    "(DPSGD-F)",
    "clip_lower": "bounded-adapt: the clip bound never goes below this",
    "clip_upper": "bounded-adapt: nor above this",
    "quantile": "bounded-adapt: the fraction of unclipped gradients the bound aims at",
    "eta_c": "bounded-adapt: the clip bound's geometric learning rate",
    "epsilon": "target epsilon: the noise multiplier is derived from it",
    "delta": "delta, below 1/N",
    "noise_multiplier": "noise multiplier instead of --epsilon (epsilon is reported)",
    "grad_path": "auto: hooks for small conv nets, ghost otherwise; ghost: norms first, then a "
    "second backward; hooks: Opacus' per-sample gradients. Same step on all",
    "secure_noise": "noise seeded from the OS with Opacus' secure_mode (not reproducible)",
    "precision": "bf16: the forward pass under bfloat16 autocast (for CUDA)",
    "diag_every": "steps between misalignment measurements (0: never); NOT covered by epsilon",
    "baseline": "a non-private run folder: the privacy cost per group",
    "seed": "seed of the batches, the noise and the initialisation",
    "device": "auto (CUDA when present), cpu or cuda[:N]",
}


def _comma_list(text: str) -> list[str]:
    return [b.strip() for b in text.split(",") if b.strip()]


def _one(text: str) -> list[str]:
    return [text]


_OBJECTIVE_HELP = (
    "fine-tuning objective: constrained = Das et al. 2024, anchored = no group loses more than "
    "its share against the dense model, group-dro = Sagawa et al. 2020, logit-adjust = Menon "
    "et al. 2021, reweight = inverse group frequency"
)


def objective_flags(prefix: str, *, unset: str | None = None) -> list[Flag]:
    """The fairness objective and its parameters, at ``prefix`` (``finetune.`` or a flat job);
    ``unset`` says what an unset parameter means when its default is None."""
    return [
        Flag("--objective", (f"{prefix}objective",), _OBJECTIVE_HELP),
        Flag("--mu", (f"{prefix}mu",), "dual step of constrained and anchored", default_text=unset),
        Flag(
            "--multiplier-init",
            (f"{prefix}multiplier_init",),
            "their multipliers' warm start",
            default_text=unset,
        ),
        Flag("--dro-step", (f"{prefix}dro_step",), "group DRO's step", default_text=unset),
        Flag("--logit-tau", (f"{prefix}logit_tau",), "logit adjustment's tau", default_text=unset),
        Flag(
            "--dual-update",
            (f"{prefix}dual_update",),
            "multipliers updated per step or per epoch",
            default_text=unset,
        ),
        Flag(
            "--select-by",
            (f"{prefix}select_by",),
            "fine-tuning epoch kept: best validation accuracy, or fair = accuracy - "
            "|minority-majority gap| against the dense model",
            default_text=unset,
        ),
    ]


_SEARCH_FLAGS = [
    Flag("--search-epochs", ("search.max_epochs",), "most SNL search epochs"),
    Flag("--mask-lr", ("search.mask_lr",), "Adam lr of the masks", default_text="the weights' lr"),
    Flag("--lambda-init", ("search.lambda_init",)),
    Flag(
        "--lambda-growth",
        ("search.lambda_growth",),
        "lambda's factor after every epoch (SNL: 1.1 when the count stalls)",
    ),
    Flag("--lambda-warmup", ("search.lambda_warmup",), "epochs before lambda may grow (SNL 5)"),
    Flag(
        "--lambda-rule",
        ("search.lambda_rule",),
        "lambda growth: after every epoch, when the count stalls (SNL), or by the distance to "
        "the budget",
    ),
    Flag(
        "--harden-epochs",
        ("search.harden_epochs",),
        "per budget, epochs of training with the exact top-k mask before binarizing (0: none)",
    ),
    Flag("--harden-mode", ("search.harden_mode",)),
    Flag(
        "--allocation",
        ("search.allocation",),
        "one global top-k, or per-layer budgets by ReLU sensitivity (SENet; pixel-wise)",
    ),
    Flag(
        "--search-objective",
        ("search.objective",),
        "objective of the SNL search and hardening: a fairness objective puts the groups' "
        "losses into which ReLUs are kept",
    ),
]

_SWEEP_METHODS = {
    None: Flag("--method", ("methods",), "snl or naive (top-k mean |x|)", parse=_one),
    "linearize": Flag(
        "--methods",
        ("methods",),
        "comma list of snl, naive, share-patch, share-channel, share-cluster",
        parse=_comma_list,
        default_text="snl,naive",
    ),
    "share": Flag(
        "--methods",
        ("methods",),
        "comma list of snl, naive, share-patch, share-channel, share-cluster",
        parse=_comma_list,
        default_text="share-patch,share-cluster,snl",
    ),
}
_SWEEP_BUDGETS = {
    None: Flag("--budget", ("budgets",), "ReLUs to keep: 50000, 50k or 12.5%%", parse=_one),
    "linearize": Flag("--budgets", ("budgets",), "e.g. 15k,25k,50k,100k", parse=_comma_list),
    "share": Flag("--budgets", ("budgets",), "e.g. 5k,1k,200,50", parse=_comma_list),
}


def linearize_flags(*, sweep: str | None) -> list[Flag]:
    """``pifair linearize`` (``sweep=None``) and ``pifair sweep linearize|share``."""
    return [
        Flag("--from", ("from",), "run folder of the dense model"),
        _SWEEP_BUDGETS[sweep],
        _SWEEP_METHODS[sweep],
        Flag("--granularity", ("granularity",)),
        Flag(
            "--reference",
            ("reference",),
            "SNL's reference settings: lambda x1.1, threshold binarization, no corrections",
        ),
        Flag(
            "--mitigate",
            ("finetune.objective",),
            "fine-tune with Das et al.'s fairness-constrained objective instead of plain CE + KD",
            const="constrained",
        ),
        *_SEARCH_FLAGS,
        Flag("--finetune-epochs", ("finetune.epochs",)),
        Flag("--finetune-kd-weight", ("finetune.kd_weight",)),
        Flag("--finetune-lr", ("finetune.lr",)),
        *objective_flags("finetune."),
        Flag(
            "--batch-size",
            ("search.batch_size", "finetune.batch_size"),
            "search and fine-tuning batch",
        ),
        Flag("--seed", ("seed",)),
        Flag("--device", ("device",)),
    ]


# the fine-tuning of share and polyfit (the seed is the job's and the fine-tuning's)
FINETUNE_FLAGS = [
    Flag("--finetune-epochs", ("finetune.epochs",)),
    Flag("--finetune-lr", ("finetune.lr",)),
    Flag("--batch-size", ("finetune.batch_size",)),
    Flag("--seed", ("seed", "finetune.seed")),
    Flag("--device", ("device",)),
]

SHARE_FLAGS = [
    Flag("--from", ("from",), "run folder of the dense model"),
    Flag("--budget", ("budget",), "sign decisions to keep: 5000, 5k or 1%%"),
    Flag(
        "--scheme",
        ("scheme",),
        "spatial patches per channel, channel groups per pixel, or clusters of activations "
        "whose signs agree",
    ),
    Flag("--rule", ("rule",), "what decides a group's sign"),
]

POLYFIT_FLAGS = [
    Flag("--from", ("from",), "run folder of the ReLU model"),
    Flag("--degree", ("degree",), "polynomial degree"),
    Flag(
        "--granularity",
        ("granularity",),
        "one polynomial per layer, per channel or per activation position",
    ),
]

MITIGATE_FLAGS = [
    Flag("--from", ("from",), "a linearize run folder"),
    *objective_flags("", unset="the reduced run's"),
    Flag("--epochs", ("epochs",), "fine-tuning epochs", default_text="the reduced run's"),
]


def audit_flags() -> list[Flag]:
    return [
        Flag("--split", ("split",)),
        Flag(
            "--grad-samples",
            ("grad_samples",),
            "samples per group for the gradient norms (0: skip)",
        ),
        Flag("--device", ("device",)),
    ]


HE_FLAGS = [
    Flag("--from", ("from",), "run folder of a polynomial model (pifair polyfit)"),
    Flag(
        "--engine",
        ("engine",),
        "batched: linear layers as modular matrix products over the raw ciphertexts, the "
        "server its own process; seal: one SEAL call per weight (the first engine)",
    ),
    Flag("--batch", ("batch",), "images per ciphertext (0: every slot, N/2)"),
    Flag("--images", ("images",), "test images to run", default_text="one batch"),
    Flag("--scale-bits", ("scale_bits",), "CKKS scale: 2^bits (0: the engine's choice)"),
    Flag("--workers", ("workers",), "server processes (0: one per core)"),
    Flag(
        "--role",
        ("role",),
        "both: client, server (spawned) and decryption here; client: encrypt into --exchange "
        "and stop (run pifair he-serve there, then this command again with the same --out)",
    ),
    Flag(
        "--exchange",
        ("exchange",),
        "folder of the files between client and server",
        default_text="RUN/exchange",
    ),
    Flag("--keep-ciphertexts", ("keep_ciphertexts",), "keep the ciphertext files"),
    Flag(
        "--compare-images",
        ("compare_images",),
        "also run N images one per ciphertext (with rotations) and compare times",
    ),
]

MPC_FLAGS = [
    Flag("--from", ("from",), "run folder of any ReLU, SNL, shared-ReLU or polynomial model"),
    Flag(
        "--protocol",
        ("protocol",),
        "cheetah (2PC), semi2k (2PC, trusted first party), aby3 (3PC)",
    ),
    Flag("--images", ("images",), "first N test images"),
    Flag("--parties", ("parties",), "threads, processes, or host:port per party"),
    Flag(
        "--rank",
        ("rank",),
        "with host:port parties: the party this machine plays (0 server, 1 client, 2 helper)",
    ),
    Flag("--ot", ("ot",), "Cheetah's OT (ferret: silent OT, fewest bytes)"),
    Flag("--batch", ("batch",), "images per SPU run (1: latency)"),
    Flag("--fraction-bits", ("fraction_bits",), "fixed-point fraction bits"),
    Flag(
        "--warmup",
        ("warmup",),
        "measure the one-time setup apart with a first run on a zero image",
    ),
]
