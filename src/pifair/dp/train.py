"""``pifair dp-train`` as a function: a DP-SGD variant on Opacus, accounted, diagnosed, resumable.

Batches are drawn by Opacus' Poisson sampler (``UniformWithReplacementSampler``, or its
distributed form under ``torchrun``) as index lists into the split, which stays a tensor on the
device: the privacy analysis assumes Poisson sampling, and indexing a resident tensor avoids a
per-sample Python data path. The sampler, noise and count generators are reseeded from the run
seed and the epoch, so a resumed run repeats the same batches and noise.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import Dataset, load_dataset
from ..errors import ConfigError, UnsupportedLayerError
from ..extras import require
from ..models import create_model
from ..models.io import save_model
from ..runs import MODEL, Run
from ..training.loop import evaluate, resolve_device
from .accounting import PrivacyLedger, check_privacy_target, noise_for_target
from .config import DPConfig
from .diagnostics import group_alignment, per_sample_grads, privacy_cost
from .rules import make_rule

__all__ = ["dp_train", "check_dp_compatible", "sample_rate_for"]

ALIGNMENT = "alignment.json"  # per step and group: direction and magnitude error
UNACCOUNTED_NOTE = (
    "Misalignment diagnostics (per-group batch counts, cosines and norm ratios of clipped vs "
    "unclipped gradients) are exact statistics of the private training data: epsilon does NOT "
    "cover them. Keep alignment.json and the history's 'alignment' entries for research; do "
    "not release them with the model."
)


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
        )  # fmt: skip
    first = "; ".join(str(e).split(". ")[0] for e in errors[:3])
    raise UnsupportedLayerError(f"this model cannot be trained with DP-SGD (Opacus): {first}")


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    dist = torch.distributed
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1_009 + stream)


class _Private:
    """The Opacus objects of a private run: wrapped module, optimizer, sampler, ledger."""

    def __init__(
        self, cfg: DPConfig, model: nn.Module, data: Dataset, rank: int, world: int
    ) -> None:
        gsm = require("opacus.grad_sample", extra="dp", purpose="DP-SGD")
        from .optimizers import optimizer_class

        n = len(data.train)
        self.cfg, self.rank, self.world = cfg, rank, world
        self.sample_rate = sample_rate_for(cfg, n)
        self.steps_per_epoch = max(1, int(1 / self.sample_rate))
        self.rule = make_rule(
            cfg.method, clip=cfg.clip, z=cfg.z, count_noise=cfg.count_noise, eta_z=cfg.eta_z,
            tau=cfg.tau, num_groups=len(data.group_names),
        )  # fmt: skip
        check_privacy_target(cfg.epsilon, cfg.delta, n)
        self.noise_multiplier = cfg.noise_multiplier or noise_for_target(
            cfg.epsilon, cfg.delta, sample_rate=self.sample_rate,
            steps=self.steps_per_epoch * cfg.epochs, extra_releases=self.rule.releases_per_step(),
        )  # fmt: skip
        fast = cfg.grad_path == "ghost"
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
            base, rule=self.rule, noise_multiplier=self.noise_multiplier,
            expected_batch_size=max(1, round(self.sample_rate * n / world)),
            secure_mode=cfg.secure_noise,
        )  # fmt: skip
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
            return _lockstep_poisson(n, self.sample_rate, self.steps_per_epoch, self.rank, self.world, seed + epoch, gen)  # fmt: skip
        sampler = sampler_mod.UniformWithReplacementSampler(
            num_samples=n, sample_rate=self.sample_rate, generator=gen
        )
        return [list(b) for b in sampler]

    def backward(self, loss_per_sample: torch.Tensor) -> None:
        if self.fast:
            from .optimizers import ghost_backward

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


def _nonprivate_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=_generator(seed, epoch, 0))
    return list(order.split(batch_size))


def dp_train(
    cfg: DPConfig,
    *,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
) -> Run | None:
    """Train ``cfg.model`` with ``cfg.method``; returns the run (``None`` on ranks other than 0)."""
    if cfg.baseline:
        _check_baseline(cfg.baseline)
    rank, world = _distributed()
    if world > 1 and not cfg.private:
        raise ConfigError("the non-private baseline trains in one process: run it without torchrun")
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    data = load_dataset(**cfg.data_config.load_kwargs(cfg.seed))
    model = create_model(
        cfg.model, num_classes=data.num_classes, input_shape=data.input_shape, **cfg.model_options()
    )
    if cfg.private:
        check_dp_compatible(model)
    model.to(device)
    run = None
    if rank == 0:
        run = Run.resume(resume, cfg.as_dict(), normalize=lambda d: DPConfig.from_dict(d).as_dict()) if resume else Run.create("dp-train", cfg.as_dict(), out=out)  # fmt: skip
    private = _Private(cfg, model, data, rank, world) if cfg.private else None
    optimizer = private.optimizer if private else torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)  # fmt: skip
    history: list[dict] = []
    start = 0
    ckpt = Run.open(resume).load_checkpoint() if resume else None
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        history, start = ckpt["history"], ckpt["epoch"]
        if private:
            private.load_state(ckpt["private"])
    if run and cfg.releases_unaccounted_diagnostics:
        run.log.warning(UNACCOUNTED_NOTE)
        run.update_metrics(unaccounted_diagnostics={"covered_by_epsilon": False, "files": [ALIGNMENT], "history_key": "alignment", "note": UNACCOUNTED_NOTE})  # fmt: skip
    if run:
        run.log.info(
            "dp-train %s on %s: %d train samples, %d groups, world size %d%s", cfg.method, cfg.data,
            len(data.train), len(data.group_names), world,
            f", noise multiplier {private.noise_multiplier:.4f}, sample rate {private.sample_rate:.5f}" if private else "",
        )  # fmt: skip
    train = data.train.to(device)
    for epoch in range(start, cfg.epochs):
        record = _train_epoch(cfg, model, data, train, optimizer, private, epoch, device, progress and rank == 0)  # fmt: skip
        if world > 1:
            torch.distributed.barrier()
        if rank != 0:
            continue
        measured = record.pop("_measured")
        if measured:
            previous = json.loads(run.file(ALIGNMENT).read_text()) if run.file(ALIGNMENT).exists() else []  # fmt: skip
            run.write_json(ALIGNMENT, [m for m in previous if m["epoch"] <= epoch] + measured)
        test = evaluate(model, data, "test")
        record |= {
            "test_accuracy": test.accuracy,
            "test_groups": {r.name: r.accuracy for r in test.groups},
        }
        if private:
            record |= {
                "epsilon": private.ledger.epsilon(cfg.delta),
                "rule_state": private.rule.state(),
            }
        history.append(record)
        run.save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
            "epoch": epoch + 1, "private": private.state() if private else None,
        })  # fmt: skip
        run.log.info(
            "epoch %d: loss %.4f, test %.4f%s, %.0f samples/s", epoch + 1, record["train_loss"],
            test.accuracy, f", epsilon {record['epsilon']:.3f}" if private else "", record["samples_per_s"],
        )  # fmt: skip
    in_sync = _ranks_agree(model) if world > 1 else True
    if rank != 0:
        return None
    _finish(cfg, run, model, data, history, private, world_size=world, ranks_in_sync=in_sync)
    return run


def _ranks_agree(model: nn.Module) -> bool:
    """Whether every rank ends with the same weights (the data-parallel invariant)."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()
    high, low = flat.clone(), flat.clone()
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    return bool((high - low).abs().max() <= 1e-6)


def _check_baseline(path: str) -> None:
    base = Run.open(path)
    if base.config.get("command") != "dp-train" or "test_groups" not in base.metrics:
        raise ConfigError(
            f"--baseline {path} is not a finished dp-train run; train one with "
            f"`pifair dp-train --method nonprivate` on the same data first"
        )


def _train_epoch(cfg, model, data, train, optimizer, private, epoch, device, progress) -> dict:
    model.train()
    n = len(train)
    batches = private.start_epoch(epoch, n) if private else _nonprivate_batches(n, cfg.batch_size, cfg.seed, epoch)  # fmt: skip
    loss_sum, seen, t0, diag_seconds = 0.0, 0, time.perf_counter(), 0.0
    alignment: dict[int, list[tuple[float, float]]] = {}
    measured: list[dict] = []  # per step and group: written to alignment.json
    for step, idx in enumerate(tqdm(batches, desc=f"dp epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None if progress else True)):  # fmt: skip
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
        loss = F.cross_entropy(model(x), y, reduction="none")
        if private:
            private.backward(loss)
        else:
            loss.mean().backward()
        optimizer.step()
        if diag:
            for a in group_alignment(grads, optimizer.last_step.factors, g):
                alignment.setdefault(a.group, []).append((a.cosine, a.norm_ratio))
                measured.append({"epoch": epoch + 1, "step": step, "group": data.group_names[a.group],
                                 "count": a.count, "cosine": a.cosine, "norm_ratio": a.norm_ratio})  # fmt: skip
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


def _finish(
    cfg: DPConfig, run: Run, model: nn.Module, data: Dataset, history: list[dict], private, **extra
) -> None:
    from ..report import plots

    test = evaluate(model, data, "test")
    save_model(run.file(MODEL), model, name=cfg.model, num_classes=data.num_classes, input_shape=data.input_shape, options=cfg.model_options())  # fmt: skip
    metrics = {
        "kind": "dp-train", "method": cfg.method, "model": cfg.model, "data": data.summary(),
        "history": history, "test": test.as_dict(), "test_accuracy": test.accuracy,
        "test_groups": {r.name: r.accuracy for r in test.groups},
        "samples_per_s": sum(h["samples"] for h in history) / max(sum(h["seconds"] for h in history), 1e-9),
        **extra,
    }  # fmt: skip
    if private:
        metrics |= {
            "epsilon": private.ledger.epsilon(cfg.delta), "delta": cfg.delta,
            "noise_multiplier": private.noise_multiplier, "sample_rate": private.sample_rate,
            "steps": private.steps_per_epoch * cfg.epochs, "releases": private.ledger.state(),
            "rule_state": private.rule.state(),
        }  # fmt: skip
    if cfg.baseline:
        base = Run.open(cfg.baseline).metrics
        cost = privacy_cost(base["test_groups"], metrics["test_groups"])
        metrics |= {"baseline": cfg.baseline, "privacy_cost": cost,
                    "privacy_cost_gap": max(cost.values()) - min(cost.values())}  # fmt: skip
    run.update_metrics(**metrics)
    plots.dp_curves(history, run.file("dp_curves.png"), title=f"{cfg.method} on {cfg.data}")
    plots.group_accuracy(test.as_dict(), run.file("groups.png"), title=f"test accuracy per group, {cfg.method}")  # fmt: skip
    run.log.info("test accuracy %.4f\n%s", test.accuracy, test.table())
