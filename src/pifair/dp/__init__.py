"""Fair DP-SGD on Opacus: DPSGD, DPSGD-Global, DPSGD-Global-Adapt and DPSGD-F.

``rules`` holds each method's per-sample scaling (pure torch), ``optimizers`` the Opacus
``DPOptimizer`` subclasses for the hooks and ghost-clipping paths, ``accounting`` the privacy
ledger, ``diagnostics`` the per-group misalignment, ``train`` the ``pifair dp-train`` loop.
Importing ``pifair.dp.optimizers`` or training needs the ``dp`` extra (Opacus).
"""

from .accounting import PrivacyLedger, check_privacy_target, noise_for_target
from .config import DPConfig
from .rules import METHODS, ClippingRule, make_rule

__all__ = [
    "DPConfig",
    "METHODS",
    "ClippingRule",
    "make_rule",
    "PrivacyLedger",
    "check_privacy_target",
    "noise_for_target",
    "dp_train",
]


def dp_train(*args, **kwargs):
    """See :func:`pifair.dp.train.dp_train` (imported on use: it needs Opacus)."""
    from .train import dp_train as _dp_train

    return _dp_train(*args, **kwargs)
