"""``pifair mpc-infer`` end to end on digits: parties as threads and as two OS processes on
loopback sockets (SPU's brpc links), and the cost command on the same run."""

from __future__ import annotations

import pytest

pytest.importorskip("spu")

from pifair.cli import main  # noqa: E402
from pifair.runs import Run  # noqa: E402
from pifair.training import TrainConfig  # noqa: E402
from pifair.workflows.train import train  # noqa: E402

pytestmark = [pytest.mark.mpc, pytest.mark.slow]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpc") / "dense"
    return train(
        TrainConfig(data="digits", model="lenet", epochs=2, lr=0.05, batch_size=64),
        out=out,
        progress=False,
    ).path


def test_two_processes_on_loopback_agree_with_plaintext(dense_run, tmp_path, capsys):
    out = tmp_path / "proc"
    assert (
        main(
            [
                "mpc-infer",
                "--from",
                str(dense_run),
                "--images",
                "2",
                "--parties",
                "processes",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    m = Run.open(out).metrics
    assert m["argmax_agreement"] == 1.0 and m["max_relative_error"] < 2e-3
    assert m["placement"].startswith("one process per party")
    # every party's own SPU log (its profile) is kept in the run
    assert {f.name for f in (out / "parties").glob("party*.log")} == {"party0.log", "party1.log"}
    server, client = m["parties"]
    # both parties measured their own link: what one sends the other receives
    assert server["measured"] and client["measured"]
    assert server["sent_per_image"] == client["received_per_image"] > 0
    for party in (server, client):  # each party's own split accounts for its link totals
        split = sum(party["bytes_by_category_per_image"].values())
        assert split == pytest.approx(party["sent_per_image"] + party["received_per_image"])
    assert m["comparisons"] == m["relus"] > 0 and m["comparison_bytes_per_image"] > 0
    assert m["setup"]["one_time_bytes"] > 0  # Cheetah's setup is not charged to the images
    assert "agreement with plaintext 100.0%" in capsys.readouterr().out


def test_threads_and_clear_errors(dense_run, tmp_path, capsys):
    out = tmp_path / "threads"
    assert (
        main(
            [
                "mpc-infer",
                "--from",
                str(dense_run),
                "--images",
                "1",
                "--protocol",
                "semi2k",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    m = Run.open(out).metrics
    assert m["argmax_agreement"] == 1.0 and "TRUSTED FIRST PARTY" in m["security"]
    assert m["parties"][1]["derived_from"] == "server's link totals"
    capsys.readouterr()
    assert (
        main(
            [
                "mpc-infer",
                "--from",
                str(dense_run),
                "--parties",
                "127.0.0.1:1,127.0.0.1:2",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "needs --rank" in capsys.readouterr().err
    assert (
        main(["mpc-infer", "--from", str(tmp_path / "missing"), "--out", str(tmp_path / "y")]) == 2
    )
