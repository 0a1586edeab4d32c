import pytest
import torch

from entropo.algorithms.aggregate import aggregate, loss_norm
from entropo.algorithms.configs.masks import EntropyMaskConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.masks.high_entropy import high_entropy_mask
from entropo.algorithms.reduce import LOCAL
from entropo.algorithms.select import top_count
from tests.fake_ranks import run_split

SPEC_H = [0.1, 2.0, 0.5, 1.5, 0.05, 3.0, 0.2, 0.7, 1.0, 0.3]


def _mask(entropy, mask=None, reducer=LOCAL, **cfg):
    entropy = torch.as_tensor(entropy, dtype=torch.float32).reshape(1, -1) if not torch.is_tensor(entropy) else entropy
    mask = torch.ones_like(entropy) if mask is None else mask
    inp = TokenLossInputs(torch.zeros_like(entropy), torch.zeros_like(entropy), torch.zeros_like(entropy), mask,
                          entropy=entropy, reducer=reducer)
    return high_entropy_mask(inp, EntropyMaskConfig(**cfg))


def test_spec_l4_selects_the_two_largest():
    keep, metrics = _mask(SPEC_H, rho=0.2)
    # k = 2 -> the tokens with H = 3.0 and 2.0 (positions 5 and 1); threshold = 2.0
    assert keep.keep.flatten().nonzero().flatten().tolist() == [1, 5]
    assert metrics["entropy_mask/threshold"].item() == pytest.approx(2.0)


def test_spec_l4_normalisations():
    loss = torch.arange(1.0, 11.0).reshape(1, 10)  # ℓ_a = 2 (pos 1), ℓ_b = 6 (pos 5)
    mask = torch.ones(1, 10)
    sel, _ = _mask(SPEC_H, rho=0.2, norm="selected")
    denom = mask.bool() & sel.keep
    official = aggregate(loss * sel.keep, denom, "token-mean", loss_norm(denom))
    assert official.item() == pytest.approx((2 + 6) / 2)
    allv, _ = _mask(SPEC_H, rho=0.2, norm="all_valid")
    assert not allv.exclude_from_denominator
    trl = aggregate(loss * allv.keep, mask, "token-mean", loss_norm(mask))
    assert trl.item() == pytest.approx((2 + 6) / 10)


def test_batch_level_not_per_sequence():
    # Contrast: pooled top-2 of [2,3,4,5,6] and [0.1..0.5] is {6, 5}, both in sequence 0.
    h = torch.tensor([[2.0, 3.0, 4.0, 5.0, 6.0], [0.1, 0.2, 0.3, 0.4, 0.5]])
    keep, _ = _mask(h, rho=0.2)
    assert keep.keep.nonzero().tolist() == [[0, 3], [0, 4]]


def test_edge_cases():
    # N = 0: nothing kept, and the aggregated loss is 0
    keep, _ = _mask([1.0, 2.0], mask=torch.zeros(1, 2))
    assert not keep.keep.any()
    denom = keep.keep
    assert aggregate(torch.ones(1, 2), denom, "token-mean", loss_norm(denom)).item() == 0.0
    # rho = 1 keeps every valid token, and only valid ones
    m = torch.tensor([[1.0, 0.0, 1.0]])
    keep, _ = _mask([1.0, 9.0, 2.0], mask=m, rho=1.0)
    assert keep.keep.tolist() == [[True, False, True]]
    # tiny rho keeps at least one token
    keep, _ = _mask(SPEC_H, rho=1e-6)
    assert int(keep.keep.sum()) == 1
    # ties: exactly k tokens, the earliest among ties
    keep, _ = _mask([1.0, 1.0, 1.0, 1.0, 1.0], rho=0.4)
    assert keep.keep.flatten().tolist() == [True, True, False, False, False]


def test_top_count_follows_the_official_rounding():
    assert top_count(0.2, 10) == 2
    assert top_count(0.2, 11) == 3  # 2.2 rounds up
    assert top_count(0.2, 0) == 0
    assert top_count(0.001, 10) == 1


def test_needs_entropy():
    inp = TokenLossInputs(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="entropies"):
        high_entropy_mask(inp, EntropyMaskConfig())


def test_rank_split_equals_whole_batch():
    torch.manual_seed(11)
    h = torch.rand(7, 25).round(decimals=1)  # many ties on purpose
    mask = (torch.rand(7, 25) > 0.25).float()

    def select(rows, reducer):
        return _mask(h[rows], mask=mask[rows], reducer=reducer, rho=0.2)[0].keep

    whole = select(slice(0, 7), LOCAL)
    parts = run_split(select, [slice(0, 4), slice(4, 7)])
    assert torch.equal(torch.cat(parts), whole)
    assert int(whole.sum()) == top_count(0.2, int(mask.sum()))


def test_large_scope_beyond_quantile_limit():
    # torch.quantile refuses more than 2^24 elements; exact top-k does not.
    n = (1 << 24) + 16
    h = torch.rand(1, n)
    keep, _ = _mask(h, rho=0.001)
    assert int(keep.keep.sum()) == top_count(0.001, n)
    assert h[keep.keep].min() >= h[~keep.keep].max()
