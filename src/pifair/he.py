"""CKKS inference (TenSEAL/SEAL), batch-packed: one image per slot.

``compile`` turns an HE-ready model (polynomial activations) into a program of affine and
polynomial stages; ``fold`` folds each polynomial into its neighbours (one level per
activation). The batched engine: :class:`BatchedClient` holds the secret key, encrypts a batch
into one array and decrypts; :class:`BatchedServer` runs the folded program with the public
files only (``serve`` runs it on an exchange folder, as ``pifair he-serve`` does). The first
engine, :class:`HEClient` and :class:`HEServer`, runs the unfolded program one SEAL call per
weight. See :func:`pifair.he.compile` for an example; ``pifair he-infer`` runs the whole round
trip with the server as its own process.
"""

from .secure.he.batched import BatchedClient, BatchedServer, CipherBatch
from .secure.he.compile import HEProgram, LinearStage, PolyStage
from .secure.he.compile import compile_model as compile
from .secure.he.engine import HEClient, HEServer
from .secure.he.exchange import serve
from .secure.he.fold import FoldedProgram, SquareStage, fold_for_batching
from .secure.he.fold import fold_program as fold
from .secure.he.lowerings import register_he_lowering
from .secure.he.params import CKKSParameters, choose_parameters, folded_parameters

__all__ = [
    "BatchedClient",
    "BatchedServer",
    "CKKSParameters",
    "CipherBatch",
    "FoldedProgram",
    "HEClient",
    "HEProgram",
    "HEServer",
    "LinearStage",
    "PolyStage",
    "SquareStage",
    "choose_parameters",
    "compile",
    "fold",
    "fold_for_batching",
    "folded_parameters",
    "register_he_lowering",
    "serve",
]
