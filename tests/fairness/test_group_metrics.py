import numpy as np
import pytest

from pifair.fairness import group_report


def test_per_group_accuracy_matches_a_hand_count():
    y_true = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    y_pred = np.array([0, 1, 1, 1, 0, 2, 0, 0])
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    losses = np.array([1.0, 2, 3, 4, 5, 6, 7, 8])
    r = group_report(y_true, y_pred, groups, ["a", "b", "c", "absent"], losses=losses)
    # group a: samples 0,1,2 -> correct 0,2 -> 2/3; b: 3,4,5 -> correct 3,5 -> 2/3;
    # c: 6,7 -> correct 7 -> 1/2
    assert [g.name for g in r.groups] == ["a", "b", "c"]
    assert [g.count for g in r.groups] == [3, 3, 2]
    assert [g.accuracy for g in r.groups] == pytest.approx([2 / 3, 2 / 3, 1 / 2])
    assert [g.loss for g in r.groups] == pytest.approx([2.0, 5.0, 7.5])
    assert r.accuracy == pytest.approx(5 / 8)
    assert r.worst_group_accuracy == pytest.approx(0.5)
    assert r.accuracy_gap == pytest.approx(2 / 3 - 1 / 2)
    assert "worst group 50.00%" in r.table()


def test_lengths_must_match():
    with pytest.raises(ValueError, match="lengths differ"):
        group_report(np.zeros(3), np.zeros(2), np.zeros(3), ["a"])
