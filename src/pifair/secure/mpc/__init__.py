"""2PC/3PC private inference through SecretFlow SPU (docs/mpc.md).

:func:`export_model` turns a pifair model into a JAX function over its sites; :func:`run_party`
plays one party of an inference over a link (:func:`make_link`); :func:`run_in_threads` runs all
parties in this process, :func:`run_in_processes` one process per party (each one profiled).
SPU's per-op profile (bytes, messages, seconds) comes back as
:class:`RunProfile`. SPU is the optional ``mpc`` extra (Python 3.10-3.11, numpy < 2).
"""

from .engine import MPCSettings, PartyResult, configure_spu_log, make_link, run_party
from .export import ExportedModel, SiteExport, export_model
from .placement import (
    Placement,
    free_loopback_addresses,
    parse_parties,
    run_in_processes,
    run_in_threads,
)
from .profile import CATEGORIES, OpCost, RunProfile, parse_profile
from .protocols import PROTOCOLS, Protocol, get_protocol

__all__ = [
    "CATEGORIES",
    "ExportedModel",
    "MPCSettings",
    "OpCost",
    "PROTOCOLS",
    "PartyResult",
    "Placement",
    "Protocol",
    "RunProfile",
    "SiteExport",
    "configure_spu_log",
    "export_model",
    "free_loopback_addresses",
    "get_protocol",
    "make_link",
    "parse_parties",
    "parse_profile",
    "run_in_processes",
    "run_in_threads",
    "run_party",
]
