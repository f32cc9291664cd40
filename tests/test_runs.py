import json

import pytest
import torch

from pifair.atomic import atomic_torch_save
from pifair.errors import ResumeMismatchError
from pifair.runs import Run


def test_failed_checkpoint_write_leaves_previous_intact(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"epoch": 1}, path)

    def crashing_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 2}, path, save=crashing_save)
    assert torch.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left


def test_run_folder_files(tmp_path):
    run = Run.create("train", {"seed": 3, "lr": 0.1}, out=tmp_path / "r")
    run.update_metrics(a=1)
    run.update_metrics(b=2)
    assert Run.open(tmp_path / "r").config == {"command": "train", "seed": 3, "lr": 0.1}
    assert run.metrics == {"a": 1, "b": 2}
    assert (tmp_path / "r" / "log.txt").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        Run.create("train", {"seed": 3}, out=tmp_path / "r")


def test_resume_with_a_different_config_is_refused(tmp_path):
    Run.create("train", {"seed": 3, "lr": 0.1, "device": "cpu"}, out=tmp_path / "r")
    Run.resume(tmp_path / "r", {"seed": 3, "lr": 0.1, "device": "cuda"})  # runtime keys may differ
    with pytest.raises(ResumeMismatchError, match="lr: saved 0.1 vs given 0.2"):
        Run.resume(tmp_path / "r", {"seed": 3, "lr": 0.2})
    nested = {"finetune": {"epochs": 3, "objective": "kd"}}
    Run.create("linearize", nested, out=tmp_path / "n")
    with pytest.raises(ResumeMismatchError) as refused:  # the one changed field, not a dump
        Run.resume(tmp_path / "n", {"finetune": {"epochs": 3, "objective": "dro"}})
    assert "(finetune.objective: saved 'kd' vs given 'dro')" in str(refused.value)


def test_open_rejects_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a pifair run folder"):
        Run.open(tmp_path)


def test_an_older_runs_metrics_are_read_under_todays_names(tmp_path):
    """A linearize run of an older pifair named its parent 'dense' and its search seconds
    'search': one name per meaning now, and the old folders still read."""
    run = Run.create("linearize", {}, out=tmp_path / "old")
    old = {
        "dense_test_accuracy": 0.9,
        "dense_relus": 1664,
        "seconds": {"search": 3.0, "finetune": 1.0},
    }
    (run.path / "metrics.json").write_text(json.dumps(old))
    m = Run.open(run.path).metrics
    assert m["parent_test_accuracy"] == 0.9 and m["parent_relus"] == 1664
    assert m["seconds"] == {"reduce": 3.0, "finetune": 1.0}
    assert "dense_relus" not in m


def test_a_refusal_removes_the_run_folders_it_made_and_nothing_else(tmp_path):
    from pifair.errors import ConfigError
    from pifair.runs import removing_refused_runs

    kept = tmp_path / "kept"
    Run.create("train", {"lr": 0.1}, out=kept).update_metrics(test_accuracy=0.5)
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(ConfigError), removing_refused_runs():
        Run.create("train", {"lr": 0.1}, out=tmp_path / "new" / "deep")
        Run.create("train", {"lr": 0.1}, out=existing)
        Run.resume(kept, allow_finished=True)
        raise ConfigError("refused after the folders were made")
    assert not (tmp_path / "new").exists()  # the stub and the parent made for it
    assert existing.is_dir() and not any(existing.iterdir())  # the user's folder stays
    assert (kept / "metrics.json").exists()  # a run with results is never removed
    again = Run.create("train", {"lr": 0.2}, out=tmp_path / "new" / "deep")
    again.log.info("the logger writes to the new folder's log")
    assert "new folder" in (again.path / "log.txt").read_text()


def test_an_interrupt_keeps_the_run_folder(tmp_path):
    from pifair.runs import removing_refused_runs

    with pytest.raises(KeyboardInterrupt), removing_refused_runs():
        Run.create("train", {"lr": 0.1}, out=tmp_path / "run")
        raise KeyboardInterrupt
    assert (tmp_path / "run" / "config.yaml").exists()
