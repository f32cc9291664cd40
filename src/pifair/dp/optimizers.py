"""The DP-SGD variants as Opacus ``DPOptimizer`` subclasses, one per gradient path.

A :class:`~pifair.dp.rules.ClippingRule` decides the per-sample factors; these classes only
place that decision where Opacus expects it:

- hooks path (Opacus' ``GradSampleModule``): per-sample gradients are materialised and
  ``clip_and_accumulate`` scales them with the rule's factors (the reference path);
- fast path (Opacus' ``GradSampleModuleFastGradientClipping``, ghost clipping): the first
  backward pass gives only the per-sample norms, the rule turns them into factors, and a second
  backward pass of ``sum_i s_i * loss_i`` yields ``sum_i s_i g_i`` directly (see
  :func:`ghost_backward`). Every method, not only flat clipping, gets this path.

Noise: Opacus' ``add_noise`` draws ``N(0, (noise_multiplier * max_grad_norm)^2)``; the rule's
sensitivity (C, or DPSGD-F's largest group bound) is written to ``max_grad_norm`` each step.
"""

from __future__ import annotations

import functools
import warnings

import torch

from ..extras import require
from . import conv_norms
from .rules import ClippingRule, StepScale

__all__ = [
    "ghost_backward",
    "optimizer_class",
]


# Opacus' hooks see inputs that need no gradient (the images): PyTorch warns on every step.
warnings.filterwarnings(
    "ignore", message="Full backward hook is firing when gradients are computed"
)


def _sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


class _RuleMixin:
    """Holds the rule, the groups of the coming step and the last step's decision."""

    def _init_rule(self, rule: ClippingRule, count_generator: torch.Generator | None) -> None:
        self.rule = rule
        self.count_generator = count_generator
        self.world_size = getattr(self, "world_size", 1)
        self._groups: torch.Tensor | None = None
        self.last_step: StepScale | None = None
        if self.world_size > 1:
            rule.reduce_counts = _sum_across_ranks

    def set_groups(self, groups: torch.Tensor | None) -> None:
        """Group label of every sample of the next step (DPSGD-F and the diagnostics need it)."""
        self._groups = groups

    def apply_rule(self, norms: torch.Tensor) -> torch.Tensor:
        """The rule's factors for per-sample gradient norms ``norms``; sets the noise scale."""
        step = self.rule.scale(
            norms,
            self._groups,
            expected_batch_size=self.expected_batch_size * self.world_size,
            generator=self.count_generator,
        )
        self.last_step = step
        self.max_grad_norm = step.sensitivity  # Opacus' add_noise: std = sigma * max_grad_norm
        return step.factors


class _HooksClipping:
    """``clip_and_accumulate`` over materialised per-sample gradients (Opacus' hooks path)."""

    def per_sample_norms(self) -> torch.Tensor:
        grads = self.grad_samples
        if len(grads[0]) == 0:
            return torch.zeros(0, device=grads[0].device)
        per_param = [g.reshape(len(g), -1).norm(2, dim=-1) for g in grads]
        return torch.stack(per_param, dim=1).norm(2, dim=1)

    def clip_and_accumulate(self) -> None:
        factors = self.apply_rule(self.per_sample_norms())
        # Opacus' private helpers: the processed flag keeps a gradient from being used twice
        _optimizer_mod = require("opacus.optimizers.optimizer", extra="dp", purpose="DP-SGD")
        for p in self.params:
            _optimizer_mod._check_processed_flag(p.grad_sample)
            grad_sample = self._get_flat_grad_sample(p).to(p.dtype)
            grad = torch.einsum("i,i...", factors.to(grad_sample.device, p.dtype), grad_sample)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _optimizer_mod._mark_as_processed(p.grad_sample)


def _init(self, base, optimizer, rule, noise_multiplier, expected_batch_size, kwargs):
    count_generator = kwargs.pop("count_generator", None)
    base.__init__(
        self,
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=rule.clip,
        expected_batch_size=expected_batch_size,
        **kwargs,
    )
    self._init_rule(rule, count_generator)


@functools.cache
def _optimizer_classes() -> dict[tuple[bool, bool], type]:
    """The four optimizer classes, keyed by (fast, distributed).

    Built on first use so that importing pifair needs no Opacus (the ``dp`` extra): their base
    classes are Opacus'.
    """
    opt = require("opacus.optimizers", extra="dp", purpose="DP-SGD")
    conv_norms.install()  # Conv2d on the ghost path: mixed ghost norms, no per-sample gradients

    def make(name: str, base: type, hooks: bool, doc: str) -> type:
        def __init__(
            self,
            optimizer,
            *,
            rule: ClippingRule,
            noise_multiplier: float,
            expected_batch_size: int,
            **kwargs,
        ) -> None:
            _init(self, base, optimizer, rule, noise_multiplier, expected_batch_size, kwargs)

        bases = (_RuleMixin, _HooksClipping, base) if hooks else (_RuleMixin, base)
        return type(name, bases, {"__init__": __init__, "__doc__": doc, "__module__": __name__})

    return {
        (False, False): make(
            "FairDPOptimizer",
            opt.DPOptimizer,
            True,
            "DPSGD / Global / Global-Adapt / DPSGD-F (by ``rule``) over Opacus' per-sample "
            "gradients.",
        ),
        (True, False): make(
            "FairDPOptimizerFast",
            opt.DPOptimizerFastGradientClipping,
            False,
            "The same methods on Opacus' ghost-clipping path; pair it with ghost_backward.",
        ),
        (False, True): make(
            "DistributedFairDPOptimizer",
            opt.DistributedDPOptimizer,
            True,
            "FairDPOptimizer under DDP: counts summed across ranks, noise on rank 0 only.",
        ),
        (True, True): make(
            "DistributedFairDPOptimizerFast",
            opt.DistributedDPOptimizerFastGradientClipping,
            False,
            "FairDPOptimizerFast under DDP.",
        ),
    }


_CLASS_KEYS = {
    "FairDPOptimizer": (False, False),
    "FairDPOptimizerFast": (True, False),
    "DistributedFairDPOptimizer": (False, True),
    "DistributedFairDPOptimizerFast": (True, True),
}


def optimizer_class(*, fast: bool, distributed: bool) -> type:
    """The optimizer class for a gradient path (hooks or ghost) and a world size (1 or more)."""
    return _optimizer_classes()[(fast, distributed)]


def __getattr__(name: str) -> type:
    """``from pifair.dp.optimizers import FairDPOptimizer`` builds the classes (needs Opacus)."""
    if name in _CLASS_KEYS:
        return _optimizer_classes()[_CLASS_KEYS[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ghost_backward(module, optimizer, loss_per_sample: torch.Tensor) -> None:
    """Two backward passes: per-sample norms (no per-sample gradients for ghost-clipped layers),
    then the gradient of ``sum_i s_i * loss_i`` with the rule's factors ``s_i``."""
    loss_per_sample.mean().backward(retain_graph=True)
    factors = optimizer.apply_rule(module.get_norm_sample())
    optimizer.zero_grad()
    module.disable_hooks()
    try:
        (factors.detach().to(loss_per_sample.dtype) * loss_per_sample).sum().backward()
    finally:
        module.enable_hooks()
