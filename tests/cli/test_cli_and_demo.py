from pathlib import Path

import pytest

from pifair.cli import main
from pifair.demo import run_demo
from pifair.report import build_report
from pifair.training import TrainConfig
from pifair.workflows.train import train

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def test_list_and_relus(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "fashion-mnist" in out
    assert main(["relus", "--model", "resnet18", "--snl-variant"]) == 0
    assert "491,520" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "dp-train"])
def test_every_training_flag_says_what_it_does(command, capsys):
    """Each field of TrainConfig / DPConfig declares its help, and --help shows it."""
    from dataclasses import fields

    from pifair.dp import DPConfig

    cls = TrainConfig if command == "train" else DPConfig
    help = {f.name: f.metadata.get("help", "") for f in fields(cls)}
    assert all(help.values()), [name for name, text in help.items() if not text]
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = "".join(capsys.readouterr().out.split())  # wrapping moves line breaks, not words
    assert all("".join(h.split()) in text for h in help.values())


def test_report_is_self_contained(tmp_path):
    run = train(
        TrainConfig(data="digits", model="mlp", epochs=1, device="cpu"),
        out=tmp_path / "r",
        progress=False,
    )
    page = build_report([run.path], tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in page
    assert "Per-group test accuracy" in page and 'src="http' not in page


@pytest.mark.slow
@pytest.mark.skipif(
    not FASHION.exists(), reason="Fashion-MNIST Debian package not installed (make data)"
)
def test_demo_end_to_end(tmp_path):
    report = run_demo(tmp_path / "demo", epochs=1, limit=3000, progress=False)
    page = report.read_text()
    assert "pifair demo" in page and "lenet" in page
    assert (tmp_path / "demo" / "train" / "eval-test.json").exists()
    assert "(dp-train)" in page and "max-min spread over all groups" in page  # DP section
    assert "minority-majority gap (size-weighted; minority: Bag)" in page
    assert "(he-infer)" in page and "(polyfit)" in page  # the HE stage and its sections
    assert "Private inference under MPC" in page and "(mpc-infer)" in page  # the MPC stage
    # a second run keeps the finished stages
    mtime = (tmp_path / "demo" / "train" / "model.pt").stat().st_mtime
    run_demo(tmp_path / "demo", epochs=1, limit=3000, progress=False)
    assert (tmp_path / "demo" / "train" / "model.pt").stat().st_mtime == mtime


@pytest.mark.parametrize("world, ends_by", [("1", SystemExit), ("2", OSError)])
def test_a_torchrun_worker_ends_without_the_interpreters_teardown(monkeypatch, world, ends_by):
    import pifair.cli as cli

    def fast_exit(code):  # os._exit would end pytest: stands for it, keeping the code
        raise OSError(code)

    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setattr(cli, "main", lambda: 2)
    monkeypatch.setattr(cli.os, "_exit", fast_exit)
    with pytest.raises(ends_by) as ended:
        cli.entry()
    assert ended.value.args[0] == 2  # main's exit code either way
