"""CKKS inference (TenSEAL/SEAL), batch-packed: one image per slot.

``compile`` turns an HE-ready model (polynomial activations) into a program of affine and
polynomial stages; :class:`HEClient` holds the secret key and encrypts, :class:`HEServer` runs
the program on ciphertexts with the public keys only.
See :func:`pifair.he.compile` for an example; ``pifair he-infer`` runs the whole round trip.
"""

from .secure.he.compile import HEProgram, LinearStage, PolyStage
from .secure.he.compile import compile_model as compile
from .secure.he.engine import HEClient, HEServer
from .secure.he.lowerings import register_he_lowering
from .secure.he.params import CKKSParameters, choose_parameters

__all__ = [
    "CKKSParameters",
    "HEClient",
    "HEProgram",
    "HEServer",
    "LinearStage",
    "PolyStage",
    "choose_parameters",
    "compile",
    "register_he_lowering",
]
