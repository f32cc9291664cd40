import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from pifair.cli import main
from pifair.models import create_model
from pifair.reduce import FinetuneSettings, linearize_many
from pifair.reduce.linearize import LinearizeHooks
from pifair.reduce.snl import SearchSettings
from pifair.training import TrainConfig
from pifair.workflows.train import train

QUICK = [
    "--search-epochs",
    "2",
    "--finetune-epochs",
    "1",
    "--lambda-init",
    "1e-3",
    "--mask-lr",
    "0.02",
    "--batch-size",
    "64",
    "--device",
    "cpu",
    "--no-progress",
]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense") / "run"
    train(
        TrainConfig(data="digits", model="lenet", epochs=2, lr=0.05, batch_size=64, device="cpu"),
        out=out,
        progress=False,
    )
    return out


def test_linearize_command_writes_an_exact_reduced_run(dense_run, tmp_path, capsys):
    out = tmp_path / "lin"
    assert (
        main(["linearize", "--from", str(dense_run), "--budget", "100", "--out", str(out), *QUICK])
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["relus"] == 100 and m["budget"] == 100 and m["method"] == "snl"
    assert m["parent_relus"] == 1664 and m["drop"] == pytest.approx(
        m["parent_test_accuracy"] - m["test_accuracy"]
    )
    assert main(["relus", str(out)]) == 0
    assert "100" in capsys.readouterr().out.splitlines()[-1]
    # downstream commands read the reduced run like any other
    assert main(["eval", str(out)]) == 0


def test_sweep_writes_pareto_and_resumes_without_redoing(dense_run, tmp_path):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "linearize",
        "--from",
        str(dense_run),
        "--budgets",
        "50,200",
        "--out",
        str(out),
        *QUICK,
    ]
    assert main(args) == 0
    with open(out / "pareto.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["method"], int(r["relus"])) for r in rows} == {
        ("snl", 50),
        ("snl", 200),
        ("naive", 50),
        ("naive", 200),
    }
    assert (out / "pareto.png").exists() and (out / "search-snl.pt").exists()
    stamp = (out / "snl-50" / "model.pt").stat().st_mtime_ns
    assert main(["sweep", "linearize", "--resume", str(out), "--no-progress"]) == 0
    assert (out / "snl-50" / "model.pt").stat().st_mtime_ns == stamp


def test_bad_linearize_input_is_one_line(dense_run, capsys):
    assert main(["linearize", "--from", str(dense_run), "--budget", "5k", *QUICK]) == 2
    assert "above the model's ReLU count of 1,664" in capsys.readouterr().err
    assert main(["linearize", "--budget", "5"]) == 2
    assert "--from" in capsys.readouterr().err
    assert main(["linearize", "--from", str(dense_run), "--budget", "5", "--method", "magic"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_interrupted_search_resumes_from_its_state(digits):
    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10, input_shape=(1, 8, 8)).eval()
    search = SearchSettings(max_epochs=3, lambda_init=1e-3, mask_lr=0.02, batch_size=64)
    saved = []

    def crash_after_first(state):
        saved.append(state)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        linearize_many(
            model,
            digits,
            [10],
            search=search,
            finetune=FinetuneSettings(epochs=0),
            progress=False,
            hooks=LinearizeHooks(on_search_epoch=crash_after_first),
        )
    assert saved[0]["epoch"] == 1
    epochs = []
    result = linearize_many(
        model,
        digits,
        [10],
        search=search,
        finetune=FinetuneSettings(epochs=0),
        progress=False,
        hooks=LinearizeHooks(
            search_state=saved[0], on_search_epoch=lambda s: epochs.append(s["epoch"])
        ),
    )
    assert epochs and epochs[0] == 2  # continued, not restarted
    assert [h["epoch"] for h in result[10].search["history"]][:2] == [1, 2]
    assert result[10].relus == 10


def test_mitigate_and_audit_commands(dense_run, tmp_path, capsys):
    lin = tmp_path / "lin"
    assert (
        main(["linearize", "--from", str(dense_run), "--budget", "100", "--out", str(lin), *QUICK])
        == 0
    )
    mit = tmp_path / "mit"
    assert (
        main(["mitigate", "--from", str(lin), "--epochs", "1", "--out", str(mit), "--no-progress"])
        == 0
    )
    m = json.loads((mit / "metrics.json").read_text())
    assert m["objective"] == "constrained" and m["relus"] == 100 and "gamma" in m["history"][0]
    # the same masks as the run it mitigates: only the fine-tuning differs
    a = torch.load(lin / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(mit / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a if k.endswith("mask"))
    audit = tmp_path / "audit"
    assert (
        main(
            [
                "audit",
                str(dense_run),
                str(lin),
                str(mit),
                "--grad-samples",
                "4",
                "--out",
                str(audit),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    pairs = json.loads((audit / "metrics.json").read_text())["pairs"]
    assert [p["label"] for p in pairs] == ["snl", "snl+constrained"]
    dro = tmp_path / "dro"
    flags = ["--objective", "group-dro", "--dro-step", "0.05", "--select-by", "fair"]
    assert (
        main(
            [
                "mitigate",
                "--from",
                str(lin),
                "--epochs",
                "1",
                "--out",
                str(dro),
                "--no-progress",
                *flags,
            ]
        )
        == 0
    )
    finetune = yaml.safe_load((dro / "config.yaml").read_text())["finetune"]
    assert (finetune["objective"], finetune["dro_step"], finetune["select_by"]) == (
        "group-dro",
        0.05,
        "fair",
    )
    history = json.loads((dro / "metrics.json").read_text())["history"]
    assert "group_weights" in history[0] and "val_score" in history[0]
    assert (audit / "drops.png").exists() and (audit / "margins-0.png").exists()
    assert main(["mitigate", "--from", str(dense_run)]) == 2
    assert "not a linearize run" in capsys.readouterr().err


def test_linearize_with_mitigate_flag(dense_run, tmp_path):
    out = tmp_path / "linmit"
    assert (
        main(
            [
                "linearize",
                "--from",
                str(dense_run),
                "--budget",
                "100",
                "--mitigate",
                "--out",
                str(out),
                *QUICK,
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["objective"] == "constrained"


# a real slice, in the repo
ADULT = Path(__file__).resolve().parents[1] / "data" / "slices" / "adult"


def test_adult_mlp_by_sex_linearize_and_audit(tmp_path):
    dense = tmp_path / "dense"
    assert (
        main(
            [
                "train",
                "--data",
                "adult",
                "--data-dir",
                str(ADULT),
                "--group-by",
                "sex",
                "--model",
                "mlp",
                "--epochs",
                "2",
                "--lr",
                "0.05",
                "--device",
                "cpu",
                "--out",
                str(dense),
                "--no-progress",
            ]
        )
        == 0
    )
    lin = tmp_path / "lin"
    assert (
        main(
            [
                "linearize",
                "--from",
                str(dense),
                "--budget",
                "10%",
                "--mitigate",
                "--out",
                str(lin),
                *QUICK,
            ]
        )
        == 0
    )
    assert json.loads((lin / "metrics.json").read_text())["relus"] == round(0.1 * 512)
    audit = tmp_path / "audit"
    assert (
        main(
            [
                "audit",
                str(dense),
                str(lin),
                "--grad-samples",
                "8",
                "--out",
                str(audit),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    pair = json.loads((audit / "metrics.json").read_text())["pairs"][0]
    assert [g["name"] for g in pair["groups"]] == ["Female", "Male"]
    assert [g["minority"] for g in pair["groups"]] == [True, False]
    female, male = pair["groups"]
    assert pair["minority_gap"] == pytest.approx(female["drop"] - male["drop"])  # one group each


def test_share_command(dense_run, tmp_path, capsys):
    out = tmp_path / "share"
    args = [
        "share",
        "--from",
        str(dense_run),
        "--budget",
        "300",
        "--finetune-epochs",
        "1",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert (
        m["relus"] <= 300
        and m["kind"] == "share"
        and set(m["allocation"]) == {"act1", "act2", "act3"}
    )
    assert main(["relus", str(out)]) == 0
    assert f"{m['relus']:,}" in capsys.readouterr().out.splitlines()[-1]
    assert (
        main(["share", "--resume", str(out), "--no-progress"]) == 2
    )  # finished: nothing to resume
    assert "finished run: nothing to resume" in capsys.readouterr().err
    assert (
        main(
            ["share", "--from", str(dense_run), "--budget", "5", "--device", "cpu", "--no-progress"]
        )
        == 2
    )
    assert "coarsest grouping keeps" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_share_puts_sharing_and_snl_on_one_pareto(dense_run, tmp_path):
    out = tmp_path / "sweep-share"
    args = [
        "sweep",
        "share",
        "--from",
        str(dense_run),
        "--budgets",
        "200,8",
        "--out",
        str(out),
        *QUICK,
    ]
    assert main(args) == 0
    with open(out / "pareto.csv") as f:
        rows = list(csv.DictReader(f))
    methods = {(r["method"], r["budget"]) for r in rows}
    # patches cannot go below one decision per channel (49 here): that point is skipped, not fatal
    assert ("share-patch", "200") in methods and ("share-patch", "8") not in methods
    assert {
        ("share-cluster", "200"),
        ("share-cluster", "8"),
        ("snl", "200"),
        ("snl", "8"),
    } <= methods
    assert all(int(r["relus"]) <= int(r["budget"]) for r in rows)
    assert "skipped" in (out / "log.txt").read_text()
    skipped = json.loads((out / "metrics.json").read_text())["skipped"]
    assert list(skipped) == ["share-patch-8"]  # kept, so a resumed sweep does not retry it
    assert "keeps 49" in skipped["share-patch-8"]


def test_a_sweep_that_reaches_no_budget_says_so_in_one_line(dense_run, tmp_path, capsys):
    out = tmp_path / "none"
    args = ["sweep", "share", "--from", str(dense_run), "--budgets", "1", "--methods"]
    args += ["share-patch", "--out", str(out), *QUICK]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no method of the sweep reached any of the budgets 1" in err and "Traceback" not in err
    assert main([*args[: -len(QUICK) - 2], "--resume", str(out), *QUICK]) == 2  # and on resume
