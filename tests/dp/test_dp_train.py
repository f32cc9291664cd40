"""``dp-train`` end to end on a small real slice: accounting of every release, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("opacus")

from opacus.accountants import RDPAccountant  # noqa: E402

from pifair import DPConfig, dp_train  # noqa: E402
from pifair.cli import main  # noqa: E402
from pifair.dp.diagnostics import privacy_cost_summary  # noqa: E402
from pifair.errors import PrivacyParameterError, UnsupportedLayerError  # noqa: E402
from pifair.models.io import load_model  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fashion = pytest.mark.skipif(
    not FASHION.exists(), reason="Fashion-MNIST Debian package not installed"
)


def _cfg(**kw) -> DPConfig:
    base = dict(
        data="digits",
        model="mlp",
        epochs=2,
        batch_size=64,
        noise_multiplier=1.0,
        delta=1e-4,
        diag_every=4,
    )
    return DPConfig(**(base | kw))


def test_every_release_is_accounted(tmp_path):
    run = dp_train(_cfg(method="global-adapt"), out=tmp_path / "ga", progress=False)
    m = run.metrics
    steps = m["steps"]
    assert steps == 2 * int(1 / m["sample_rate"])
    q = m["sample_rate"]
    acc = RDPAccountant()
    for _ in range(steps):  # one gradient release and one count release per step
        acc.step(noise_multiplier=1.0, sample_rate=q)
        acc.step(noise_multiplier=10.0, sample_rate=q)  # s_b, the default
    assert sorted(map(tuple, m["releases"])) == [(1.0, q, steps), (10.0, q, steps)]
    assert m["epsilon"] == pytest.approx(acc.get_epsilon(1e-4), rel=1e-9)
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    assert set(m["history"][-1]["alignment"]) <= set(m["test_groups"])
    measured = json.loads((run.path / "alignment.json").read_text())
    assert {r["epoch"] for r in measured} == {1, 2} and all(
        -1 <= r["cosine"] <= 1 for r in measured
    )
    assert (run.path / "dp_curves.png").exists()
    assert m["grad_path"] == "ghost"  # auto on an MLP: exact ghost norms, no per-sample gradients
    # what epsilon does not cover is listed; the release folder holds only what it covers
    listed = m["unaccounted_training_statistics"]
    assert listed["covered_by_epsilon"] is False and "data.train_groups" in listed["keys"]
    release = run.path / "release"
    assert sorted(p.name for p in release.iterdir()) == ["model.pt", "privacy.json", "test.json"]
    privacy = json.loads((release / "privacy.json").read_text())
    assert privacy["epsilon"] == m["epsilon"] and privacy["releases"] == m["releases"]
    released = (release / "privacy.json").read_text() + (release / "test.json").read_text()
    assert "train" not in released and "alignment" not in released and "val" not in released
    assert (release / "model.pt").read_bytes() == (run.path / "model.pt").read_bytes()


def test_bounded_adaptive_clipping_trains_and_accounts_its_count(tmp_path):
    run = dp_train(
        _cfg(method="bounded-adapt", diag_every=0, clip_lower=0.2, clip_upper=3.0),
        out=tmp_path / "ba",
        progress=False,
    )
    m = run.metrics
    q, steps = m["sample_rate"], m["steps"]
    assert sorted(map(tuple, m["releases"])) == [(1.0, q, steps), (10.0, q, steps)]
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=1.0, sample_rate=q)
        acc.step(noise_multiplier=10.0, sample_rate=q)
    assert m["epsilon"] == pytest.approx(acc.get_epsilon(1e-4), rel=1e-9)
    assert m["test_accuracy"] > 0.3  # it learns (digits, 2 epochs)


def test_target_epsilon_is_met_with_the_count_releases(tmp_path):
    run = dp_train(
        _cfg(method="dpsgd-f", noise_multiplier=None, epsilon=4.0, count_noise=3.0),
        out=tmp_path / "f",
        progress=False,
    )
    m = run.metrics
    assert 4.0 - 0.02 <= m["epsilon"] <= 4.0
    assert len(m["releases"]) == 2


def test_privacy_cost_against_a_nonprivate_baseline(tmp_path):
    base = dp_train(
        _cfg(method="nonprivate", noise_multiplier=None), out=tmp_path / "np", progress=False
    )
    run = dp_train(
        _cfg(method="dpsgd", baseline=str(base.path)), out=tmp_path / "dp", progress=False
    )
    m, b = run.metrics, base.metrics
    for name, cost in m["privacy_cost"].items():
        assert cost == pytest.approx(b["test_groups"][name] - m["test_groups"][name])
    assert m["privacy_cost_max_min_spread"] == pytest.approx(
        max(m["privacy_cost"].values()) - min(m["privacy_cost"].values())
    )
    losses = {g["name"]: g["loss"] for g in m["test"]["groups"]}
    base_losses = {g["name"]: g["loss"] for g in b["test"]["groups"]}
    for name, cost in m["privacy_cost_loss"].items():
        assert cost == pytest.approx(losses[name] - base_losses[name])
    assert "privacy_cost_gap" not in m  # the ambiguous name is gone


def test_privacy_cost_gaps_by_hand():
    def run(accuracies, losses, counts):
        return {
            "groups": [
                {"name": n, "accuracy": a, "loss": lo, "count": c}
                for n, a, lo, c in zip("abc", accuracies, losses, counts, strict=True)
            ]
        }

    nonprivate = run([0.9, 0.8, 0.7], [0.3, 0.5, 0.8], [100, 300, 100])
    private = run([0.8, 0.75, 0.4], [0.5, 0.6, 1.6], [100, 300, 100])
    out = privacy_cost_summary(nonprivate, private, {"c"})
    assert out["privacy_cost"] == pytest.approx({"a": 0.1, "b": 0.05, "c": 0.3})
    # minority c costs 0.3; the majority a, b cost (0.1 * 100 + 0.05 * 300) / 400 = 0.0625
    assert out["privacy_cost_minority_majority_gap"] == pytest.approx(0.3 - 0.0625)
    assert out["privacy_cost_minority_majority_gap_unweighted"] == pytest.approx(0.3 - 0.075)
    assert out["privacy_cost_max_min_spread"] == pytest.approx(0.25)
    assert out["privacy_cost_loss"] == pytest.approx({"a": 0.2, "b": 0.1, "c": 0.8})
    assert out["privacy_cost_loss_minority_majority_gap"] == pytest.approx(0.8 - 0.125)
    assert out["minority_groups"] == ["c"]
    assert (
        privacy_cost_summary(nonprivate, private, set())["privacy_cost_minority_majority_gap"]
        is None
    )  # no minority: no gap, not a made-up one


def test_a_killed_run_resumes_to_the_same_model(tmp_path, monkeypatch):
    cfg = _cfg(method="global-adapt", epochs=3)
    whole = dp_train(cfg, out=tmp_path / "whole", progress=False)

    import pifair.workflows.dp_train as train_mod

    real_evaluate, calls = train_mod.evaluate, {"n": 0}

    def dies_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        dp_train(cfg, out=tmp_path / "killed", progress=False)
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    resumed = dp_train(cfg, out=tmp_path / "killed", resume=True, progress=False)
    a, _ = load_model(whole.path / "model.pt")
    b, _ = load_model(resumed.path / "model.pt")
    for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.allclose(p, q)
    assert resumed.metrics["epsilon"] == whole.metrics["epsilon"]
    assert resumed.metrics["rule_state"] == whole.metrics["rule_state"]


def test_bad_input_gets_clear_errors(tmp_path, capsys):
    with pytest.raises(PrivacyParameterError, match="needs a privacy level"):
        DPConfig(method="dpsgd")
    with pytest.raises(PrivacyParameterError, match="clip must be > 0"):
        _cfg(clip=-1.0)
    with pytest.raises(PrivacyParameterError, match=r"delta must be in \(0, 1/N\)"):
        dp_train(_cfg(delta=0.1), out=tmp_path / "d", progress=False)
    with pytest.raises(UnsupportedLayerError, match="batch norm .*ModuleValidator.fix"):
        dp_train(_cfg(model="lenet"), out=tmp_path / "bn", progress=False)
    assert main(["dp-train", "--data", "digits", "--model", "mlp", "--epsilon", "0"]) == 2
    assert "epsilon must be > 0" in capsys.readouterr().err


@needs_fashion
@pytest.mark.slow
def test_cli_fair_dp_protocol_on_fashion_mnist(tmp_path, capsys):
    """The protocol's data and CNN (class 8 kept at 9 %), one short epoch, ghost path."""
    args = [
        "dp-train",
        "--data",
        "fashion-mnist",
        "--limit",
        "4000",
        "--keep",
        "8:0.09",
        "--epochs",
        "1",
        "--method",
        "global-adapt",
        "--epsilon",
        "6",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "global-adapt: test accuracy" in out
    epsilon = float(out.split("epsilon ")[1].split()[0])
    assert 5.98 <= epsilon <= 6.0


def test_seeded_noise_repeats_and_secure_noise_does_not(tmp_path):
    def weights(name: str, **kw):
        run = dp_train(_cfg(epochs=1, diag_every=0, **kw), out=tmp_path / name, progress=False)
        return torch.cat([p.flatten() for p in load_model(run.path / "model.pt")[0].parameters()])

    assert torch.equal(weights("a"), weights("b"))
    assert not torch.equal(weights("c", secure_noise=True), weights("d", secure_noise=True))
