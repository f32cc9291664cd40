"""Fair DP-SGD on Opacus: DPSGD, DPSGD-Global, DPSGD-Global-Adapt and DPSGD-F.

``rules`` holds each method's per-sample scaling (pure torch), ``optimizers`` the Opacus
``DPOptimizer`` subclasses for the hooks and ghost-clipping paths, ``accounting`` the privacy
ledger, ``diagnostics`` the per-group misalignment, ``private`` the training pieces (the run
folder of ``pifair dp-train`` is :mod:`pifair.workflows.dp_train`). Building an optimizer needs
the ``dp`` extra (Opacus); importing does not.
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
]
