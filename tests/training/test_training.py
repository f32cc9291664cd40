import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from pifair.cli import main
from pifair.training import TrainConfig
from pifair.workflows.evaluate import evaluate_run
from pifair.workflows.train import load_from_run, train

TRAIN_DIGITS_MLP = [
    "train",
    "--data",
    "digits",
    "--model",
    "mlp",
    "--epochs",
    "1",
    "--device",
    "cpu",
    "--no-progress",
]


def _cfg(**kw) -> TrainConfig:
    base = dict(data="digits", model="mlp", epochs=3, batch_size=64, lr=0.05, seed=0, device="cpu")
    return TrainConfig(**(base | kw))


def test_train_writes_a_complete_run_folder(tmp_path):
    run = train(_cfg(), out=tmp_path / "r", progress=False)
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {
        "config.yaml",
        "metrics.json",
        "log.txt",
        "checkpoint.pt",
        "model.pt",
        "curves.png",
        "groups.png",
        "relus.json",
    } <= files
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert len(m["history"]) == 3 and m["test_accuracy"] > 0.85
    assert m["relus"] == 512 and len(m["test"]["groups"]) == 10
    model, record, _ = load_from_run(run.path)
    assert record["model"] == "mlp"
    # eval of the saved model gives the number the run reported
    assert evaluate_run(run.path).accuracy == pytest.approx(m["test_accuracy"])


def test_same_seed_same_model(tmp_path):
    a = train(_cfg(epochs=1), out=tmp_path / "a", progress=False)
    b = train(_cfg(epochs=1), out=tmp_path / "b", progress=False)
    ma, _, _ = load_from_run(a.path)
    mb, _, _ = load_from_run(b.path)
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(pa, pb)


def test_config_yaml_reruns_the_command(tmp_path, capsys):
    assert main([*TRAIN_DIGITS_MLP, "--out", str(tmp_path / "a")]) == 0
    assert (
        main(
            [
                "train",
                "--config",
                str(tmp_path / "a" / "config.yaml"),
                "--out",
                str(tmp_path / "b"),
                "--no-progress",
            ]
        )
        == 0
    )
    ca = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    cb = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert ca == cb
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert ma["test_accuracy"] == mb["test_accuracy"]


def test_cli_errors_are_one_clear_line(capsys, tmp_path):
    assert main(["train", "--data", "nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'nope'; available: adult, cifar10, digits, fashion-mnist" in err
    assert main(["train", "--data", "digits", "--model", "mlp", "--epochs", "0"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_resume_refuses_a_different_config(tmp_path, capsys):
    assert main([*TRAIN_DIGITS_MLP, "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "--resume", str(tmp_path / "a"), "--lr", "0.3"]) == 2
    assert "lr: saved 0.1 vs given 0.3" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    """Kill a training process with SIGKILL mid-run: the checkpoint stays loadable, and
    --resume continues from it to the end with the history of the killed run kept."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "pifair",
        "train",
        "--data",
        "digits",
        "--model",
        "mlp",
        "--epochs",
        "40",
        "--batch-size",
        "4",
        "--lr",
        "0.01",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-progress",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.15)  # into the next epoch
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(ckpt, weights_only=False)  # intact after the kill
    done = state["epoch"]
    assert 1 <= done < 40
    assert not (out / "model.pt").exists()
    resumed = subprocess.run(
        cmd[:-3] + ["--resume", str(out), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 41))
    assert history[:done] == state["history"]
    assert "resumed from epoch" in (out / "log.txt").read_text()


def test_resident_batches_are_normalised_once_whatever_the_device_spelling(digits):
    # cuda:0 batches met torch.device("cuda") and were normalised a second time: train
    # inputs then differed from evaluation inputs (ResNet18 on CIFAR-10: 37 % instead of 82 %)
    from pifair.data import ResidentLoader
    from pifair.training.loop import _batches

    loader = ResidentLoader(digits, "train", batch_size=64, device="cpu")
    want = next(iter(loader))[0]
    got = next(_batches(loader, digits, torch.device("cpu", 0)))[0]  # "cpu:0" != x.device ("cpu")
    assert torch.equal(got, want)
