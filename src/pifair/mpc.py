"""2PC/3PC inference through SecretFlow SPU (Cheetah, SEMI2K, ABY3).

``export`` turns any pifair model into a JAX function over its sites (the form SPU compiles);
:func:`run_party` plays one party, :func:`run_in_threads` all of them in one process.
"""

from .secure.mpc.engine import MPCSettings, PartyResult, run_party
from .secure.mpc.export import ExportedModel
from .secure.mpc.export import export_model as export
from .secure.mpc.lowerings import SiteExport, register_mpc_lowering
from .secure.mpc.placement import Placement, parse_parties, run_in_threads
from .secure.mpc.protocols import PROTOCOLS, get_protocol

__all__ = [
    "PROTOCOLS",
    "ExportedModel",
    "MPCSettings",
    "PartyResult",
    "Placement",
    "SiteExport",
    "export",
    "get_protocol",
    "parse_parties",
    "register_mpc_lowering",
    "run_in_threads",
    "run_party",
]
