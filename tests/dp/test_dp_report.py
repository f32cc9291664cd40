"""The report's DP comparison says when private runs differ in more than their method."""

from __future__ import annotations

from pifair.report.dp_section import dp_comparison_summary, unequal_settings
from pifair.runs import Run

COMMON = dict(
    data="fashion-mnist",
    keep="8:0.09",
    model="fairdp_cnn",
    epochs=12,
    batch_size=256,
    epsilon=6.0,
    delta=1e-6,
)


def _run(tmp_path, name: str, method: str, lr: float) -> Run:
    run = Run.create("dp-train", dict(COMMON, method=method, lr=lr), out=tmp_path / name)
    return Run.open(run.path)


def test_unequal_settings_names_only_what_differs():
    a, b = dict(COMMON, lr=0.01), dict(COMMON, lr=0.1)
    assert unequal_settings([a, b]) == {"lr": [0.01, 0.1]}
    assert unequal_settings([a, dict(a)]) == {}


def test_methods_at_different_learning_rates_are_flagged(tmp_path):
    runs = [_run(tmp_path, "a", "dpsgd", 0.01), _run(tmp_path, "b", "global-adapt", 0.1)]
    html = dp_comparison_summary(runs)
    assert "Not a fair comparison" in html and "differ in lr" in html


def test_methods_at_the_same_settings_are_not_flagged(tmp_path):
    runs = [
        _run(tmp_path, "a", "dpsgd", 0.1),
        _run(tmp_path, "b", "global-adapt", 0.1),
        _run(tmp_path, "c", "nonprivate", 0.5),
    ]
    html = dp_comparison_summary(runs)
    assert "Not a fair comparison" not in html and "differ by method alone" in html


def test_one_private_method_has_no_comparison(tmp_path):
    runs = [_run(tmp_path, "a", "dpsgd", 0.1), _run(tmp_path, "b", "dpsgd", 0.3)]
    assert dp_comparison_summary(runs) == ""
