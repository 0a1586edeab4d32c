"""Outcome advantage estimators: hand-computed numbers, edge cases, loop references, rank split."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from entropo.algorithms.advantages import (
    broadcast_to_tokens,
    dr_grpo,
    grpo,
    reinforce_pp_baseline,
    rloo,
)
from entropo.algorithms.aggregate import aggregate
from entropo.algorithms.configs.advantages import GRPOConfig
from entropo.algorithms.reduce import LOCAL
from entropo.algorithms.registry import ADVANTAGES
from tests.fake_ranks import run_split

ESTIMATORS = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}


# ---------------------------------------------------------------- slow loop references
# Written from the formulas, one group at a time with Python lists (the shape of verl's
# dict-of-lists loops), in float64.


def _groups(rewards, group_ids):
    by_id = defaultdict(list)
    for i, g in enumerate(group_ids.tolist()):
        by_id[g].append(i)
    return by_id


def _grpo_loop(rewards, group_ids, eps=1e-6):
    out = torch.zeros(len(rewards), dtype=torch.float64)
    for idx in _groups(rewards, group_ids).values():
        r = [float(rewards[i]) for i in idx]
        if len(r) == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(r) / len(r)
            std = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))
        for i, x in zip(idx, r):
            out[i] = 0.0 if len(set(r)) == 1 and len(r) > 1 else (x - mean) / (std + eps)
    return out


def _dr_grpo_loop(rewards, group_ids):
    out = torch.zeros(len(rewards), dtype=torch.float64)
    for idx in _groups(rewards, group_ids).values():
        r = [float(rewards[i]) for i in idx]
        mean = 0.0 if len(r) == 1 else sum(r) / len(r)
        for i, x in zip(idx, r):
            out[i] = 0.0 if len(set(r)) == 1 and len(r) > 1 else x - mean
    return out


def _rloo_loop(rewards, group_ids):
    out = torch.zeros(len(rewards), dtype=torch.float64)
    for idx in _groups(rewards, group_ids).values():
        r = [float(rewards[i]) for i in idx]
        for k, i in enumerate(idx):
            others = r[:k] + r[k + 1 :]
            baseline = sum(others) / len(others) if others else 0.0
            out[i] = 0.0 if len(set(r)) == 1 and len(r) > 1 else r[k] - baseline
    return out


def _rpp_baseline_loop(rewards, group_ids, mask):
    a = _dr_grpo_loop(rewards, group_ids)
    tokens = [float(a[i]) for i in range(len(a)) for _ in range(int(mask[i].sum()))]
    n = len(tokens)
    mean = sum(tokens) / n
    var = sum((x - mean) ** 2 for x in tokens) / (n - 1)
    return (a - mean) / math.sqrt(var + 1e-8)


def _random_batch(seed, dtype=torch.float64, binary=False):
    """Groups of sizes 1..6 with shuffled rows and non-contiguous ids; some constant groups."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 7, (12,), generator=gen).tolist()
    ids = torch.cat([torch.full((s,), 13 * g + 5) for g, s in enumerate(sizes)])
    if binary:
        rewards = torch.randint(0, 2, (len(ids),), generator=gen).to(dtype)
    else:
        rewards = torch.rand(len(ids), generator=gen, dtype=torch.float64).to(dtype)
    rewards[ids == 5] = 0.3  # group 0 constant (or a singleton)
    perm = torch.randperm(len(ids), generator=gen)
    lengths = torch.randint(1, 9, (len(ids),), generator=gen)
    mask = (torch.arange(8)[None, :] < lengths[:, None]).to(dtype)
    return rewards[perm], ids[perm], mask[perm]


# ---------------------------------------------------------------- hand-computed numbers (GRPO, Dr.GRPO)


def test_grpo_spec_numbers():
    # std([1,0,0,1]) unbiased = sqrt(1/3) = 0.577350; ±0.5/(0.577350 + 1e-6) = ±0.866024.
    adv, _ = grpo(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long))
    expected = torch.tensor([0.866024, -0.866024, -0.866024, 0.866024])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


def test_dr_grpo_spec_numbers_and_loss():
    adv, _ = dr_grpo(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]), rtol=0, atol=1e-7)
    # Responses 0 and 3 (A = 0.5) with lengths 2 and 4; ℓ = −A = −0.5 on every valid token.
    # seq-mean-token-sum-norm, L_norm = 4: (−0.5·2 − 0.5·4)/(2·4) = −0.375.
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    loss = -broadcast_to_tokens(adv[[0, 3]], mask)
    total = aggregate(loss, mask, "seq-mean-token-sum-norm", l_norm=4)
    torch.testing.assert_close(total, torch.tensor(-0.375), rtol=0, atol=1e-7)


def test_rloo_hand_case():
    # A_i = R_i − mean of the other three: 1 − 1/3 = 2/3 and 0 − 2/3 = −2/3.
    adv, _ = rloo(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long))
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-7)


def test_reinforce_pp_baseline_hand_case():
    # One group R = [1,0,0,1]: a = R − 0.5 = [0.5, −0.5, −0.5, 0.5], lengths [3, 1, 1, 1].
    # Token-weighted mean μ = (3·0.5 − 0.5 − 0.5 + 0.5)/6 = 1/6; a − μ = [1/3, −2/3, −2/3, 1/3].
    # Biased var = (3·1/9 + 4/9 + 4/9 + 1/9)/6 = 2/9; unbiased ×6/5 = 4/15; sqrt = 0.5163978.
    # A = [1/3, −2/3, −2/3, 1/3]/sqrt(4/15 + 1e-8) = [0.6454972, −1.2909944, −1.2909944, 0.6454972].
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.float64)
    adv, metrics = reinforce_pp_baseline(rewards, torch.zeros(4, dtype=torch.long), mask=mask)
    expected = torch.tensor([0.6454972, -1.2909944, -1.2909944, 0.6454972], dtype=torch.float64)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(metrics["adv/whiten_mean"], torch.tensor(1 / 6, dtype=torch.float64))
    # Whitened over tokens: token-weighted mean 0 and unbiased std 1 (up to the 1e-8 guard).
    tokens = broadcast_to_tokens(adv, mask)[mask.bool()]
    torch.testing.assert_close(tokens.mean(), torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(
        tokens.std(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-7
    )


def test_reinforce_pp_baseline_needs_mask():
    with pytest.raises(ValueError, match="mask"):
        reinforce_pp_baseline(torch.ones(2), torch.zeros(2, dtype=torch.long))


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_singleton_group_gives_reward(name):
    # verl: a group of one has mean 0 (and std 1 for GRPO), so A = R (GRPO: R/(1 + 1e-6)).
    rewards = torch.tensor([0.7, 1.0, 0.0, -2.0], dtype=torch.float64)
    group_ids = torch.tensor([9, 4, 4, 1])  # ids 9 and 1 are singletons
    adv, _ = ESTIMATORS[name](rewards, group_ids)
    scale = 1 / (1 + 1e-6) if name == "grpo" else 1.0
    torch.testing.assert_close(adv[[0, 3]], rewards[[0, 3]] * scale, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_constant_group_is_exactly_zero(name):
    # 0.1 three times: rounding leaves mean ≠ 0.1 in float32, which /(std + 1e-6) would inflate.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 1.0, 1.0])
    group_ids = torch.tensor([3, 3, 3, 8, 8, 6, 6])
    adv, metrics = ESTIMATORS[name](rewards, group_ids)
    assert torch.equal(adv[[0, 1, 2, 5, 6]], torch.zeros(5))
    assert adv[3] > 0 > adv[4]
    torch.testing.assert_close(metrics["adv/zero_frac"], torch.tensor(5 / 7))


def test_unsorted_noncontiguous_ids_match_sorted():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    ids = torch.tensor([100, 100, 100, -7, -7, -7])
    perm = torch.tensor([4, 0, 2, 5, 1, 3])
    adv_sorted, _ = grpo(rewards, ids)
    adv_perm, _ = grpo(rewards[perm], ids[perm])
    torch.testing.assert_close(adv_perm, adv_sorted[perm], rtol=0, atol=0)


def test_integer_rewards_and_no_gradient():
    adv, _ = grpo(torch.tensor([1, 0, 0, 1]), torch.zeros(4, dtype=torch.long))
    assert adv.dtype == torch.float32
    r = torch.tensor([1.0, 0.0], requires_grad=True)
    assert not dr_grpo(r, torch.zeros(2, dtype=torch.long))[0].requires_grad


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[N\]"):
        grpo(torch.ones(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        grpo(torch.ones(3), torch.zeros(3))


def test_metrics_and_broadcast():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    adv, metrics = dr_grpo(rewards, torch.tensor([0, 0, 0, 1, 1]))
    # A = [0, 0, 0, 0.5, −0.5]
    expected = {
        "adv/zero_frac": 0.6,
        "adv/abs_mean": 0.2,
        "adv/mean": 0.0,
        "adv/max": 0.5,
        "adv/min": -0.5,
    }
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(metrics[key], torch.tensor(value), msg=key)
    mask = torch.tensor([[1, 1, 0]] * 5)
    tokens = broadcast_to_tokens(adv, mask)
    assert tokens.shape == (5, 3)
    torch.testing.assert_close(tokens[3], torch.tensor([0.5, 0.5, 0.0]))


def test_grpo_config_eps():
    adv, _ = grpo(torch.tensor([1.0, 0.0]), torch.zeros(2, dtype=torch.long), GRPOConfig(eps=1e-4))
    # std([1, 0]) = sqrt(1/2) = 0.7071068; 0.5/(0.7071068 + 1e-4) = 0.7070068.
    torch.testing.assert_close(adv, torch.tensor([0.7070068, -0.7070068]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="eps"):
        GRPOConfig(eps=0.0)


# ---------------------------------------------------------------- loop references


@pytest.mark.parametrize("seed", range(5))
def test_vectorized_equals_loop_float64(seed):
    rewards, ids, mask = _random_batch(seed)
    torch.testing.assert_close(grpo(rewards, ids)[0], _grpo_loop(rewards, ids), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        dr_grpo(rewards, ids)[0], _dr_grpo_loop(rewards, ids), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(rloo(rewards, ids)[0], _rloo_loop(rewards, ids), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        reinforce_pp_baseline(rewards, ids, mask=mask)[0],
        _rpp_baseline_loop(rewards, ids, mask),
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize("seed", range(3))
def test_vectorized_equals_loop_float32_binary(seed):
    rewards, ids, _ = _random_batch(seed, dtype=torch.float32, binary=True)
    expected = _grpo_loop(rewards, ids).to(torch.float32)
    torch.testing.assert_close(grpo(rewards, ids)[0], expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- rank split (style 19)


def _split_by_groups(rewards, ids, mask):
    """Two shards holding whole groups (groups never straddle ranks)."""
    first = torch.isin(ids, ids.unique()[::2])
    return [(rewards[first], ids[first], mask[first]), (rewards[~first], ids[~first], mask[~first])]


@pytest.mark.parametrize("seed", range(3))
def test_reinforce_pp_baseline_two_ranks_equal_whole_batch(seed):
    rewards, ids, mask = _random_batch(seed)
    whole, whole_metrics = reinforce_pp_baseline(rewards, ids, mask=mask)
    shards = _split_by_groups(rewards, ids, mask)

    def on_rank(shard, reducer):
        r, g, m = shard
        return reinforce_pp_baseline(r, g, mask=m, reducer=reducer)

    results = run_split(on_rank, shards)
    first = torch.isin(ids, ids.unique()[::2])
    torch.testing.assert_close(results[0][0], whole[first], rtol=0, atol=1e-12)
    torch.testing.assert_close(results[1][0], whole[~first], rtol=0, atol=1e-12)
    for _, metrics in results:
        for key in ("adv/whiten_mean", "adv/whiten_std"):
            torch.testing.assert_close(metrics[key], whole_metrics[key], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- meta-tests


def test_meta_wrong_values_fail():
    adv, _ = grpo(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long))
    # Population std gives ±1.0, and a 1e-5 slip is outside the tolerance: both must fail.
    for wrong in (
        torch.tensor([1.0, -1.0, -1.0, 1.0]),
        torch.tensor([0.866034, -0.866024, -0.866024, 0.866024]),
    ):
        with pytest.raises(AssertionError):
            torch.testing.assert_close(adv, wrong, rtol=0, atol=1e-6)


def test_meta_local_reducer_on_shards_differs():
    # Without the reducer each shard whitens over itself: the rank-split test would catch it.
    rewards, ids, mask = _random_batch(0)
    whole, _ = reinforce_pp_baseline(rewards, ids, mask=mask)
    (r, g, m), _ = _split_by_groups(rewards, ids, mask)
    local, _ = reinforce_pp_baseline(r, g, mask=m, reducer=LOCAL)
    first = torch.isin(ids, ids.unique()[::2])
    with pytest.raises(AssertionError):
        torch.testing.assert_close(local, whole[first], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- registry


def test_registry_lookup():
    entry = ADVANTAGES.get("grpo")
    assert entry.fn is grpo
    assert entry.config_cls is GRPOConfig
    for name in ("dr_grpo", "rloo", "reinforce_pp_baseline"):
        assert name in ADVANTAGES
