"""CANON (arXiv 2509.23962): hand-computed numbers, edge cases, the official loop as reference, uniform call."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from entropo.algorithms.advantages import dr_grpo
from entropo.algorithms.canon import canon, canon_split, canon_token_scale
from entropo.algorithms.configs.advantages import CanonConfig
from entropo.algorithms.reduce import LOCAL
from entropo.algorithms.registry import ADVANTAGES
from tests.fake_ranks import run_split

# Hand case: R = [1,0,1,1], h = [0.2, 0.9, 0.5, 1.2]; L = {0, 2} (m_L = 1.0), U = {1, 3} (m_U = 0.5).
R = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
H = torch.tensor([0.2, 0.9, 0.5, 1.2], dtype=torch.float64)
ONE_GROUP = torch.zeros(4, dtype=torch.long)


def _tokens(h: torch.Tensor, lengths: list[int], width: int = 4):
    """Entropy ``[N, width]`` whose token mean over ``mask`` is ``h``; padding holds NaN."""
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).to(h.dtype)
    entropy = h[:, None].expand(-1, width).clone()
    entropy[mask == 0] = float("nan")  # must never be read
    return entropy, mask


# ---------------------------------------------------------------- official loop reference
# Written as the official code computes it: dict-of-lists per group, Python's stable sorted().


def _canon_loop(rewards, group_ids, h, alpha=1.0, beta=0.0, mu=1.0):
    by_id = defaultdict(list)
    for i, g in enumerate(group_ids.tolist()):
        by_id[g].append(i)
    out = torch.zeros(len(rewards), dtype=torch.float64)
    for idx in by_id.values():
        paired = sorted(((float(h[i]), float(rewards[i]), i) for i in idx), key=lambda x: x[0])
        mid = len(paired) // 2
        low = [r for _, r, _ in paired[:mid]]
        high = [r for _, r, _ in paired[mid:]]
        m_low = 0.0 if len(idx) == 1 else sum(low) / len(low)
        m_high = 0.0 if len(idx) == 1 else sum(high) / len(high)
        for k, (_, r, i) in enumerate(paired):
            if k >= mid:
                out[i] = mu * (r - alpha * m_low + beta) + (1 - mu) * (r - m_high)
            else:
                out[i] = mu * (alpha * r - m_high - beta) + (1 - mu) * (r - m_low)
    return out


def _random_batch(seed):
    """Groups of size 1..7, shuffled rows, non-contiguous ids, h rounded to 0.1 (many ties)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 8, (10,), generator=gen).tolist()
    ids = torch.cat([torch.full((s,), 11 * g - 3) for g, s in enumerate(sizes)])
    rewards = torch.randint(0, 2, (len(ids),), generator=gen).to(torch.float64)
    h = (torch.rand(len(ids), generator=gen, dtype=torch.float64) * 5).round() / 10
    perm = torch.randperm(len(ids), generator=gen)
    return rewards[perm], ids[perm], h[perm]


# ---------------------------------------------------------------- hand-computed numbers


@pytest.mark.parametrize(
    ("mu", "expected"),
    [
        # μ = 1: U: R − m_L = [0 − 1, 1 − 1]; L: R − m_U = [1 − 0.5, 1 − 0.5].
        (1.0, [0.5, -1.0, 0.5, 0.0]),
        # μ = 0: U: R − m_U = [0 − 0.5, 1 − 0.5]; L: R − m_L = [1 − 1, 1 − 1].
        (0.0, [0.0, -0.5, 0.0, 0.5]),
        # μ = 0.5: the mean of the two = R − 0.75 (Dr.GRPO, since |L| = |U|).
        (0.5, [0.25, -0.75, 0.25, 0.25]),
    ],
)
def test_spec_numbers(mu, expected):
    entropy, mask = _tokens(H, [1, 4, 2, 3])
    adv, _ = canon(R, ONE_GROUP, CanonConfig(mu=mu), mask=mask, entropy=entropy)
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_spec_metrics():
    entropy, mask = _tokens(H, [4, 4, 4, 4])
    _, m = canon(R, ONE_GROUP, mask=mask, entropy=entropy)
    # h over L = (0.2 + 0.5)/2 = 0.35, over U = (0.9 + 1.2)/2 = 1.05; m_U − m_L = 0.5 − 1.0.
    expected = {
        "canon/h_low_mean": 0.35,
        "canon/h_high_mean": 1.05,
        "canon/gap_mean": -0.5,
        "canon/high_better_frac": 0.0,
        "adv/mean": 0.0,
    }
    for key, value in expected.items():
        torch.testing.assert_close(m[key], torch.tensor(value, dtype=torch.float64), msg=key)


def test_token_scale():
    assert canon_token_scale("seq-mean-token-sum", 8192) == 1 / 8192
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert canon_token_scale(mode, 8192) == 1.0
    with pytest.raises(ValueError, match="aggregation mode"):
        canon_token_scale("seq-sum", 8192)
    with pytest.raises(ValueError, match="max_response_length"):
        canon_token_scale("seq-mean-token-sum", 0)


# ---------------------------------------------------------------- edge cases


def test_singleton_group():
    # n = 1: L is empty and the code sets both means to 0: A = μ(R + β) + (1 − μ)R = R + μβ.
    rewards = torch.tensor([0.7, 1.0, 0.0], dtype=torch.float64)
    ids = torch.tensor([5, 2, 2])
    entropy, mask = _tokens(torch.tensor([0.3, 0.1, 0.2], dtype=torch.float64), [2, 2, 2])
    adv, _ = canon(rewards, ids, CanonConfig(beta=0.1, mu=0.5), mask=mask, entropy=entropy)
    torch.testing.assert_close(adv[0], torch.tensor(0.75, dtype=torch.float64))
    adv0, _ = canon(rewards, ids, CanonConfig(singleton_zero=True), mask=mask, entropy=entropy)
    assert adv0[0] == 0
    # The pair is unaffected: h = [0.1, 0.2] → L = {1} (R = 1), U = {2} (R = 0); μ = 1:
    # A_1 = 1 − 0 = 1, A_2 = 0 − 1 = −1.
    torch.testing.assert_close(adv0[1:], torch.tensor([1.0, -1.0], dtype=torch.float64))


def test_odd_group_high_half_gets_extra_member():
    h = torch.tensor([0.5, 0.1, 0.9], dtype=torch.float64)  # L = {1}, U = {0, 2}
    high = canon_split(h, torch.zeros(3, dtype=torch.long))
    assert high.tolist() == [True, False, True]


def test_ties_broken_by_batch_order():
    # All h equal: the first ⌊n/2⌋ responses in batch order form L.
    high = canon_split(torch.full((5,), 0.4), torch.tensor([7, 7, 7, 7, 7]))
    assert high.tolist() == [False, False, True, True, True]
    # Same with the group's rows interleaved with another group's.
    high = canon_split(torch.full((6,), 0.4), torch.tensor([1, 2, 1, 2, 1, 2]))
    assert high.tolist() == [False, False, True, True, True, True]


def test_length_metric_needs_no_entropy():
    # Lengths [1, 4, 2, 3] order like H: L = {0, 2}, U = {1, 3}: the hand case's μ = 1 numbers.
    _, mask = _tokens(H, [1, 4, 2, 3])
    adv, _ = canon(R, ONE_GROUP, CanonConfig(metric="length"), mask=mask)
    torch.testing.assert_close(adv, torch.tensor([0.5, -1.0, 0.5, 0.0], dtype=torch.float64))


def test_constant_group_is_zero_and_no_gradient():
    entropy, mask = _tokens(H, [4, 4, 4, 4])
    r = torch.ones(4, requires_grad=True)
    adv, _ = canon(r, ONE_GROUP, mask=mask, entropy=entropy.float().requires_grad_())
    assert torch.equal(adv, torch.zeros(4)) and not adv.requires_grad


def test_errors_and_config():
    _, mask = _tokens(H, [4, 4, 4, 4])
    with pytest.raises(ValueError, match="entropies"):
        canon(R, ONE_GROUP, mask=mask)
    with pytest.raises(ValueError, match="mask"):
        canon(R, ONE_GROUP, entropy=mask)
    with pytest.raises(ValueError, match=r"\[N\]"):
        canon(R, torch.zeros(3, dtype=torch.long), mask=mask, entropy=mask)
    with pytest.raises(ValueError, match="algorithm.canon.mu"):
        CanonConfig(mu=1.5)
    with pytest.raises(ValueError, match="algorithm.canon.metric"):
        CanonConfig(metric="perplexity")


# ---------------------------------------------------------------- official loop


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("alpha", "beta", "mu"), [(1.0, 0.0, 1.0), (0.7, 0.2, 0.3), (1.3, -0.1, 0.0)])
def test_equals_official_loop(seed, alpha, beta, mu):
    rewards, ids, h = _random_batch(seed)
    entropy, mask = _tokens(h, [3] * len(h))
    adv, _ = canon(rewards, ids, CanonConfig(alpha=alpha, beta=beta, mu=mu), mask=mask, entropy=entropy)
    torch.testing.assert_close(adv, _canon_loop(rewards, ids, h, alpha, beta, mu), rtol=0, atol=1e-12)


def test_mu_half_even_groups_is_dr_grpo():
    gen = torch.Generator().manual_seed(3)
    ids = torch.arange(6).repeat_interleave(4)
    rewards = torch.rand(24, generator=gen, dtype=torch.float64)
    entropy = torch.rand(24, 5, generator=gen, dtype=torch.float64)
    adv, _ = canon(rewards, ids, CanonConfig(mu=0.5), mask=torch.ones(24, 5), entropy=entropy)
    torch.testing.assert_close(adv, dr_grpo(rewards, ids)[0], rtol=0, atol=1e-12)


def test_two_ranks_holding_whole_groups():
    rewards, ids, h = _random_batch(1)
    entropy, mask = _tokens(h, [3] * len(h))
    whole, _ = canon(rewards, ids, mask=mask, entropy=entropy)
    first = torch.isin(ids, ids.unique()[::2])
    shards = [(rewards[s], ids[s], mask[s], entropy[s]) for s in (first, ~first)]

    def on_rank(shard, reducer):
        r, g, m, e = shard
        return canon(r, g, mask=m, entropy=e, reducer=reducer)[0]

    results = run_split(on_rank, shards)
    torch.testing.assert_close(results[0], whole[first], rtol=0, atol=0)
    torch.testing.assert_close(results[1], whole[~first], rtol=0, atol=0)


# ---------------------------------------------------------------- registry and uniform call


def test_registry_and_uniform_call():
    entry = ADVANTAGES.get("canon")
    assert entry.fn is canon and entry.config_cls is CanonConfig
    entropy, mask = _tokens(H, [4, 4, 4, 4])
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "canon"):
        adv, _ = ADVANTAGES.get(name).fn(R, ONE_GROUP, None, mask=mask, entropy=entropy, reducer=LOCAL)
        assert adv.shape == (4,)


def test_meta_wrong_value_fails():
    entropy, mask = _tokens(H, [4, 4, 4, 4])
    adv, _ = canon(R, ONE_GROUP, mask=mask, entropy=entropy)
    # A 1e-5 slip, and μ = 0's numbers (μ ignored), must both fail.
    for wrong in ([0.5, -1.0, 0.5, 1e-5], [0.0, -0.5, 0.0, 0.5]):
        with pytest.raises(AssertionError):
            torch.testing.assert_close(adv, torch.tensor(wrong, dtype=torch.float64), rtol=0, atol=1e-6)
