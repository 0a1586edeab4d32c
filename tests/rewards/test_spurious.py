"""The ``random`` control reward: its rate, its determinism, and that it ignores the response."""

from __future__ import annotations

import dataclasses

import pytest

from entropo.rewards import RewardManager
from entropo.rewards.api import TrainerState
from entropo.rewards.configs import RandomRewardConfig
from entropo.rewards.registry import get
from entropo.rewards.spurious import random_rewards, uniform_draw
from tests.rewards.helpers import reward_cfg, sample


def _batch(n_groups=16, n=8, step=3, response=lambda g, k: f"r{g}-{k}"):
    state = TrainerState(global_step=step, max_steps=10)
    return [dataclasses.replace(sample(response(g, k), group=g, prompt=f"prompt {g}"), trainer_state=state)
            for g in range(n_groups) for k in range(n)]


def _expected(samples, cfg=None):
    cfg = cfg or RandomRewardConfig()
    pos: dict[int, int] = {}
    out = []
    for s in samples:
        k = pos.get(s.group, 0)
        pos[s.group] = k + 1
        u = uniform_draw(cfg.seed, s.trainer_state.global_step, False, s.prompt, s.group, k)
        out.append(1.0 if u < cfg.p else 0.0)
    return out


def test_registered_as_a_group_reward_with_the_papers_default():
    b = get("random")
    assert b.level == "group" and b.options is RandomRewardConfig
    assert RandomRewardConfig().p == 0.5  # Spurious Rewards, arXiv 2506.10947: Bernoulli(0.5)
    with pytest.raises(ValueError, match="reward.random.p"):
        RandomRewardConfig(p=1.5)


def test_draw_is_a_pure_function_of_its_key():
    a = uniform_draw(0, 1, False, "p", 0, 0)
    assert a == uniform_draw(0, 1, False, "p", 0, 0) and 0.0 <= a < 1.0
    others = {uniform_draw(*key) for key in [(1, 1, False, "p", 0, 0), (0, 2, False, "p", 0, 0),
                                             (0, 1, True, "p", 0, 0), (0, 1, False, "q", 0, 0),
                                             (0, 1, False, "p", 1, 0), (0, 1, False, "p", 0, 1)]}
    assert a not in others and len(others) == 6  # every field of the key matters


def test_rate_is_p_and_rewards_ignore_the_response():
    samples = _batch(n_groups=250, n=8)
    scores = [d["score"] for g in range(250) for d in random_rewards(samples[g * 8:(g + 1) * 8], RandomRewardConfig())]
    assert set(scores) == {0.0, 1.0}
    # 2000 Bernoulli(0.5) draws: standard error 0.011, so 0.5 ± 0.045 is a 4-sigma band
    assert sum(scores) / len(scores) == pytest.approx(0.5, abs=0.045)
    other_responses = _batch(n_groups=250, n=8, response=lambda g, k: "same text")
    again = [d["score"] for g in range(250)
             for d in random_rewards(other_responses[g * 8:(g + 1) * 8], RandomRewardConfig())]
    assert again == scores
    assert sum(d["score"] for d in random_rewards(samples[:80], RandomRewardConfig(p=0.0))) == 0.0
    assert sum(d["score"] for d in random_rewards(samples[:80], RandomRewardConfig(p=1.0))) == 80.0


def test_manager_scores_are_independent_of_workers_and_order():
    samples = _batch(n_groups=12, n=4)
    expected = _expected(samples)
    for workers in (1, 3):
        with RewardManager(reward_cfg(["random", "embedded*0"], workers=workers)) as rm:
            res = rm.score(samples)
        assert res.components["random"].tolist() == expected
        assert res.rewards.tolist() == expected  # embedded*0 adds nothing
        assert res.correct.tolist() == [0.0] * len(samples)  # correctness comes from embedded's acc
    # groups interleaved in the batch: the position within each group, not in the batch, counts
    shuffled = [s for k in range(4) for g in range(12) for s in [samples[g * 4 + k]]]
    with RewardManager(reward_cfg(["random"])) as rm:
        res = rm.score(shuffled)
    assert res.components["random"].tolist() == _expected(shuffled)
    assert sorted(res.components["random"].tolist()) == sorted(expected)
