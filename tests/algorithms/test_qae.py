"""QAE (arXiv 2509.22611): hand-computed groups, the response-level gate, parity with the
official code's form (torch.quantile + verl's std), edge cases and the rank split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entropo.algorithms.configs.advantages import QAE_INTERPOLATIONS, QaeConfig
from entropo.algorithms.qae import group_quantile, qae
from entropo.algorithms.registry import ADVANTAGES
from tests.fake_ranks import run_split

EPS = 1e-6


def _batch():
    """Three groups of the docstring's three kinds (K = 0.4, linear interpolation):
    a hard prompt (p = 0.4 ≤ 1 − K, b = 0), an easy one (p = 0.75 > 1 − K, b = 1), and a
    group whose quantile position 0.4·3 = 1.2 falls between its last 0 and first 1 (b = 0.2)."""
    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    ids = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    return rewards, ids


def test_hand_computed_groups():
    rewards, ids = _batch()
    adv, metrics = qae(rewards, ids)
    # group 0: b = 0, mean 0.4, unbiased var (3·0.16 + 2·0.36)/4 = 0.3
    s0 = math.sqrt(0.3) + EPS
    # group 1: b = 1, mean 0.75, var (3·0.0625 + 0.5625)/3 = 0.25
    s1 = 0.5 + EPS
    # group 2: b = 0 + 0.2·(1 − 0) = 0.2, mean 0.5, var 1/3
    s2 = math.sqrt(1 / 3) + EPS
    expected = torch.tensor([0, 0, 0, 1 / s0, 1 / s0,
                             0, 0, 0, -1 / s1,
                             -0.2 / s2, -0.2 / s2, 0.8 / s2, 0.8 / s2], dtype=torch.float64)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)
    assert metrics["qae/baseline_mean"].item() == pytest.approx((0 * 5 + 1 * 4 + 0.2 * 4) / 13, abs=1e-12)
    assert metrics["qae/pos_frac"].item() == pytest.approx(4 / 13, abs=1e-12)
    assert metrics["qae/neg_frac"].item() == pytest.approx(3 / 13, abs=1e-12)
    assert metrics["qae/hard_frac"].item() == pytest.approx(1 / 3, abs=1e-12)  # group 0
    assert metrics["qae/easy_frac"].item() == pytest.approx(1 / 3, abs=1e-12)  # group 1
    assert metrics["adv/zero_frac"].item() == pytest.approx(6 / 13, abs=1e-12)


def test_without_std_norm_is_reward_minus_quantile():
    rewards, ids = _batch()
    adv, _ = qae(rewards, ids, QaeConfig(std_norm=False))
    expected = torch.tensor([0, 0, 0, 1, 1, 0, 0, 0, -1, -0.2, -0.2, 0.8, 0.8], dtype=torch.float64)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)


def test_non_binary_median():
    # K = 0.5, three rewards: the median 0.3; unbiased std of {0.3, 0.9, 0.1}
    rewards = torch.tensor([0.3, 0.9, 0.1], dtype=torch.float64)
    adv, _ = qae(rewards, torch.zeros(3, dtype=torch.long), QaeConfig(k=0.5))
    mean = 1.3 / 3
    std = math.sqrt(sum((r - mean) ** 2 for r in (0.3, 0.9, 0.1)) / 2)
    expected = torch.tensor([0.0, 0.6, -0.2], dtype=torch.float64) / (std + EPS)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)


def test_inverted_cdf_closes_the_gap():
    # group 2 of the hand batch: ⌈0.4·4⌉ = 2nd smallest reward = 0, a hard prompt's gate
    rewards = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    ids = torch.zeros(4, dtype=torch.long)
    adv, metrics = qae(rewards, ids, QaeConfig(interpolation="inverted_cdf", std_norm=False))
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64), rtol=0, atol=0)
    assert metrics["qae/hard_frac"].item() == 1.0


@pytest.mark.parametrize("n", range(2, 17))
def test_inverted_cdf_is_the_papers_gate_at_every_group_size(n):
    """Binary rewards, success rate p = c/n: p ≤ 1 − K gives only A ≥ 0, p > 1 − K only A ≤ 0."""
    k = 0.4
    for c in range(n + 1):
        rewards = torch.tensor([1.0] * c + [0.0] * (n - c), dtype=torch.float64)
        adv, _ = qae(rewards, torch.zeros(n, dtype=torch.long), QaeConfig(k=k, interpolation="inverted_cdf"))
        if c / n <= 1 - k + 1e-12:
            assert (adv >= 0).all() and (adv[c:] == 0).all(), (n, c)
        else:
            assert (adv <= 0).all() and (adv[:c] == 0).all(), (n, c)


def test_inverted_cdf_rank_is_not_moved_by_float_noise():
    # 0.7·10 = 7.000000000000001 in float64: the 7th smallest, not the 8th
    rewards = torch.arange(10, dtype=torch.float64)
    q = group_quantile(rewards, torch.zeros(10, dtype=torch.long), 0.7, "inverted_cdf")
    assert (q == 6.0).all()


@pytest.mark.parametrize("interpolation", QAE_INTERPOLATIONS)
@pytest.mark.parametrize("seed", range(3))
def test_quantile_matches_numpy_per_group(interpolation, seed):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 9, (7,), generator=g)
    ids = torch.repeat_interleave(torch.arange(7), sizes)
    perm = torch.randperm(ids.numel(), generator=g)
    ids = ids[perm] * 3 + 5  # unsorted, non-contiguous ids
    rewards = torch.rand(ids.numel(), generator=g, dtype=torch.float64).round(decimals=1)
    q = group_quantile(rewards, ids, 0.4, interpolation)
    for gid in ids.unique():
        sel = ids == gid
        ref = np.quantile(rewards[sel].numpy(), 0.4, method=interpolation)
        assert torch.allclose(q[sel], torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-12), gid


def _official(rewards: torch.Tensor, ids: torch.Tensor, k: float) -> torch.Tensor:
    """The official form, one group at a time: verl's compute_grpo_outcome_advantage with the
    group mean replaced by torch.quantile(scores, k); singleton groups: mean 0, std 1."""
    out = torch.empty_like(rewards)
    for gid in ids.unique():
        sel = ids == gid
        scores = rewards[sel]
        if scores.numel() == 1:
            base, std = torch.tensor(0.0, dtype=scores.dtype), torch.tensor(1.0, dtype=scores.dtype)
        else:
            base, std = torch.quantile(scores, k), torch.std(scores)
        out[sel] = (scores - base) / (std + EPS)
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [0.2, 0.4, 0.75])
def test_matches_the_official_form_on_random_groups(seed, k):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 17, (9,), generator=g)
    ids = torch.repeat_interleave(torch.arange(9), sizes)
    binary = seed % 2 == 0
    rewards = (torch.rand(ids.numel(), generator=g, dtype=torch.float64) < 0.4).double() if binary else \
        torch.randn(ids.numel(), generator=g, dtype=torch.float64)
    adv, _ = qae(rewards, ids, QaeConfig(k=k))
    ref = _official(rewards, ids, k)
    # constant groups: the official division gives (R − R)/(0 + ε) = 0 too
    torch.testing.assert_close(adv, ref, rtol=0, atol=1e-9)


def test_float32_rewards_match_float64_reference():
    g = torch.Generator().manual_seed(3)
    ids = torch.repeat_interleave(torch.arange(6), 8)
    rewards = (torch.rand(48, generator=g) < 0.5).float()
    adv, _ = qae(rewards, ids)
    ref = _official(rewards.double(), ids, 0.4)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv.double(), ref, rtol=0, atol=1e-5)  # float32 rounding of 1/std


def test_singleton_and_constant_groups():
    rewards = torch.tensor([0.7, 1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    ids = torch.tensor([0, 1, 1, 1, 2, 2])
    adv, metrics = qae(rewards, ids)
    torch.testing.assert_close(adv, torch.tensor([0.7 / (1 + EPS), 0, 0, 0, 0, 0], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    adv_raw, _ = qae(rewards, ids, QaeConfig(std_norm=False))
    assert adv_raw[0].item() == 0.7  # zero baseline, no scaling
    # constant groups are neither hard nor easy; the singleton is not counted among groups
    assert metrics["qae/hard_frac"].item() == 0.0 and metrics["qae/easy_frac"].item() == 0.0


def test_empty_batch_and_integer_rewards():
    adv, metrics = qae(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert adv.numel() == 0 and all(v.item() == 0 for v in metrics.values())
    adv, _ = qae(torch.tensor([0, 1, 1, 1]), torch.zeros(4, dtype=torch.long))
    assert adv.dtype == torch.float32


def test_no_gradient_flows_to_rewards():
    rewards = torch.tensor([0.0, 1.0, 1.0, 0.5], requires_grad=True)
    adv, _ = qae(rewards, torch.zeros(4, dtype=torch.long))
    assert not adv.requires_grad


def test_shape_and_id_errors():
    with pytest.raises(ValueError, match="must both be"):
        qae(torch.zeros(3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        qae(torch.zeros(3), torch.zeros(3))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"k": 0.0}, "algorithm.qae.k"), ({"k": 1.0}, "algorithm.qae.k"),
    ({"interpolation": "cubic"}, "algorithm.qae.interpolation"), ({"eps": 0.0}, "algorithm.qae.eps"),
])
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QaeConfig(**kwargs)


def test_two_ranks_equal_whole_batch():
    rewards, ids = _batch()
    whole, _ = qae(rewards, ids)
    first = torch.isin(ids, torch.tensor([0, 2]))
    shards = [(rewards[first], ids[first]), (rewards[~first], ids[~first])]
    results = run_split(lambda s, reducer: qae(s[0], s[1], reducer=reducer), shards)
    torch.testing.assert_close(results[0][0], whole[first], rtol=0, atol=0)
    torch.testing.assert_close(results[1][0], whole[~first], rtol=0, atol=0)


def test_registered_and_selectable_from_config():
    from entropo.config import ConfigError, load_config

    assert ADVANTAGES.get("qae").fn is qae
    cfg = load_config(overrides=["algorithm.advantage=qae", "algorithm.qae.k=0.3"])
    assert cfg.algorithm.qae == QaeConfig(k=0.3)
    with pytest.raises(ConfigError, match="algorithm.qae.k is set"):
        load_config(overrides=["algorithm.qae.k=0.3"])
    with pytest.raises(ConfigError, match="rollout.n >= 2"):
        load_config(overrides=["algorithm.advantage=qae", "rollout.n=1"])
