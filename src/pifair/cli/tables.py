"""Which job fields each command exposes as flags, under which names.

Types, choices, defaults and help are not written here: :func:`pifair.cli.flags.add_flags`
reads them from the job dataclasses' fields; a flag's help here is only what differs for its
command (a flag that sets several fields, a sweep's list).
"""

from __future__ import annotations

from .flags import Flag

__all__ = [
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


def _comma_list(text: str) -> list[str]:
    return [b.strip() for b in text.split(",") if b.strip()]


def _one(text: str) -> list[str]:
    return [text]


def objective_flags(prefix: str, *, unset: str | None = None) -> list[Flag]:
    """The fairness objective and its parameters, at ``prefix`` (``finetune.`` or a flat job);
    ``unset`` says what an unset parameter means when its default is None."""
    names = ["mu", "multiplier_init", "dro_step", "logit_tau", "dual_update", "select_by"]
    return [Flag("--objective", (f"{prefix}objective",))] + [
        Flag("--" + n.replace("_", "-"), (f"{prefix}{n}",), default_text=unset) for n in names
    ]


_SEARCH_FLAGS = [
    Flag("--search-epochs", ("search.max_epochs",)),
    Flag("--mask-lr", ("search.mask_lr",), default_text="the weights' lr"),
    Flag("--lambda-init", ("search.lambda_init",)),
    Flag("--lambda-growth", ("search.lambda_growth",)),
    Flag("--lambda-warmup", ("search.lambda_warmup",)),
    Flag("--lambda-rule", ("search.lambda_rule",)),
    Flag("--harden-epochs", ("search.harden_epochs",)),
    Flag("--harden-mode", ("search.harden_mode",)),
    Flag("--allocation", ("search.allocation",)),
    Flag("--search-objective", ("search.objective",)),
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
    Flag("--from", ("from",)),
    *objective_flags("", unset="the reduced run's"),
    Flag("--epochs", ("epochs",), default_text="the reduced run's"),
]


def audit_flags() -> list[Flag]:
    return [Flag("--split", ("split",)), Flag("--grad-samples", ("grad_samples",))] + [
        Flag("--device", ("device",))
    ]


def _field_flags(*names: str) -> list[Flag]:
    """``--from`` and a flag per field of a flat job, named after the field."""
    return [Flag("--from", ("from",))] + [Flag("--" + n.replace("_", "-"), (n,)) for n in names]


HE_FLAGS = _field_flags(
    "engine",
    "batch",
    "images",
    "scale_bits",
    "workers",
    "role",
    "exchange",
    "keep_ciphertexts",
    "compare_images",
)
MPC_FLAGS = _field_flags(
    "protocol", "images", "parties", "rank", "ot", "batch", "fraction_bits", "warmup"
)
