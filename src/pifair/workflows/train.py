"""``pifair train`` as a function: a run folder with the trained model, metrics and plots."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset, load_dataset
from ..dp.config import DPConfig
from ..errors import UnfinishedRunError
from ..models import create_model
from ..models.io import load_model, save_model
from ..relu import count_relus
from ..report import plots
from ..runs import MODEL, Run
from ..training.config import TrainConfig
from ..training.loop import LoopSettings, evaluate, fit, resolve_device

__all__ = ["TrainConfig", "train", "load_from_run", "dataset_for_run"]


def save_trained_model(
    run: Run, model: nn.Module, cfg: TrainConfig | DPConfig, data: Dataset
) -> None:
    """``model.pt`` of a run that trained ``cfg.model`` (train, dp-train): weights and the
    record that rebuilds the architecture."""
    save_model(
        run.file(MODEL),
        model,
        name=cfg.model,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        options=cfg.model_options(),
    )


def train(
    cfg: TrainConfig,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Run:
    """Train ``cfg.model`` on ``cfg.data`` into a run folder (model, config, metrics, plots);
    with ``resume``, continue the killed run at ``out``.

    Examples
    --------
    >>> import tempfile, pifair
    >>> cfg = pifair.TrainConfig(data="digits", model="mlp", epochs=2, lr=0.05)
    >>> run = pifair.train(cfg, out=tempfile.mkdtemp() + "/run", progress=False)
    >>> run.metrics["test_accuracy"] > 0.8, sorted(p.name for p in run.path.glob("*.png"))
    (True, ['curves.png', 'groups.png'])
    """
    torch.manual_seed(cfg.seed)
    data = load_dataset(**cfg.data_config.load_kwargs(cfg.seed))
    model = create_model(
        cfg.model, num_classes=data.num_classes, input_shape=data.input_shape, **cfg.model_options()
    )
    run = Run.resume(out, cfg.as_dict()) if resume else Run.create("train", cfg.as_dict(), out=out)
    relus = count_relus(model, data.input_shape)
    run.write_json("relus.json", relus.as_dict())
    run.log.info("model %s: %s ReLUs\n%s", cfg.model, f"{relus.total:,}", relus.table())
    settings = LoopSettings(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule,
        seed=cfg.seed,
        device=resolve_device(cfg.device),
        loader=cfg.loader,
        progress=progress,
    )
    t0 = time.perf_counter()
    history = fit(
        model,
        data,
        settings,
        loss_fn=_cross_entropy(cfg.label_smoothing),
        checkpoints=run,
        resume=resume,
    )
    elapsed = time.perf_counter() - t0
    test = evaluate(model, data, "test")
    save_trained_model(run, model, cfg, data)
    run.update_metrics(
        kind="train",
        model=cfg.model,
        relus=relus.total,
        data=data.summary(),
        history=history,
        val_accuracy=history[-1]["val_accuracy"],
        test=test.as_dict(),
        test_accuracy=test.accuracy,
        wall_time_s=elapsed,
        device=str(settings.device),
    )
    plots.training_curves(history, run.file("curves.png"), title=f"{cfg.model} on {cfg.data}")
    plots.group_accuracy(
        test.as_dict(), run.file("groups.png"), title=f"test accuracy per group ({cfg.group_by})"
    )
    run.log.info("test accuracy %.4f\n%s", test.accuracy, test.table())
    return run


def _cross_entropy(label_smoothing: float):
    def loss(
        logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, groups: torch.Tensor
    ) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)

    return loss


def load_from_run(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict, Run]:
    """The model a run folder holds, its record, and the run.

    Examples
    --------
    >>> import tempfile, pifair
    >>> cfg = pifair.TrainConfig(data="digits", model="mlp", epochs=1, lr=0.05)
    >>> run = pifair.train(cfg, out=tempfile.mkdtemp() + "/run", progress=False)
    >>> model, record, _ = pifair.load_from_run(run.path)
    >>> record["model"], pifair.count_relus(model, tuple(record["input_shape"])).total
    ('mlp', 512)
    """
    run = Run.open(path)
    model_file = Path(path) / MODEL
    if not model_file.exists():
        command = run.config.get("command", "?")
        if "test_accuracy" in run.metrics:
            raise UnfinishedRunError(
                f"{path} is a finished {command} run but its {MODEL} is missing (deleted or "
                f"moved); put it back or run the command again"
            )
        if command not in RESUMABLE:
            raise UnfinishedRunError(
                f"{path} is a {command} run, which holds no model; give a run of "
                f"{', '.join(sorted(RESUMABLE))} that finished"
            )
        raise UnfinishedRunError(
            f"{path} holds no {MODEL}: the {command} run did not finish; resume it with "
            f"pifair {command} --resume {path}"
        )
    model, record = load_model(model_file, map_location)
    return model, record, run


# commands whose run folders hold a model.pt, and can be resumed when killed
RESUMABLE = {"train", "linearize", "share", "polyfit", "dp-train", "mitigate"}


def dataset_for_run(run: Run, **overrides) -> Dataset:
    """The data set a run was trained on, with the same split (same seed)."""
    cfg = TrainConfig.from_dict(
        {k: v for k, v in _root_config(run).items() if k in TrainConfig.__dataclass_fields__}
    )
    kwargs = cfg.data_config.load_kwargs(cfg.seed) | overrides
    return load_dataset(**kwargs)


def _root_config(run: Run) -> dict:
    """The training config at the root of a chain of runs (``--from`` links)."""
    while run.config.get("from") is not None and run.config.get("command") != "train":
        parent = run.parent()
        if parent is None:
            break
        run = Run.open(parent)
    return run.config
