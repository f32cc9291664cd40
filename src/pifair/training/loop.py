"""The training loop: SGD with a cosine or one-cycle schedule, per-epoch validation, atomic
checkpoints and resume. Used by ``pifair train`` and by every fine-tuning step (SNL, sharing,
polynomials) through ``loss_fn``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import Dataset, ResidentLoader, make_dataloader
from ..errors import ConfigError, TrainingDivergedError
from .group_metrics import GroupReport, group_report
from .objective import Objective, end_epoch, objective_state, restore_objective

__all__ = [
    "CheckpointStore",
    "LoopSettings",
    "autocast_for",
    "evaluate",
    "fit",
    "predict",
    "resolve_device",
]


class CheckpointStore(Protocol):
    """Where :func:`fit` keeps its per-epoch checkpoint and log; a run folder
    (:class:`pifair.runs.Run`) is one. The library never creates run folders itself."""

    log: logging.Logger

    def load_checkpoint(self, *, map_location: Any = ...) -> dict[str, Any] | None: ...

    def save_checkpoint(self, state: dict) -> None: ...


# (logits, labels, inputs, groups) -> loss
LossFn = Objective


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; other names are passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(
            f"unknown device {name!r}; use auto, cpu, cuda or cuda:N ({err})"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} asked for, but CUDA is not available here; use --device cpu"
        )
    return device


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (tensor cores), nothing on CPU (bf16 is slower there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class LoopSettings:
    """What the loop needs beyond model and data."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    seed: int = 0
    device: torch.device | None = None
    loader: Literal["resident", "dataloader"] = "resident"
    optimizer: Literal["sgd", "adam"] = "sgd"
    progress: bool = True
    grad_clip: float | None = None  # max global gradient norm (None: no clipping)


def _make_loader(data: Dataset, split: str, s: LoopSettings, device: torch.device, *, train: bool):
    if s.loader == "dataloader":
        return make_dataloader(data, split, batch_size=s.batch_size, shuffle=train, seed=s.seed)
    return ResidentLoader(
        data,
        split,
        batch_size=s.batch_size,
        device=device,
        shuffle=train,
        augment=train,
        drop_last=train and len(data.split(split)) > s.batch_size,
        seed=s.seed,
        channels_last=device.type == "cuda",
    )


def _batches(loader, data: Dataset, device: torch.device):
    for x, y, g in loader:
        # the DataLoader path: move and normalise per batch. Not "x.device != device": a
        # resident batch on cuda:0 differs from torch.device("cuda") and was normalised twice
        if not isinstance(loader, ResidentLoader):
            x, y, g = (
                x.to(device, non_blocking=True),
                y.to(device, non_blocking=True),
                g.to(device, non_blocking=True),
            )
            x = data.normalize(x)
        yield x, y, g


def _optimizer(model: nn.Module, s: LoopSettings, steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    if s.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    else:
        opt = torch.optim.SGD(
            params,
            lr=s.lr,
            momentum=s.momentum,
            weight_decay=s.weight_decay,
            nesterov=s.momentum > 0,
        )
    total = s.epochs * steps
    if s.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=s.lr, total_steps=total, pct_start=0.25
        )
    elif s.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
        )
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    return opt, sched


def _restore(
    checkpoints: CheckpointStore,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    loss_fn: LossFn,
    device: torch.device,
) -> tuple[list[dict], int, dict | None]:
    """Load the last checkpoint into the model, optimizer, schedule and objective; returns its
    history, the epoch to start from and the best epoch so far (none saved: a fresh start)."""
    state = checkpoints.load_checkpoint(map_location=device)
    if state is None:
        return [], 0, None
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    restore_objective(loss_fn, state.get("loss"))
    checkpoints.log.info("resumed from epoch %d", state["epoch"])
    return state["history"], state["epoch"], state.get("best")


def _train_epoch(
    model: nn.Module,
    batches: Any,
    opt: torch.optim.Optimizer,
    sched: Any,
    loss_fn: LossFn,
    settings: LoopSettings,
    device: torch.device,
) -> dict:
    """One pass over the training batches; the epoch's mean loss, accuracy and wall time."""
    t0 = time.perf_counter()
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y, g in batches:
        with autocast_for(device):
            logits = model(x)
            loss = loss_fn(logits, y, x, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:  # clips on the device, no host sync
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        sched.step()
        loss_sum += loss.detach() * len(y)  # stays on the device: no per-step host sync
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "train_loss": float(loss_sum) / max(seen, 1),
        "train_accuracy": float(correct) / max(seen, 1),
        "epoch_time_s": time.perf_counter() - t0,
    }


def _best(best: dict | None, record: dict, model: nn.Module) -> dict | None:
    """The best validation epoch so far: ``record``'s (with a copy of the weights) if its
    score beats ``best``'s."""
    score = record.get("val_score", record["val_accuracy"])
    if best is not None and not score > best.get("score", best["val_accuracy"]):
        return best
    return {
        "score": score,
        "val_accuracy": record["val_accuracy"],
        "epoch": record["epoch"],
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }


def fit(
    model: nn.Module,
    data: Dataset,
    settings: LoopSettings,
    *,
    loss_fn: LossFn,
    checkpoints: CheckpointStore | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    select_best: bool = False,
    select_score: Callable[[GroupReport], float] | None = None,
) -> list[dict]:
    """Train ``model`` on ``data.train``, validating on ``data.val`` after every epoch.
    ``select_best`` ends with the weights of the best validation epoch (never the test set):
    highest accuracy, or highest ``select_score(report)`` of the epoch's validation report
    (recorded as ``val_score``).

    With ``checkpoints`` (a run folder, :class:`pifair.runs.Run`), each epoch ends with an
    atomic checkpoint (model, optimizer, schedule, history); ``resume=True`` continues from it.
    Returns the per-epoch history.
    """
    device = settings.device or resolve_device()
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    train_loader = _make_loader(data, "train", settings, device, train=True)
    opt, sched = _optimizer(model, settings, len(train_loader))
    history: list[dict] = []
    start, best = 0, None  # best: {"score", "val_accuracy", "epoch", "model"}
    if resume and checkpoints is not None:
        history, start, best = _restore(checkpoints, model, opt, sched, loss_fn, device)
    torch.manual_seed(settings.seed + start)
    for epoch in range(start, settings.epochs):
        if hasattr(train_loader, "set_epoch"):  # torch's DataLoader has none
            train_loader.set_epoch(epoch)
        bar = tqdm(
            _batches(train_loader, data, device),
            total=len(train_loader),
            desc=f"epoch {epoch + 1}/{settings.epochs}",
            leave=False,
            disable=None if settings.progress else True,
        )
        trained = _train_epoch(model, bar, opt, sched, loss_fn, settings, device)
        val = evaluate(model, data, "val", batch_size=max(settings.batch_size, 512), device=device)
        record = {"epoch": epoch + 1, "train_loss": trained["train_loss"]}
        record |= {"train_accuracy": trained["train_accuracy"], "val_loss": val.loss}
        record |= {"val_accuracy": val.accuracy, "lr": opt.param_groups[0]["lr"]}
        record["epoch_time_s"] = trained["epoch_time_s"]
        if select_score is not None:
            record["val_score"] = select_score(val)
        record |= end_epoch(loss_fn)  # objectives with per-epoch state (dual variables)
        history.append(record)
        best = _best(best, record, model) if select_best else None
        if not math.isfinite(record["train_loss"]):
            raise TrainingDivergedError(
                f"training diverged at epoch {epoch + 1} (loss {record['train_loss']}); lower the "
                "learning rate, the momentum or the weight decay (or the objective's step)"
            )
        if checkpoints is not None:
            checkpoints.save_checkpoint(
                dict(epoch=epoch + 1, model=model.state_dict(), optimizer=opt.state_dict())
                | dict(scheduler=sched.state_dict(), history=history, best=best)
                | dict(loss=objective_state(loss_fn))
            )
            checkpoints.log.info("epoch %d: %s", epoch + 1, record)
        if settings.progress:
            tqdm.write(
                f"epoch {epoch + 1}/{settings.epochs}  loss {record['train_loss']:.4f}  train "
                f"{100 * record['train_accuracy']:.2f}%  "
                f"val {100 * record['val_accuracy']:.2f}%  {record['epoch_time_s']:.1f}s"
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)
    if select_best and best is not None:
        model.load_state_dict(best["model"])
        for h in history:
            h["selected"] = h["epoch"] == best["epoch"]
    return history


@torch.no_grad()
def predict(
    model: nn.Module,
    data: Dataset,
    split: str,
    *,
    batch_size: int = 512,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU), labels and groups of ``split``, in order."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = ResidentLoader(
        data, split, batch_size=batch_size, device=device, channels_last=device.type == "cuda"
    )
    outs, ys, gs = [], [], []
    for x, y, g in loader:
        with autocast_for(device):
            outs.append(model(x).float())
        ys.append(y)
        gs.append(g)
    model.train(was_training)
    return torch.cat(outs).cpu(), torch.cat(ys).cpu(), torch.cat(gs).cpu()


def evaluate(
    model: nn.Module,
    data: Dataset,
    split: str,
    *,
    batch_size: int = 512,
    device: torch.device | None = None,
) -> GroupReport:
    """Overall and per-group accuracy and cross-entropy of ``model`` on ``split``.

    Examples
    --------
    >>> import pifair
    >>> data = pifair.load_dataset("digits", seed=0)
    >>> model = pifair.create_model("mlp", num_classes=10, input_shape=data.input_shape)
    >>> report = pifair.evaluate(model, data, "test")
    >>> len(report.groups), 0.0 <= report.accuracy <= 1.0
    (10, True)
    """
    logits, y, g = predict(model, data, split, batch_size=batch_size, device=device)
    losses = F.cross_entropy(logits, y, reduction="none").numpy()
    return group_report(
        y.numpy(), logits.argmax(1).numpy(), g.numpy(), data.group_names, losses=np.asarray(losses)
    )
