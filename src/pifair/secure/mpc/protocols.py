"""The MPC protocols pifair runs through SPU, with who must be trusted for each."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ...errors import ConfigError
from ...extras import require

__all__ = ["Protocol", "PROTOCOLS", "OT_KINDS", "get_protocol", "runtime_config", "ROLES"]

#: what each rank does in an inference (rank 2 exists under 3PC only)
ROLES = ("server (model owner)", "client (image owner)", "helper")

#: Cheetah's oblivious-transfer engines: silent OT (Ferret, the paper's) or SoftSpoken
OT_KINDS = {"ferret": "YACL_Ferret", "softspoken": "YACL_Softspoken"}


@dataclass(frozen=True)
class Protocol:
    """One SPU protocol: its name, party count and security model (printed with every result)."""

    name: str
    spu_kind: str
    parties: int
    security: str


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "cheetah",
            "CHEETAH",
            2,
            "2PC, semi-honest, no dealer: HE for linear layers, OT for comparisons",
        ),
        Protocol(
            "semi2k",
            "SEMI2K",
            2,
            "2PC with a TRUSTED FIRST PARTY: rank 0 (the server) deals the Beaver triples, so "
            "the run is not secure against rank 0 in the offline phase",
        ),
        Protocol("aby3", "ABY3", 3, "3PC, honest majority (replicated secret sharing)"),
    )
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name`` (case-insensitive), or an error listing the known ones."""
    key = name.lower()
    if key not in PROTOCOLS:
        raise ConfigError(f"unknown MPC protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[key]


def runtime_config(
    protocol: Protocol,
    *,
    ot: str = "ferret",
    fraction_bits: int = 18,
    profile: bool = True,
):
    """SPU's runtime config: 64-bit ring, ``fraction_bits`` of fixed point, profiling on.

    Built from JSON because this SPU build's Python binding does not expose Cheetah's OT kind.
    """
    libspu = require("spu.libspu", extra="mpc", purpose="MPC inference", package="spu")
    if ot not in OT_KINDS:
        raise ConfigError(f"unknown OT kind {ot!r}; choose one of {sorted(OT_KINDS)}")
    if not 1 <= fraction_bits <= 40:
        raise ConfigError(
            f"fraction_bits must be in [1, 40] for the 64-bit ring, got {fraction_bits}"
        )
    spec = {
        "protocol": protocol.spu_kind,
        "field": "FM64",
        "fxp_fraction_bits": fraction_bits,
        "enable_pphlo_profile": profile,
    }
    if protocol.spu_kind == "CHEETAH":
        spec["cheetah_2pc_config"] = {"ot_kind": OT_KINDS[ot]}
    if protocol.spu_kind == "SEMI2K":
        spec["beaver_type"] = "TrustedFirstParty"
    config = libspu.RuntimeConfig()
    if not config.ParseFromJsonString(json.dumps(spec)):
        raise RuntimeError(f"SPU rejected the runtime config {spec}")
    return config
