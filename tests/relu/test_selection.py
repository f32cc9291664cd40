import itertools
import random

import pytest
import torch

from pifair.errors import BudgetError
from pifair.relu.selection import largest_reachable, select_channels, select_pixels


def test_select_pixels_keeps_exactly_the_top_scores():
    scores = {"a": torch.tensor([[0.9, 0.1], [0.5, 0.5]]), "b": torch.tensor([0.7, 0.2, 0.5])}
    masks = select_pixels(scores, 4)
    # 0.9 and 0.7, then two of the three 0.5s: ties go to the earlier position
    assert masks["a"].tolist() == [[1, 0], [1, 1]]
    assert masks["b"].tolist() == [1, 0, 0]


def test_select_pixels_rejects_impossible_budgets():
    with pytest.raises(BudgetError, match="above the model's ReLU count of 3"):
        select_pixels({"a": torch.ones(3)}, 4)
    with pytest.raises(BudgetError):
        select_pixels({"a": torch.ones(3)}, -1)


def _brute_force_best(sizes: list[int], budget: int) -> int:
    best = 0
    for r in range(len(sizes) + 1):
        for combo in itertools.combinations(sizes, r):
            if best < sum(combo) <= budget:
                best = sum(combo)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_channel_selection_reaches_the_largest_count_not_over(seed):
    rng = random.Random(seed)
    sizes = {f"s{i}": rng.choice([1, 3, 4, 9, 16]) for i in range(3)}
    scores = {
        n: torch.rand(rng.randint(1, 4), generator=torch.Generator().manual_seed(seed + i))
        for i, n in enumerate(sizes)
    }
    all_sizes = [sizes[n] for n in scores for _ in range(scores[n].numel())]
    budget = rng.randint(0, sum(all_sizes))
    masks = select_channels(scores, sizes, budget)
    kept = sum(int(masks[n].sum()) * sizes[n] for n in masks)
    assert kept == _brute_force_best(all_sizes, budget) == largest_reachable(all_sizes, budget)
    assert kept <= budget


def test_channel_selection_prefers_high_scores_when_they_fit():
    scores = {"big": torch.tensor([0.9, 0.1]), "small": torch.tensor([0.8, 0.7, 0.2])}
    masks = select_channels(scores, {"big": 4, "small": 1}, 6)
    assert masks["big"].tolist() == [1, 0] and masks["small"].tolist() == [1, 1, 0]
