"""The defects a reliability review found (issue 18), one test each: run folders that cannot be
corrupted, parents found from anywhere, no un-accounted DP release by default, and bad input
refused by name before the work starts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from pifair.cli import main
from pifair.errors import (
    ConfigError,
    CorruptFileError,
    NotARunError,
    RunExistsError,
    RunLockedError,
    UnfinishedRunError,
    UnsupportedLayerError,
)
from pifair.models import create_model
from pifair.runs import Run
from pifair.training import TrainConfig
from pifair.workflows.evaluate import evaluate_run
from pifair.workflows.train import load_from_run

TRAIN = [
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


@pytest.fixture(scope="module")
def dense(digits_mlp_run) -> Path:
    return digits_mlp_run


# ---- 1. one writer per run folder ---------------------------------------------------------------
def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that has created a run in ``folder`` and is still writing it."""
    code = (
        "import sys, time; from pifair.runs import Run; "
        f"Run.create('train', {{'seed': 0}}, out={str(folder)!r}); print('ready', flush=True); "
        "time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, capsys):
    folder = tmp_path / "run"
    holder = _hold_lock(folder)
    try:
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            Run.create("train", {"seed": 1}, out=folder)
        with pytest.raises(RunLockedError):
            Run.resume(folder)
        assert main([*TRAIN, "--out", str(folder)]) == 2
        assert "being written by another pifair process" in capsys.readouterr().err
        assert Run.open(folder).config == {"command": "train", "seed": 0}  # untouched
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait()
    Run.resume(folder)  # the killed run can be continued


def test_two_train_commands_on_one_folder_leave_one_consistent_run(tmp_path):
    folder = tmp_path / "run"
    cmd = [sys.executable, "-m", "pifair", *TRAIN, "--out", str(folder)]
    procs = [
        subprocess.Popen([*cmd, "--seed", str(seed)], stderr=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "another pifair process" in refused or "already holds a run" in refused
    config, metrics = Run.open(folder).config, Run.open(folder).metrics
    winner = next(seed for (code, _), seed in zip(results, (1, 2)) if code == 0)
    assert config["seed"] == winner
    model, _, _ = load_from_run(folder)
    assert evaluate_run(folder).accuracy == pytest.approx(metrics["test_accuracy"])


def test_create_refuses_a_finished_run_and_an_out_under_a_file(tmp_path, dense, capsys):
    with pytest.raises(RunExistsError, match="--resume"):
        Run.create("train", {}, out=dense)
    (tmp_path / "file").write_text("x")
    assert main([*TRAIN, "--out", str(tmp_path / "file" / "run")]) == 2
    assert "is a file; choose another --out" in capsys.readouterr().err


def test_interrupted_atomic_writes_are_cleaned_when_the_run_is_reopened(tmp_path):
    run = Run.create("train", {"seed": 0}, out=tmp_path / "r")
    stale = run.path / ".checkpoint.pt.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    Run.resume(run.path)
    assert not stale.exists()


# ---- 2. parents found from any working directory, and after a move ------------------------------
def test_derived_runs_find_their_parent_from_anywhere(tmp_path, monkeypatch):
    tree = tmp_path / "project"
    tree.mkdir()
    monkeypatch.chdir(tree)
    assert main([*TRAIN, "--out", "runs/dense"]) == 0
    args = [
        "polyfit",
        "--from",
        "runs/dense",
        "--finetune-epochs",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main([*args, "--out", "runs/poly"]) == 0
    config = Run.open(tree / "runs/poly").config
    assert Path(config["from"]).is_absolute() and config["from_relative"] == "../dense"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    accuracy = evaluate_run(tree / "runs/poly").accuracy  # failed before: 'runs/dense' from here
    assert main(["eval", str(tree / "runs/poly")]) == 0

    moved = tmp_path / "moved"
    shutil.move(tree, moved)  # the absolute path is gone; the relative one still holds
    assert evaluate_run(moved / "runs/poly").accuracy == accuracy
    shutil.rmtree(moved / "runs/dense")
    with pytest.raises(NotARunError, match="derived from the run"):
        evaluate_run(moved / "runs/poly")


def test_mitigate_and_linearize_resume_work_on_a_moved_tree(tmp_path, dense):
    tree = tmp_path / "tree"
    shutil.copytree(dense, tree / "dense")
    quick = ["--search-epochs", "1", "--finetune-epochs", "1", "--device", "cpu", "--no-progress"]
    linearize = ["linearize", "--from", str(tree / "dense"), "--budget", "100", *quick]
    assert main([*linearize, "--out", str(tree / "lin")]) == 0
    moved = tmp_path / "moved"
    shutil.move(tree, moved)  # the parent's saved absolute path is gone
    mitigate = ["mitigate", "--from", str(moved / "lin"), "--epochs", "1", "--no-progress"]
    assert main([*mitigate, "--out", str(moved / "mit")]) == 0  # failed: parent not found
    assert Run.open(moved / "mit").parent() == moved / "dense"
    (moved / "lin" / "model.pt").unlink()  # as if killed before its model was written
    assert main(["linearize", "--resume", str(moved / "lin"), "--no-progress"]) == 0
    assert (moved / "lin" / "model.pt").exists()


# ---- 3. DP diagnostics are not released by default ----------------------------------------------
def test_dp_diagnostics_are_off_by_default_and_labelled_when_on(tmp_path):
    from pifair import DPConfig, dp_train
    from pifair.report import build_report

    base = dict(
        data="digits", model="mlp", epochs=1, batch_size=64, noise_multiplier=1.0, delta=1e-4
    )
    plain = dp_train(DPConfig(**base), out=tmp_path / "plain", progress=False)
    assert not (plain.path / "alignment.json").exists()
    assert all(not h["alignment"] for h in plain.metrics["history"])
    assert "unaccounted_diagnostics" not in plain.metrics
    html = build_report([plain.path], tmp_path / "plain.html").read_text()
    assert "cos(clipped, raw)" not in html

    diag = dp_train(DPConfig(**base, diag_every=2), out=tmp_path / "diag", progress=False)
    assert (diag.path / "alignment.json").exists()
    assert diag.metrics["unaccounted_diagnostics"]["covered_by_epsilon"] is False
    html = build_report([diag.path], tmp_path / "diag.html").read_text()
    assert "Not covered by epsilon" in html and "[not DP]" in html


# ---- 4. values that were accepted silently ------------------------------------------------------
@pytest.mark.parametrize(
    "args, named",
    [
        (["mitigate", "--from", "{dense}", "--epochs", "0"], "epochs must be >= 1"),
        (
            ["share", "--from", "{dense}", "--budget", "10", "--finetune-epochs", "-1"],
            "finetune.epochs must be >= 0",
        ),
        (["audit", "{dense}", "{dense}", "--grad-samples", "-1"], "grad_samples must be >= 0"),
        (["polyfit", "--from", "{dense}", "--finetune-lr", "0"], "finetune.lr must be > 0"),
        (
            ["linearize", "--from", "{dense}", "--budget", "10", "--search-epochs", "0"],
            "search.max_epochs must be >= 1",
        ),
    ],
)
def test_out_of_range_values_are_refused_before_any_work(args, named, dense, tmp_path, capsys):
    args = [a.format(dense=dense) for a in args]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- 5. errors that were raw tracebacks ---------------------------------------------------------
def test_truncated_model_and_checkpoint_files_are_named(tmp_path, dense, capsys):
    run = tmp_path / "r"
    shutil.copytree(dense, run)
    data = (run / "model.pt").read_bytes()
    (run / "model.pt").write_bytes(data[: len(data) // 2])
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'model.pt'} cannot be read" in err and "weights_only" not in err
    (run / "model.pt").write_bytes(bytes(range(256)) * 4)  # random bytes, not a torch file
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "cannot be read" in err and "weights_only" not in err and "Traceback" not in err

    killed = tmp_path / "killed"
    Run.create(
        "train",
        TrainConfig(data="digits", model="mlp", epochs=1, device="cpu").as_dict(),
        out=killed,
    )
    (killed / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    assert main(["train", "--resume", str(killed), "--no-progress"]) == 2
    assert "checkpoint.pt cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, named",
    [
        ("epochs: [1\n", "is not valid YAML"),
        ("epochs: ten\n", "setting 'epochs' must be an integer"),
        ("- a list\n", "must hold a mapping"),
    ],
)
def test_broken_config_files_are_named(text, named, tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(text)
    assert main(["train", "--config", str(tmp_path / "config.yaml")]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--limit", "0"], "limit must be >= 10"),
        (["--keep", "0-9:0"], "leaves 0 training"),
        (["--lr", "1e12"], "training diverged"),
        (["--device", "bogus"], "unknown device 'bogus'"),
        (["--model", "fairdp_cnn"], "cannot take inputs of shape (1, 8, 8)"),
    ],
)
def test_bad_training_input_is_one_line(extra, named, tmp_path, capsys):
    assert main([*TRAIN, *extra, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_dp_train_default_model_on_digits_says_what_to_choose(tmp_path, capsys):
    assert (
        main(
            [
                "dp-train",
                "--data",
                "digits",
                "--epochs",
                "1",
                "--epsilon",
                "6",
                "--out",
                str(tmp_path / "r"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "model 'fairdp_cnn' cannot take inputs of shape (1, 8, 8)" in capsys.readouterr().err


def test_main_lets_real_bugs_show_their_traceback(monkeypatch):
    import dataclasses

    import pifair.cli as cli

    def bug(ns):
        raise ValueError("a bug, not a user error")

    commands = [dataclasses.replace(c, run=bug) if c.name == "list" else c for c in cli.COMMANDS]
    monkeypatch.setattr(cli, "COMMANDS", commands)
    with pytest.raises(ValueError, match="a bug"):
        main(["list"])


# ---- 6. he-infer validates before the work starts ----------------------------------------------
def test_he_infer_settings_are_refused_before_loading_anything(tmp_path, capsys):
    for flag, value, named in (
        ("--images", "-3", "images must be >= 1"),
        ("--batch", "-1", "batch must be >= 0"),
        ("--workers", "-2", "workers must be >= 0"),
    ):
        assert (
            main(
                [
                    "he-infer",
                    "--from",
                    str(tmp_path / "nothing"),
                    flag,
                    value,
                    "--out",
                    str(tmp_path / "he"),
                ]
            )
            == 2
        )
        assert named in capsys.readouterr().err
    assert not (tmp_path / "he").exists()


def test_constant_polynomials_are_refused_at_compile_time():
    from pifair.secure.he.compile import HEProgram, LinearStage, PolyStage

    weights = scipy.sparse.csr_matrix(np.eye(3))
    coefficients = np.array(
        [[0.1, 0.2, 0.3], [1.0, 0.0, 0.5], [0.2, 0.0, 0.0]]
    )  # feature 1: constant
    program = HEProgram((3,), [LinearStage(weights, np.zeros(3)), PolyStage(coefficients)])
    with pytest.raises(UnsupportedLayerError, match="1 of its 3 polynomials are constant"):
        program.check_encryptable()
    coefficients[1, 1] = 0.5
    program.check_encryptable()  # fixed: accepted
    empty = LinearStage(scipy.sparse.csr_matrix((2, 3)), np.ones(2))
    with pytest.raises(UnsupportedLayerError, match="2 of its 2 outputs depend on no input"):
        HEProgram((3,), [empty]).check_encryptable()


# ---- 7. messages that said the wrong thing ------------------------------------------------------
def test_missing_model_messages_say_what_happened(tmp_path, dense):
    finished = tmp_path / "finished"
    shutil.copytree(dense, finished)
    (finished / "model.pt").unlink()
    with pytest.raises(UnfinishedRunError, match="finished train run but its model.pt is missing"):
        load_from_run(finished)
    audit = Run.create("audit", {}, out=tmp_path / "audit")
    audit.update_metrics(pairs=[])
    with pytest.raises(UnfinishedRunError, match="is a audit run, which holds no model"):
        load_from_run(audit.path)
    killed = Run.create("train", {}, out=tmp_path / "killed")
    with pytest.raises(UnfinishedRunError, match=f"pifair train --resume {killed.path}"):
        load_from_run(killed.path)


def test_cost_input_shape_is_checked(capsys):
    assert main(["cost", "--model", "lenet", "--input-shape", "1,28"]) == 2
    assert "--input-shape '1,28' must be C,H,W" in capsys.readouterr().err


def test_resuming_a_finished_run_is_refused_and_changes_nothing(tmp_path, dense, capsys):
    run = tmp_path / "r"
    shutil.copytree(dense, run)
    before = (run / "metrics.json").read_bytes()
    time.sleep(0.01)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "holds a finished run: nothing to resume" in capsys.readouterr().err
    assert (run / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("command", ["share", "polyfit"])
def test_resume_takes_a_run_folder_for_every_command(command, tmp_path, capsys):
    assert main([command, "--resume", str(tmp_path / "nothing")]) == 2
    assert (
        f"config file {tmp_path / 'nothing' / 'config.yaml'} does not exist"
        in capsys.readouterr().err
    )


def test_wrong_types_in_nested_job_settings_are_named():
    from pifair.workflows.share import ShareJob

    with pytest.raises(ConfigError, match="setting 'epochs' must be an integer"):
        ShareJob.from_config({"from": "x", "budget": "5", "finetune": {"epochs": "many"}})
    with pytest.raises(ConfigError, match=r"unknown FinetuneSettings settings \['epoch'\]"):
        ShareJob.from_config({"from": "x", "budget": "5", "finetune": {"epoch": 3}})


@pytest.mark.parametrize("kind", ["dp", "train", "share"])
def test_every_config_refuses_an_unknown_key_by_name(kind):
    """A misspelt key must not be dropped silently (DPConfig used to drop it)."""
    from pifair.dp import DPConfig
    from pifair.workflows.share import ShareJob

    build = {
        "dp": lambda d: DPConfig.from_dict(d | {"method": "dpsgd", "epsilon": 6.0}),
        "train": TrainConfig.from_dict,
        "share": lambda d: ShareJob.from_config(d | {"from": "x", "budget": "5"}),
    }[kind]
    with pytest.raises(ConfigError, match=r"unknown \w+ settings \['epsilom'\]"):
        build({"epsilom": 3.0})
    build({"command": "ignored: the run folder's bookkeeping"})  # the saved config's own key


def test_corrupt_metrics_file_is_named(tmp_path):
    run = Run.create("train", {}, out=tmp_path / "r")
    (run.path / "metrics.json").write_text('{"a": ')
    with pytest.raises(CorruptFileError, match="metrics.json is not valid JSON"):
        _ = Run.open(run.path).metrics


def test_model_shape_probe_leaves_the_model_as_built():
    model = create_model("resnet18", num_classes=10, input_shape=(3, 32, 32))
    assert model.training  # mode restored after the probe
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 0 and torch.equal(
        bn.running_mean, torch.zeros_like(bn.running_mean)
    )


# ---- 6. nothing outside a command's own output is written ---------------------------------------
@pytest.mark.parametrize(
    "target, named",
    [
        ("{run}/model.pt", "ending in .html"),
        ("{run}/metrics.json", "ending in .html"),
        ("{run}/config.yaml", "ending in .html"),
        ("{run}/report.html", "inside the run folder"),
        ("{tmp}", "is a folder"),
        ("{tmp}/notes.html", "is not a pifair report"),
    ],
)
def test_report_never_replaces_a_runs_files_or_another_file(target, named, dense, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(dense, run)
    (tmp_path / "notes.html").write_text("<p>my notes</p>")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    out = target.format(run=run, tmp=tmp_path)
    assert main(["report", str(run), "--out", out]) == 2
    assert named in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert (tmp_path / "notes.html").read_text() == "<p>my notes</p>"
    # the default lands beside the run, and a second report replaces the first
    assert main(["report", str(run)]) == 0
    assert main(["report", str(run)]) == 0 and (tmp_path / "report.html").exists()


def test_he_infer_refuses_another_clients_exchange_and_clamped_values(tmp_path, dense, capsys):
    exchange = tmp_path / "exchange"
    exchange.mkdir()
    (exchange / "request.json").write_text('{"client_run": "/somewhere/else"}')
    argv = ["he-infer", "--from", str(dense), "--exchange", str(exchange)]
    assert main([*argv, "--out", str(tmp_path / "he")]) == 2
    assert "holds the request of another client" in capsys.readouterr().err
    assert (exchange / "request.json").read_text() == '{"client_run": "/somewhere/else"}'
    assert main(["he-infer", "--from", str(dense), "--workers", "100000"]) == 2
    assert "would fork that many server processes" in capsys.readouterr().err
    assert not (tmp_path / "he").exists()


@pytest.mark.parametrize("command", ["relus", "cost"])
def test_a_class_count_below_two_is_refused_in_one_line(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--model", "mlp", "--num-classes", "-3"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--num-classes: must be >= 2, got -3" in err and "Traceback" not in err


# ---- 7. signals and the processes a command starts ----------------------------------------------
def test_sigterm_stops_a_command_with_a_message_and_exit_143(monkeypatch, capsys):
    import os
    import signal

    import pifair.cli.commands as commands

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(commands, "train", killed)
    assert main(["train", "--data", "digits", "--model", "mlp"]) == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_the_ckks_client_stops_its_server_and_reports_its_failure(monkeypatch, tmp_path):
    from pifair.errors import ServerFailedError, Terminated
    from pifair.workflows import he

    run = Run.create("he-infer", {}, out=tmp_path / "he")
    with pytest.raises(ServerFailedError, match=r"exited with 2: .*not an exchange folder"):
        he._serve_here(run, tmp_path / "nothing", 1)
    started = []
    real = subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs))
        return started[-1]

    def terminated(*args, **kwargs):  # SIGTERM while the client waits on its server
        raise Terminated

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(he, "_watch", terminated)
    with pytest.raises(Terminated):
        he._serve_here(run, tmp_path / "nothing", 1)
    assert started[0].poll() is not None  # stopped with its client, not left running


@pytest.mark.parametrize(
    "args, named",
    [
        (["relus", "{dense}", "--model", "mlp"], "not both"),
        (["mpc-infer", "--from", "{dense}", "--rank", "1"], "drop --rank"),
        (["train", "--config", "{empty}"], "is empty"),
        (["train", "--resume", "{dense}", "--out", "{other}"], "not two different folders"),
        (["dp-train", "--method", "nonprivate", "--epsilon", "6"], "adds no noise"),
        (["dp-train", "--config", "{dense}/config.yaml"], "unknown"),
    ],
)
def test_flags_that_would_be_ignored_are_refused(args, named, dense, tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("")
    args = [
        a.format(dense=dense, empty=tmp_path / "empty.yaml", other=tmp_path / "B") for a in args
    ]
    assert main(args) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "B").exists()


@pytest.mark.parametrize(
    "args, named",
    [
        (["linearize", "--resume", "{dense}"], "holds a train run, not a linearize run"),
        (["sweep", "linearize", "--resume", "{dense}"], "pifair train --resume"),
        (["train", "--data", "digits", "--val-fraction", "0", "--out", "{out}"], "val_fraction"),
        (["mpc-infer", "--from", "{dense}", "--images", "100000", "--out", "{out}"], "at most"),
        (["mpc-infer", "--from", "{dense}", "--images", "2", "--batch", "3", "--out", "{out}"],
         "--batch 3 is more than --images 2"),
    ],
)  # fmt: skip
def test_probe_findings_are_refused_in_one_line(args, named, dense, tmp_path, capsys):
    args = [a.format(dense=dense, out=tmp_path / "out") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
