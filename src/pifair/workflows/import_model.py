"""``pifair import``: a run folder from a user's model and weights, as if pifair had trained it.

The architecture (``torchvision:NAME``, ``timm:NAME`` or ``path/to/file.py:ClassName``) is built
for the data set's classes and input channels, the user's weights are loaded into it exactly
(every mismatched key named), it is converted to activation sites by graph and evaluated per
group. The run folder holds what ``pifair train`` writes (config, model.pt, metrics, relus.json,
plots), so linearize, sweep, share, polyfit, audit, mitigate, cost, mpc-infer and he-infer start
from it as from a trained run. Everything is checked before the folder is created.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..config_types import check_settings, setting
from ..data import load_dataset
from ..errors import ConfigError
from ..models import build_architecture, finish_model
from ..models.external import parse_external
from ..models.io import save_model
from ..models.weights import file_sha256, load_user_weights, read_state_dict
from ..relu import count_relus
from ..report import plots
from ..runs import MODEL, Run
from ..training import evaluate
from ..training.config import DataConfig

__all__ = ["ImportJob", "run_import"]


@dataclass
class ImportJob(DataConfig):
    """What ``pifair import`` runs; its dict is the run's config.yaml. The data fields are the
    ones ``pifair train`` takes, so the run's data set and split are found the same way."""

    arch: str = setting(
        "",
        help="the architecture: torchvision:NAME, timm:NAME or FILE.py:ClassName (built with "
        "the data set's classes and input channels)",
    )
    weights: str = setting(
        "",
        help="the weights: a state dict or a whole module saved with torch.save (a pickled "
        "module is unpickled, which runs its code: give only your own files)",
    )
    seed: int = setting(
        0, help="seed of the data split (the same as the run that trained the weights, if pifair's)"
    )

    def __post_init__(self) -> None:
        check_settings(self)
        if not self.arch:
            raise ConfigError(
                "give the architecture: --arch torchvision:NAME | timm:NAME | FILE.py:ClassName"
            )
        external = parse_external(self.arch)
        if external is None:
            raise ConfigError(
                f"--arch {self.arch!r} is not torchvision:NAME, timm:NAME or FILE.py:ClassName "
                "(pifair's own models are trained with pifair train)"
            )
        if not self.weights:
            raise ConfigError("give the weights file: --weights FILE (a state dict or a module)")
        self.arch = str(external)  # a file path made absolute
        self.weights = str(Path(self.weights).expanduser().resolve())

    def as_config(self) -> dict[str, Any]:
        """The config.yaml: the data fields, ``model`` (the architecture, as ``train`` names
        it), the weights file and its SHA-256."""
        config = asdict(self)
        return config | {"model": self.arch, "weights_sha256": file_sha256(self.weights)}

    @classmethod
    def data_fields(cls) -> list[str]:
        return [f.name for f in fields(DataConfig)]


def run_import(job: ImportJob, *, out: str | os.PathLike | None = None) -> Run:
    """Build, load, check and evaluate the user's model, then write its run folder."""
    torch.manual_seed(job.seed)
    data_config = DataConfig(**{k: getattr(job, k) for k in ImportJob.data_fields()})
    data = load_dataset(**data_config.load_kwargs(job.seed))
    external = parse_external(job.arch)
    code_dir = Path(external.path).parent if external and external.path else None
    state = read_state_dict(job.weights, code_dir=code_dir)
    model = build_architecture(job.arch, num_classes=data.num_classes, input_shape=data.input_shape)
    load_user_weights(model, state, source=job.weights)
    model = finish_model(
        model, job.arch, num_classes=data.num_classes, input_shape=data.input_shape
    )
    relus = count_relus(model, data.input_shape)
    val = evaluate(model, data, "val")
    test = evaluate(model, data, "test")
    run = Run.create("import", job.as_config(), out=out)  # all checks passed: now write
    run.write_json("relus.json", relus.as_dict())
    run.log.info("model %s: %s ReLUs\n%s", job.arch, f"{relus.total:,}", relus.table())
    save_model(
        run.file(MODEL),
        model,
        name=job.arch,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
    )
    run.update_metrics(
        kind="import",
        model=job.arch,
        weights=job.weights,
        relus=relus.total,
        data=data.summary(),
        val_accuracy=val.accuracy,
        test=test.as_dict(),
        test_accuracy=test.accuracy,
    )
    plots.group_accuracy(
        test.as_dict(), run.file("groups.png"), title=f"test accuracy per group ({data.group_by})"
    )
    run.log.info("test accuracy %.4f\n%s", test.accuracy, test.table())
    return run
