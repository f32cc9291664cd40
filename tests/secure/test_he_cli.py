"""``pifair polyfit`` then ``pifair he-infer`` end to end on digits, batches split, two workers."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tenseal")

from pifair.cli import main  # noqa: E402
from pifair.report import build_report  # noqa: E402
from pifair.runs import Run  # noqa: E402
from pifair.training import TrainConfig  # noqa: E402
from pifair.workflows.train import train  # noqa: E402

pytestmark = [pytest.mark.he, pytest.mark.slow]


def test_polyfit_then_encrypted_inference_matches_plaintext(tmp_path, capsys):
    dense = train(
        TrainConfig(data="digits", model="he_cnn", epochs=3, lr=0.05, batch_size=64),
        out=tmp_path / "dense",
        progress=False,
    )
    assert main(["he-infer", "--from", str(dense.path), "--out", str(tmp_path / "refused")]) == 2
    assert "is a ReLU" in capsys.readouterr().err
    poly = tmp_path / "poly"
    assert (
        main(
            [
                "polyfit",
                "--from",
                str(dense.path),
                "--finetune-epochs",
                "2",
                "--batch-size",
                "64",
                "--out",
                str(poly),
                "--no-progress",
            ]
        )
        == 0
    )
    out = tmp_path / "he"
    assert (
        main(
            [
                "he-infer",
                "--from",
                str(poly),
                "--batch",
                "20",
                "--images",
                "40",
                "--workers",
                "2",
                "--compare-images",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    m = Run.open(out).metrics
    assert m["batches"] == 2 and m["images"] == 40
    progress = json.loads((out / "exchange" / "progress.json").read_text())
    assert progress["done"] == progress["total"] > 0 and progress["total"] % m["batches"] == 0
    assert m["argmax_agreement"] == 1.0 and m["encrypted_accuracy"] == m["plaintext_accuracy"]
    assert m["max_logit_error"] < 1e-3
    assert m["params"]["log_q"] <= m["params"]["max_log_q"]
    memory = m["server_memory"]  # measured by the server process, bounded by the machine
    assert 0 < memory["peak_rss_bytes"] < memory["memory_available_bytes"]
    assert (
        m["image_layout"]["argmax_agreement"] == 1.0 and m["image_layout"]["max_logit_error"] < 1e-3
    )
    # the comparison is recorded (its sign is a timing: benchmarks measure it, tests do not)
    c = m["batch_vs_image_layout"]
    assert c["time_reduction"] == pytest.approx(
        1 - m["amortized_ms_per_image"] / c["image_layout_ms_per_image"]
    )
    assert c["image_layout_ms_per_image"] == pytest.approx(
        1000 * m["image_layout"]["seconds_per_image"]
    )
    page = build_report([poly, out], tmp_path / "r.html").read_text()
    assert m["server_key_check"]["server_holds_no_secret_key"] is True
    assert (
        "(he-infer)" in page
        and "The server held no secret key (checked" in page
        and "(polyfit)" in page
    )
    assert "Against one image per ciphertext" in page


def test_client_and_server_as_two_roles_with_files_between(tmp_path, capsys):
    dense = train(
        TrainConfig(data="digits", model="he_cnn", epochs=1, lr=0.05, batch_size=64),
        out=tmp_path / "dense",
        progress=False,
    )
    poly = tmp_path / "poly"
    polyfit = ["polyfit", "--from", str(dense.path), "--finetune-epochs", "1", "--out", str(poly)]
    assert main([*polyfit, "--no-progress"]) == 0
    exchange, client_run = tmp_path / "exchange", tmp_path / "client"
    client = ["he-infer", "--from", str(poly), "--images", "30", "--role", "client"]
    client += ["--exchange", str(exchange), "--out", str(client_run)]
    assert main(client) == 0
    assert "run pifair he-serve" in capsys.readouterr().out
    assert not (client_run / "metrics.json").exists()
    assert sorted(p.name for p in (exchange / "keys").iterdir()) == [
        "parms.seal",
        "public.seal",
        "relin.seal",
    ]
    assert main(["he-serve", str(exchange), "--workers", "1"]) == 0  # the server's host
    assert main(client) == 0  # the client again: decrypts
    m = Run.open(client_run).metrics
    assert m["images"] == 30 and m["argmax_agreement"] == 1.0
    assert m["server_key_check"]["server_holds_no_secret_key"] is True
    assert not list(exchange.glob("batch-*"))  # ciphertexts removed once decrypted
    # the server's progress, for a client that waits on it: every stage of every batch done
    progress = json.loads((exchange / "progress.json").read_text())
    assert progress["done"] == progress["total"] > 0
