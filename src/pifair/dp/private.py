"""DP-SGD training pieces on Opacus: the private objects of a run and one epoch of training.

Batches are drawn by Opacus' Poisson sampler (``UniformWithReplacementSampler``, or its
distributed form under ``torchrun``) as index lists into the split, which stays a tensor on the
device: the privacy analysis assumes Poisson sampling, and indexing a resident tensor avoids a
per-sample Python data path. The sampler, noise and count generators are reseeded from the run
seed and the epoch, so a resumed run repeats the same batches and noise. Library code: the run
folder, checkpoints and plots are :mod:`pifair.workflows.dp_train`.
"""

from __future__ import annotations

import copy
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import Dataset
from ..errors import ConfigError, UnsupportedLayerError
from ..extras import require
from .accounting import PrivacyLedger, check_privacy_target, noise_for_target
from .config import DPConfig
from .diagnostics import group_alignment, per_sample_grads
from .optimizers import ghost_backward, optimizer_class
from .rules import make_rule

__all__ = [
    "PrivateTraining",
    "check_dp_compatible",
    "distributed_rank",
    "nonprivate_batches",
    "ranks_agree",
    "sample_rate_for",
    "autocast",
    "resolve_grad_path",
    "train_epoch",
]


def sample_rate_for(cfg: DPConfig, n: int) -> float:
    return min(1.0, cfg.batch_size / n)


def check_dp_compatible(model: nn.Module) -> None:
    """Opacus' validator, with an error that says what to change."""
    validators = require("opacus.validators", extra="dp", purpose="DP-SGD")
    errors = validators.ModuleValidator.validate(model, strict=False)
    if not errors:
        return
    batch_norms = [
        n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if batch_norms:
        shown = ", ".join(batch_norms[:4]) + (
            f" and {len(batch_norms) - 4} more" if len(batch_norms) > 4 else ""
        )
        raise UnsupportedLayerError(
            f"this model cannot be trained with DP-SGD: it has batch norm ({shown}), which mixes "
            f"the samples of a batch, so per-sample gradients are undefined. Use a model with "
            f"group norm or none (fairdp_cnn, mlp), or convert it with "
            f"opacus.validators.ModuleValidator.fix(model)"
        )
    first = "; ".join(str(e).split(". ")[0] for e in errors[:3])
    raise UnsupportedLayerError(f"this model cannot be trained with DP-SGD (Opacus): {first}")


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    dist = torch.distributed
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


# Per-sample gradients of a batch above this many bytes: the ghost path (the threshold and the
# models on each side of it: benchmarks/results/dp_speed.json, from benchmarks/dp_speed.py).
HOOKS_MAX_BYTES = 256 * 2**20


def resolve_grad_path(path: str, model: nn.Module, batch_size: int) -> str:
    """``auto``: hooks when the model has convolutions and a batch's per-sample gradients fit in
    :data:`HOOKS_MAX_BYTES` (small conv nets: materialising them costs less than the ghost
    path's second backward pass), ghost otherwise (linear layers have exact ghost norms; large
    models' per-sample gradients do not fit). ``ghost`` and ``hooks`` are kept as given."""
    if path != "auto":
        return path
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return "hooks" if has_conv and batch_size * params * 4 <= HOOKS_MAX_BYTES else "ghost"


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1_009 + stream)


class PrivateTraining:
    """The Opacus objects of a private run: wrapped module, optimizer, sampler, ledger."""

    def __init__(
        self, cfg: DPConfig, model: nn.Module, data: Dataset, rank: int, world: int
    ) -> None:
        gsm = require("opacus.grad_sample", extra="dp", purpose="DP-SGD")
        n = len(data.train)
        self.cfg, self.rank, self.world = cfg, rank, world
        self.sample_rate = sample_rate_for(cfg, n)
        self.steps_per_epoch = max(1, int(1 / self.sample_rate))
        self.rule = make_rule(cfg.method, **cfg.rule_settings(), num_groups=len(data.group_names))
        check_privacy_target(cfg.epsilon, cfg.delta, n)
        self.noise_multiplier = cfg.noise_multiplier or noise_for_target(
            cfg.epsilon,
            cfg.delta,
            sample_rate=self.sample_rate,
            steps=self.steps_per_epoch * cfg.epochs,
            extra_releases=self.rule.releases_per_step(),
        )
        self.grad_path = resolve_grad_path(cfg.grad_path, model, cfg.batch_size)
        fast = self.grad_path == "ghost"
        if fast:
            self.module = gsm.GradSampleModuleFastGradientClipping(
                model, max_grad_norm=cfg.clip, use_ghost_clipping=True
            )
        else:
            self.module = gsm.GradSampleModule(model)
        if world > 1:
            ddp = require("opacus.distributed", extra="dp", purpose="distributed DP-SGD")
            ddp.DifferentiallyPrivateDistributedDataParallel(model)  # broadcasts rank 0's weights
        self.fast = fast
        base = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        self.optimizer = optimizer_class(fast=fast, distributed=world > 1)(
            base,
            rule=self.rule,
            noise_multiplier=self.noise_multiplier,
            expected_batch_size=max(1, round(self.sample_rate * n / world)),
            secure_mode=cfg.secure_noise,
        )
        self.ledger = PrivacyLedger()
        self.optimizer.attach_step_hook(self._charge)
        self.twin: nn.Module | None = None

    def _charge(self, optimizer) -> None:
        self.ledger.charge(self.noise_multiplier, self.sample_rate)
        for s in optimizer.last_step.releases:
            self.ledger.charge(s, self.sample_rate)

    def start_epoch(self, epoch: int, n: int) -> list[list[int]]:
        seed = self.cfg.seed
        # Noise seeds: from the run seed (reproducible), or with --secure-noise from the OS
        # (unpredictable; rank 0's draw is shared so every rank draws the same count noise).
        noise_seed = _secret_seed(self.world) if self.cfg.secure_noise else seed
        self.optimizer.generator = _generator(noise_seed, epoch, 1 + self.rank)
        # Same count noise on every rank: the count is released once, for the whole batch.
        self.optimizer.count_generator = _generator(noise_seed, epoch, 7_919)
        sampler_mod = require("opacus.utils.uniform_sampler", extra="dp", purpose="DP-SGD")
        gen = _generator(seed, epoch, 104_729 + self.rank)
        if self.world > 1:
            return _lockstep_poisson(
                n, self.sample_rate, self.steps_per_epoch, self.rank, self.world, seed + epoch, gen
            )
        sampler = sampler_mod.UniformWithReplacementSampler(
            num_samples=n, sample_rate=self.sample_rate, generator=gen
        )
        return [list(b) for b in sampler]

    def backward(self, loss_per_sample: torch.Tensor) -> None:
        if self.fast:
            ghost_backward(self.module, self.optimizer, loss_per_sample)
        else:
            loss_per_sample.mean().backward()

    def diagnostic_grads(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample gradients through torch.func, on a hook-free twin of ``model`` (Opacus'
        backward hooks are autograd Functions that functorch cannot transform)."""
        if self.twin is None:
            self.twin = copy.deepcopy(model)
            for m in self.twin.modules():
                m._forward_hooks.clear()
                m._forward_pre_hooks.clear()
                m._backward_hooks.clear()
                m._backward_pre_hooks.clear()
        self.twin.load_state_dict(model.state_dict())
        return per_sample_grads(self.twin, x, y)

    def empty_step(self) -> None:
        """A Poisson batch can be empty: the step still releases noise and is accounted."""
        opt = self.optimizer
        opt.apply_rule(torch.zeros(0))
        for p in opt.params:
            p.summed_grad = torch.zeros_like(p)
        opt.add_noise()
        opt.scale_grad()
        self._charge(opt)
        if self.world > 1:
            opt.reduce_gradients()
        opt.original_optimizer.step()

    def state(self) -> dict:
        return {"ledger": self.ledger.state(), "rule": self.rule.state()}

    def load_state(self, state: dict) -> None:
        self.ledger = PrivacyLedger.from_state(state["ledger"])
        self.rule.load_state(state["rule"])


def _secret_seed(world: int) -> int:
    seed = torch.tensor([int.from_bytes(os.urandom(4), "little")], dtype=torch.int64)
    if world > 1:
        torch.distributed.broadcast(seed, src=0)
    return int(seed)


def _lockstep_poisson(
    n: int, rate: float, steps: int, rank: int, world: int, shuffle_seed: int, gen: torch.Generator
) -> list[list[int]]:
    """Poisson batches of this rank's shard, one per step, empty ones included.

    Opacus' ``DistributedUniformWithReplacementSampler`` skips a rank's empty local batch, so
    the ranks would take different numbers of steps and block in the gradient all-reduce; the
    sampling here is the same (a seeded shuffle split by rank, then Poisson), in lockstep.
    """
    shard = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))[rank::world]
    return [shard[torch.rand(len(shard), generator=gen) < rate].tolist() for _ in range(steps)]


def nonprivate_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=_generator(seed, epoch, 0))
    return list(order.split(batch_size))


def ranks_agree(model: nn.Module) -> bool:
    """Whether every rank ends with the same weights (the data-parallel invariant)."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()
    high, low = flat.clone(), flat.clone()
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    return bool((high - low).abs().max() <= 1e-6)


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The forward pass's precision: ``bf16`` is bfloat16 autocast, refused on a CUDA device
    without bfloat16 (Opacus' per-sample gradients and norms accept bf16 activations)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use "
            "--precision fp32"
        )
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_epoch(cfg, model, data, train, optimizer, private, epoch, device, progress) -> dict:
    model.train()
    n = len(train)
    batches = (
        private.start_epoch(epoch, n)
        if private
        else nonprivate_batches(n, cfg.batch_size, cfg.seed, epoch)
    )
    loss_sum, seen, t0, diag_seconds = 0.0, 0, time.perf_counter(), 0.0
    alignment: dict[int, list[tuple[float, float]]] = {}
    measured: list[dict] = []  # per step and group: written to alignment.json
    for step, idx in enumerate(
        tqdm(
            batches,
            desc=f"dp epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=None if progress else True,
        )
    ):
        optimizer.zero_grad()
        if len(idx) == 0:
            private.empty_step()
            continue
        idx = torch.as_tensor(idx, device=device)
        x, y, g = data.normalize(train.x[idx]), train.y[idx], train.groups[idx]
        diag = private is not None and cfg.diag_every > 0 and step % cfg.diag_every == 0
        t_diag = time.perf_counter()
        grads = private.diagnostic_grads(model, x, y) if diag else None
        diag_seconds += time.perf_counter() - t_diag
        if private:
            optimizer.set_groups(g)
        with autocast(cfg.precision, device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        if private:
            private.backward(loss)
        else:
            loss.mean().backward()
        optimizer.step()
        if diag:
            for a in group_alignment(grads, optimizer.last_step.factors, g):
                alignment.setdefault(a.group, []).append((a.cosine, a.norm_ratio))
                measured.append(
                    {
                        "epoch": epoch + 1,
                        "step": step,
                        "group": data.group_names[a.group],
                        "count": a.count,
                        "cosine": a.cosine,
                        "norm_ratio": a.norm_ratio,
                    }
                )
        loss_sum += float(loss.detach().sum())
        seen += len(idx)
    elapsed = time.perf_counter() - t0 - diag_seconds  # training only: diagnostics are extra
    names = data.group_names
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(seen, 1),
        "samples": seen,
        "seconds": elapsed,
        "samples_per_s": seen / elapsed if elapsed > 0 else math.nan,
        "alignment": {
            names[k]: {
                "cosine": sum(c for c, _ in v) / len(v),
                "norm_ratio": sum(r for _, r in v) / len(v),
                "measurements": len(v),
            }
            for k, v in sorted(alignment.items())
        },
        "_measured": measured,
    }
