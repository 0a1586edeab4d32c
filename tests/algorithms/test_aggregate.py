import pytest
import torch

from entropo.algorithms.aggregate import aggregate, loss_norm
from entropo.algorithms.configs.reduction import AGG_MODES
from entropo.algorithms.reduce import LOCAL
from tests.fake_ranks import run_split

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", (1 + 2 + 3 + 4) / 4),  # 2.5
        ("seq-mean-token-mean", (6 / 3 + 4 / 1) / 2),  # 3.0
        ("seq-mean-token-sum", (6 + 4) / 2),  # 5.0
        ("seq-mean-token-sum-norm", 10 / (2 * 4)),  # 1.25 with L_norm = 4
    ],
)
def test_hand_computed_modes(mode, expected):
    assert aggregate(LOSS, MASK, mode, l_norm=4).item() == pytest.approx(expected)


def test_masked_positions_contribute_nothing_even_if_nan():
    loss = LOSS.clone()
    loss[1, 1] = float("nan")
    loss[1, 2] = float("inf")
    for mode in AGG_MODES:
        assert torch.isfinite(aggregate(loss, MASK, mode, l_norm=4))


def test_fully_masked_sequence_does_not_count():
    mask = MASK.clone()
    mask[1] = 0
    assert loss_norm(mask).num_seqs == 1
    assert aggregate(LOSS, mask, "seq-mean-token-mean").item() == pytest.approx(2.0)


def test_empty_batch_is_zero():
    assert aggregate(LOSS, torch.zeros_like(MASK), "token-mean").item() == 0.0


def test_sum_norm_requires_l_norm():
    with pytest.raises(ValueError, match="l_norm"):
        aggregate(LOSS, MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="unknown loss aggregation mode"):
        aggregate(LOSS, MASK, "token-sum")


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batch_shares_add_up_to_the_whole(mode):
    torch.manual_seed(0)
    loss = torch.randn(9, 13)
    mask = (torch.rand(9, 13) > 0.4).float()
    whole = aggregate(loss, mask, mode, l_norm=13)
    norm = loss_norm(mask)
    shares = [aggregate(loss[i : i + 2], mask[i : i + 2], mode, norm, l_norm=13) for i in range(0, 9, 2)]
    torch.testing.assert_close(sum(shares), whole, atol=1e-6, rtol=0)
    # a per-micro-batch token mean is a different (wrong) number: the reason for global norms
    if mode == "token-mean":
        naive = sum(aggregate(loss[i : i + 2], mask[i : i + 2], mode) for i in range(0, 9, 2)) / 5
        assert abs(naive.item() - whole.item()) > 1e-3


@pytest.mark.parametrize("mode", AGG_MODES)
def test_rank_split_equals_whole_batch(mode):
    torch.manual_seed(1)
    loss = torch.randn(6, 11)
    mask = (torch.rand(6, 11) > 0.3).float()

    def share(rows, reducer):
        return aggregate(loss[rows], mask[rows], mode, loss_norm(mask[rows], reducer), l_norm=11)

    whole = share(slice(0, 6), LOCAL)
    parts = run_split(share, [slice(0, 1), slice(1, 6)])
    torch.testing.assert_close(parts[0] + parts[1], whole, atol=1e-6, rtol=0)
