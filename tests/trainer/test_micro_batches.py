import pytest
import torch

from entropo.trainer.micro_batches import fixed_size, split_to, token_budget


def _lists(groups):
    return [g.tolist() for g in groups]


def test_fixed_size_cuts_consecutive_rows():
    assert _lists(fixed_size(7, 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert _lists(fixed_size(0, 3)) == [[]]


def test_token_budget_by_hand():
    # rows (prompt, response): 0:(3,10) 1:(3,2) 2:(4,9) 3:(3,3) 4:(5,1)
    # sorted by total, longest first: 0 (13), 2 (13), 3 (6), 4 (6), 1 (5)
    # budget 30: [0, 2] pads to 2 × (4 + 10) = 28; adding 3 would be 3 × 14 = 42 > 30
    #            [3, 4, 1] pads to 3 × (5 + 3) = 24
    p = torch.tensor([3, 3, 4, 3, 5])
    t = torch.tensor([10, 2, 9, 3, 1])
    assert _lists(token_budget(p, t, 30)) == [[0, 2], [3, 4, 1]]
    # every micro-batch stays within the budget
    for budget in (13, 20, 27, 40, 100):
        for g in token_budget(p, t, budget):
            assert len(g) * (int(p[g].max()) + int(t[g].max())) <= budget


def test_token_budget_row_longer_than_budget_is_alone_and_all_rows_once():
    p = torch.tensor([2, 2, 2])
    t = torch.tensor([50, 1, 1])
    groups = token_budget(p, t, 10)
    assert _lists(groups) == [[0], [1, 2]]
    assert sorted(torch.cat(groups).tolist()) == [0, 1, 2]
    assert _lists(token_budget(torch.zeros(0), torch.zeros(0), 10)) == [[]]


def test_split_to_halves_the_largest_until_the_count():
    groups = [torch.tensor([0, 1, 2, 3]), torch.tensor([4])]
    assert _lists(split_to(groups, 2)) == [[0, 1, 2, 3], [4]]
    assert _lists(split_to(groups, 3)) == [[0, 1], [2, 3], [4]]
    assert _lists(split_to(groups, 5)) == [[0], [1], [2], [3], [4]]
    with pytest.raises(ValueError, match="5 rows into 6"):
        split_to(groups, 6)
