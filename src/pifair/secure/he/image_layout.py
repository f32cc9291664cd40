"""The comparison layout: one image per ciphertext, features in the slots, rotations.

This is how CKKS inference is usually packed for a single query (and what batch-oriented
packing is measured against): the image's features fill one ciphertext (tiled, so that
rotating all slots rotates the feature vector cyclically), a linear stage ``y = W x`` is the
diagonal method, ``y = sum_d diag_d(W) * rot(x, d)``, with baby-step giant-step rotations
(about 2 sqrt(m) rotations for m features), and polynomial coefficients are plaintext vectors.
Same program, same parameters and the same exact-scale rules as the batch layout.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from .compile import HEProgram, LinearStage
from .engine import HEClient, HEServer
from .seal import sealapi

__all__ = ["ImageLayout", "image_layout_width"]


def image_layout_width(program: HEProgram) -> int:
    """The feature-vector length m: the next power of two above every stage's width."""
    widths = [program.input_features]
    for s in program.stages:
        widths += list(s.weights.shape) if isinstance(s, LinearStage) else [s.coefficients.shape[1]]
    return 1 << math.ceil(math.log2(max(widths)))


@dataclass
class _Diagonals:
    giant: int
    blocks: dict[int, list[tuple[int, object]]]  # giant step g -> [(baby step b, plaintext)]
    bias: object


class ImageLayout:
    """Runs ``program`` on one image per ciphertext; the client makes the rotation keys."""

    def __init__(self, program: HEProgram, client: HEClient, server: HEServer) -> None:
        self.program, self.client, self.server = program, client, server
        self.m = image_layout_width(program)
        slots = client.params.slots
        if self.m > slots:
            raise ConfigError(f"{self.m} features do not fit the {slots} slots of one ciphertext")
        self.tile = slots // self.m
        self.baby = 1 << math.ceil(math.log2(self.m) / 2)
        steps = sorted(set(range(1, self.baby)) | set(range(self.baby, self.m, self.baby)))
        t0 = time.perf_counter()
        self.galois = client.keys.galois_keys(steps)
        self.keygen_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.plans = self._encode_stages()
        self.setup_seconds = time.perf_counter() - t0

    # -- plaintext preparation (once per model) -------------------------------------------------
    def _tiled(self, v: np.ndarray) -> list[float]:
        full = np.zeros(self.m)
        full[: len(v)] = v
        return np.tile(full, self.tile).tolist()

    def _encode(self, v: np.ndarray, parms_id, scale: float):
        pt = sealapi().Plaintext()
        self.server.encoder.encode(self._tiled(v), parms_id, scale, pt)
        return pt

    def _encode_stages(self) -> list:
        srv, ctx = self.server, self.server.context
        pid = ctx.first_parms_id()
        chain = [pid]
        data = ctx.get_context_data(pid)
        while data.next_context_data() is not None:
            data = data.next_context_data()
            chain.append(data.parms_id())
        level, plans = 0, []
        for stage in self.program.stages:
            pid = chain[level]
            q = float(ctx.get_context_data(pid).parms().coeff_modulus()[-1].value())
            if isinstance(stage, LinearStage):
                w = stage.weights.toarray()
                full = np.zeros((self.m, self.m))
                full[: w.shape[0], : w.shape[1]] = w
                rows = np.arange(self.m)
                blocks: dict[int, list] = {}
                for d in range(self.m):
                    diag = full[rows, (rows + d) % self.m]
                    if not diag.any():
                        continue
                    g, b = divmod(d, self.baby)
                    blocks.setdefault(g, []).append(
                        (b, self._encode(np.roll(diag, g * self.baby), pid, q))
                    )
                bias = self._encode(stage.bias, chain[level + 1], srv.scale)
                plans.append(_Diagonals(self.baby, blocks, bias))
                level += 1
            else:
                c = stage.coefficients
                q2 = float(
                    ctx.get_context_data(chain[level + 1]).parms().coeff_modulus()[-1].value()
                )
                sq_scale = srv.scale**2 / q
                plans.append(
                    {
                        "c2": self._encode(c[2], chain[level + 1], srv.scale * q2 / sq_scale),
                        "c1": self._encode(c[1], chain[level + 1], q2),
                        "c0": self._encode(c[0], chain[level + 2], srv.scale),
                    }
                )
                level += 2
        return plans

    # -- one image ------------------------------------------------------------------------------
    def encrypt(self, x: np.ndarray):
        s, c = sealapi(), self.client
        pt, ct = s.Plaintext(), s.Ciphertext()
        c.encoder.encode(self._tiled(np.asarray(x, dtype=np.float64).ravel()), c.scale, pt)
        c.encryptor.encrypt(pt, ct)
        return ct

    def decrypt(self, ct, n: int) -> np.ndarray:
        s, c = sealapi(), self.client
        pt = s.Plaintext()
        c.decryptor.decrypt(ct, pt)
        return np.asarray(c.encoder.decode_double(pt))[:n]

    def _linear(self, plan: _Diagonals, x):
        s, ev = sealapi(), self.server.evaluator
        babies = {0: x}
        for b in {b for block in plan.blocks.values() for b, _ in block} - {0}:
            r = s.Ciphertext()
            ev.rotate_vector(x, b, self.galois, r)
            babies[b] = r
        total, tmp = None, s.Ciphertext()
        for g, block in plan.blocks.items():
            inner = None
            for b, pt in block:
                if inner is None:
                    inner = s.Ciphertext()
                    ev.multiply_plain(babies[b], pt, inner)
                else:
                    ev.multiply_plain(babies[b], pt, tmp)
                    ev.add_inplace(inner, tmp)
            if g:
                ev.rotate_vector_inplace(inner, g * plan.giant, self.galois)
            if total is None:
                total = inner
            else:
                ev.add_inplace(total, inner)
        ev.rescale_to_next_inplace(total)
        total.scale = self.server.scale
        ev.add_plain_inplace(total, plan.bias)
        return total

    def _poly(self, plan: dict, x):
        s, ev, srv = sealapi(), self.server.evaluator, self.server
        sq = s.Ciphertext()
        ev.square(x, sq)
        ev.relinearize_inplace(sq, srv.relin)
        ev.rescale_to_next_inplace(sq)
        a, b, x1 = s.Ciphertext(), s.Ciphertext(), s.Ciphertext()
        ev.multiply_plain(sq, plan["c2"], a)
        ev.mod_switch_to(x, sq.parms_id(), x1)
        ev.multiply_plain(x1, plan["c1"], b)
        b.scale = a.scale
        ev.add_inplace(a, b)
        ev.rescale_to_next_inplace(a)
        a.scale = srv.scale
        ev.add_plain_inplace(a, plan["c0"])
        return a

    def run(self, ct):
        for plan in self.plans:
            ct = self._linear(plan, ct) if isinstance(plan, _Diagonals) else self._poly(plan, ct)
        return ct
