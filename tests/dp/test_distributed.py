"""Data-parallel DP-SGD under torchrun: gloo backend, 2 CPU processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("opacus")

from pifair.runs import Run  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("method, path", [("dpsgd", "hooks"), ("global-adapt", "ghost")])
def test_two_processes_train_in_sync_and_account_like_one(tmp_path, method, path):
    out = tmp_path / method
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "pifair",
        "dp-train",
        "--data",
        "digits",
        "--model",
        "mlp",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--noise-multiplier",
        "1.0",
        "--delta",
        "1e-4",
        "--method",
        method,
        "--lr",
        "0.5",
        "--grad-path",
        path,
        "--out",
        str(out),
        "--no-progress",
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", **__import__("os").environ},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    m = Run.open(out).metrics
    assert m["world_size"] == 2 and m["ranks_in_sync"] is True
    # the whole (global) batch is one sampled-Gaussian release, as in one process
    steps = 2 * int(1 / m["sample_rate"])
    assert m["steps"] == steps
    expected = [[1.0, m["sample_rate"], steps]] + (
        [[10.0, m["sample_rate"], steps]] if method == "global-adapt" else []
    )
    assert sorted(m["releases"]) == sorted(expected)
    assert m["test_accuracy"] > 0.5  # it learned: digits are easy even with DP noise
