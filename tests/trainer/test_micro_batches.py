import pytest
import torch

from entropo.trainer.micro_batches import (
    fixed_size,
    max_over_ranks,
    split_to,
    token_budget,
    with_inert_rows,
)
from tests.fake_ranks import run_split


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


def _pairs(cut_size):
    return lambda rows: fixed_size(len(rows), cut_size)


def _plan(plan):
    """(rows, "bwd"/"fwd", filler?) of a plan, fillers as "fill-bwd"/"fill-fwd"."""
    return [(m.rows.tolist(), ("fill-" if m.filler else "") + ("bwd" if m.backward else "fwd")) for m in plan]


def test_inert_rows_get_no_grad_micro_batches_of_their_own():
    inert = torch.tensor([False, True, True, False, True, False])
    plan = with_inert_rows(_pairs(2), inert, lambda v: v, match_forwards=False)
    assert _plan(plan) == [([1, 2], "fwd"), ([4], "fwd"), ([0, 3], "bwd"), ([5], "bwd")]


def test_all_rows_inert_still_run_one_backward_for_the_optimizer_step():
    plan = with_inert_rows(_pairs(2), torch.ones(3, dtype=torch.bool), lambda v: v, match_forwards=False)
    assert _plan(plan) == [([1, 2], "fwd"), ([0], "bwd")]


def test_ranks_agree_on_backward_and_zero3_forward_counts():
    """Rank 0: 4 inert rows; rank 1: none. Pairs: rank 0 would run 0 backward micro-batches and
    rank 1 two, so rank 0 promotes two inert rows (their gradient is 0) and splits them into
    two backward micro-batches; under ZeRO-3 (match_forwards) rank 1 also runs two filler
    forwards to match rank 0's two no-grad ones."""
    shards = [torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)]

    def plan(inert, reducer, match):
        return _plan(with_inert_rows(_pairs(2), inert, max_over_ranks(reducer), match_forwards=match))

    zero3 = run_split(lambda inert, r: plan(inert, r, True), shards)
    assert zero3[0] == [([2], "fwd"), ([3], "fwd"), ([0], "bwd"), ([1], "bwd")]
    assert zero3[1] == [([0], "fill-fwd"), ([0], "fill-fwd"), ([0, 1], "bwd"), ([2, 3], "bwd")]
    zero2 = run_split(lambda inert, r: plan(inert, r, False), shards)
    assert zero2[0] == [([2, 3], "fwd"), ([0], "bwd"), ([1], "bwd")]
    assert zero2[1] == [([0, 1], "bwd"), ([2, 3], "bwd")]
    for p in (*zero3, *zero2):  # every row once, fillers aside
        assert sorted(r for rows, kind in p if not kind.startswith("fill") for r in rows) == [0, 1, 2, 3]


def test_backward_fillers_when_a_rank_has_fewer_rows_than_the_count():
    # rank 0: 1 row (trained); rank 1: 3 trained rows cut one by one -> 3 backward micro-batches
    shards = [torch.zeros(1, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)]
    plans = run_split(lambda inert, r: _plan(with_inert_rows(_pairs(1), inert, max_over_ranks(r), True)), shards)
    assert plans[0] == [([0], "bwd"), ([0], "fill-bwd"), ([0], "fill-bwd")]
    assert plans[1] == [([0], "bwd"), ([1], "bwd"), ([2], "bwd")]


def test_a_rank_without_rows_makes_every_rank_keep_the_plain_cut():
    shards = [torch.zeros(0, dtype=torch.bool), torch.tensor([True, False])]
    plans = run_split(lambda inert, r: with_inert_rows(_pairs(2), inert, max_over_ranks(r), True), shards)
    assert plans == [None, None]
