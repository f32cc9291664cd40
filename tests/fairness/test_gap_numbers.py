"""The minority-majority gap and its cross-seed summary, against numbers computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from pifair.data import load_dataset
from pifair.fairness.audit import GroupAudit, PairAudit, audit_pair
from pifair.models import create_model
from pifair.runs import Run
from pifair.workflows.fairness import _summarise


def _group(g: int, drop: float, minority: bool, count: int = 10) -> GroupAudit:
    return GroupAudit(
        group=g,
        name=str(g),
        count=count,
        minority=minority,
        dense_accuracy=0.9,
        reduced_accuracy=0.9 - drop,
        drop=drop,
        dense_loss=0.0,
        reduced_loss=0.0,
        dense_margin=0.0,
        reduced_margin=0.0,
        dense_grad_norm=None,
        reduced_grad_norm=None,
    )


def _pair(drops: list[float], minority: set[int], counts: list[int] | None = None) -> PairAudit:
    counts = counts or [10] * len(drops)
    groups = [_group(g, d, g in minority, c) for g, (d, c) in enumerate(zip(drops, counts))]
    return PairAudit(
        name="p",
        relus=100,
        dense_relus=1000,
        dense_accuracy=0.9,
        reduced_accuracy=0.85,
        groups=groups,
    )


def test_gap_is_minority_mean_drop_minus_majority_mean_drop():
    pair = _pair([0.01, 0.03, 0.10, 0.20], minority={2, 3})
    assert pair.minority_gap == pytest.approx((0.10 + 0.20) / 2 - (0.01 + 0.03) / 2)
    assert pair.drop_spread == pytest.approx(0.19)
    assert pair.worst_group_accuracy == pytest.approx(0.70)
    assert _pair([0.1, 0.2], minority=set()).minority_gap is None


def test_gap_weighs_groups_by_size_with_the_unweighted_one_beside_it():
    """135 samples must not weigh as much as 1,561: by hand, the pooled drops."""
    pair = _pair([0.01, 0.03, 0.10, 0.20], minority={2, 3}, counts=[1000, 3000, 135, 1561])
    minority = (135 * 0.10 + 1561 * 0.20) / (135 + 1561)
    majority = (1000 * 0.01 + 3000 * 0.03) / 4000
    assert pair.minority_gap == pytest.approx(minority - majority)
    assert pair.minority_gap_unweighted == pytest.approx((0.10 + 0.20) / 2 - (0.01 + 0.03) / 2)
    d = pair.as_dict()
    assert d["minority_gap"] == pair.minority_gap
    assert d["minority_gap_unweighted"] == pair.minority_gap_unweighted
    assert [g["count"] for g in d["groups"]] == [1000, 3000, 135, 1561]


def test_gap_of_a_real_audit_matches_a_hand_count():
    data = load_dataset("digits", keep="0-4:0.9,5-9:0.1", keep_test=True)
    torch.manual_seed(1)
    dense = create_model("lenet", num_classes=10, input_shape=(1, 8, 8)).eval()
    reduced = create_model("lenet", num_classes=10, input_shape=(1, 8, 8)).eval()
    audit = audit_pair(dense, reduced, data, relus=10, dense_relus=20, grad_samples=0)
    x, y, g = data.normalize(data.test.x), data.test.y.numpy(), data.test.groups.numpy()
    with torch.no_grad():
        hit_d = dense(x).argmax(1).numpy() == y
        hit_r = reduced(x).argmax(1).numpy() == y
    drop = {c: hit_d[g == c].mean() - hit_r[g == c].mean() for c in range(10)}
    unweighted = np.mean([drop[c] for c in range(5, 10)]) - np.mean([drop[c] for c in range(5)])
    minority, majority = g >= 5, g < 5  # size-weighted: the drop of the pooled samples
    pooled = (hit_d[minority].mean() - hit_r[minority].mean()) - (
        hit_d[majority].mean() - hit_r[majority].mean()
    )
    assert [a.minority for a in audit.groups] == [False] * 5 + [True] * 5
    assert audit.minority_gap == pytest.approx(pooled)
    assert audit.minority_gap_unweighted == pytest.approx(unweighted)


def test_cross_seed_summary_is_the_mean_and_t_interval(tmp_path):
    gaps = []
    pairs = []
    for seed, drops in enumerate(([0.0, 0.1], [0.02, 0.05], [0.01, 0.13])):
        run = Run.create("linearize", {"seed": seed}, out=tmp_path / f"s{seed}")
        run.update_metrics(method="snl", objective="kd")
        pairs.append((run, _pair(drops, minority={1})))
        gaps.append(drops[1] - drops[0])
    (row,) = _summarise(pairs)
    assert row["label"] == "snl" and row["runs"] == 3 and row["relus"] == 100
    half = scipy.stats.t.ppf(0.975, df=2) * np.std(gaps, ddof=1) / np.sqrt(3)
    assert row["minority_gap"] == pytest.approx(np.mean(gaps))
    assert row["minority_gap_ci"] == pytest.approx(half, rel=1e-3)
    assert row["group_drops"] == pytest.approx({"0": 0.01, "1": (0.1 + 0.05 + 0.13) / 3})
