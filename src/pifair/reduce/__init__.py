"""Reductions: make a trained model cheaper under private inference by swapping its sites.

SNL linearization (:mod:`.snl`, :mod:`.harden`, :mod:`.linearize`), ReLU sharing
(:mod:`.share`) and polynomial activations for HE (:mod:`.polyfit`), all finished by the same
fine-tuning (:mod:`.finetune`). Library code: models and data in, result objects out.
"""

from .finetune import FinetuneOutcome, FinetuneSettings, finetune_reduced, recalibrate_batchnorm
from .linearize import LinearizeHooks, LinearizeResult, linearize_many
from .polyfit import PolyfitResult
from .share import ShareResult
from .snl import SearchSettings

# the functions linearize, share and polyfit are pifair.linearize, pifair.share, pifair.polyfit:
# bound here, they would hide the submodules of the same names

__all__ = [
    "FinetuneOutcome",
    "FinetuneSettings",
    "LinearizeHooks",
    "LinearizeResult",
    "PolyfitResult",
    "SearchSettings",
    "ShareResult",
    "finetune_reduced",
    "linearize_many",
    "recalibrate_batchnorm",
]
