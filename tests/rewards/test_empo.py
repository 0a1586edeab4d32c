"""EMPO (arXiv 2504.05812): hand-computed numbers, gating, empty answers, clustering by math equivalence."""

from __future__ import annotations

import math

import pytest

from entropo.rewards import RewardManager
from entropo.rewards.empo import cluster, empo_rewards, math_equivalence
from tests.rewards.helpers import reward_cfg, sample


def test_spec_numbers():
    rewards, se, gated, majority = empo_rewards([0, 0, 0, 1, 1, 2, 3], [False] * 7, empty_score=0.0)
    assert rewards == pytest.approx([3 / 7, 3 / 7, 3 / 7, 2 / 7, 2 / 7, 1 / 7, 1 / 7], abs=1e-12)
    # SE = -(3/7 ln 3/7 + 2/7 ln 2/7 + 2 * 1/7 ln 1/7) = 1.27703 < ln 7 = 1.94591
    assert se == pytest.approx(1.27703, abs=1e-5) and not gated and majority == pytest.approx(3 / 7)


def test_all_distinct_and_single_response_are_gated_off():
    rewards, se, gated, _ = empo_rewards(list(range(7)), [False] * 7, empty_score=0.0)
    assert rewards == [0.0] * 7 and gated and se == pytest.approx(math.log(7))
    rewards, se, gated, _ = empo_rewards([0], [False], empty_score=0.0)  # G = 1: SE = 0 is not < ln 1 = 0
    assert rewards == [0.0] and gated and se == 0.0


def test_empty_answers_form_a_cluster_and_get_zero():
    # clusters {a, a, a} {'' ''} {b}; G = 6; the empty ones count in G but are rewarded 0
    rewards, _, gated, majority = empo_rewards([0, 0, 0, 1, 1, 2], [False, False, False, True, True, False], empty_score=0.0)
    assert not gated and majority == 0.5
    assert rewards == pytest.approx([0.5, 0.5, 0.5, 0.0, 0.0, 1 / 6])
    rewards, _, _, _ = empo_rewards([0, 0, 1], [True, True, False], empty_score=-0.5)
    assert rewards == pytest.approx([-0.5, -0.5, 1 / 3])


def test_math_clustering():
    same = math_equivalence(timeout_s=5)
    answers = ["\\frac{1}{2}", "0.5", "3", "1/2", "", "3.0", ""]
    assert cluster(answers, same) == [0, 0, 1, 0, 2, 1, 2]


def test_manager_group_level():
    responses = ["\\boxed{1/2}", "\\boxed{0.5}", "\\boxed{\\frac12}", "\\boxed{3}", "no answer here",
                 "\\boxed{7}", "\\boxed{8}", "\\boxed{9}"]
    samples = [sample(r, "0.5", group=0) for r in responses[:5]]
    samples += [sample(r, "7", group=1) for r in responses[5:]]  # all distinct: gated
    with RewardManager(reward_cfg(["empo"], workers=2)) as rm:
        res = rm.score(samples)
    assert res.rewards.tolist() == pytest.approx([3 / 5, 3 / 5, 3 / 5, 1 / 5, 0.0, 0.0, 0.0, 0.0])
    assert res.cluster_ids.tolist() == [0, 0, 0, 1, 2, 0, 1, 2]
    # acc is still reported from the ground truth, for monitoring only
    assert res.correct.tolist() == [1, 1, 1, 0, 0, 1, 0, 0]
    se0 = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))
    assert res.metrics["reward/empo/se_mean"] == pytest.approx((se0 + math.log(3)) / 2)
    assert res.metrics["reward/empo/gated_frac"] == 0.5
    assert res.metrics["reward/empo/majority_p_mean"] == pytest.approx((0.6 + 1 / 3) / 2)


def test_cluster_answers_without_empo():
    samples = [sample(r, "1", group=g) for g, r in [(0, "\\boxed{1}"), (0, "\\boxed{2}"), (0, "\\boxed{1.0}"),
                                                      (1, "\\boxed{5}")]]
    with RewardManager(reward_cfg(["math"], cluster_answers=True)) as rm:
        res = rm.score(samples)
    assert res.cluster_ids.tolist() == [0, 1, 0, 0]
    assert list(res.components) == ["math"]
    with RewardManager(reward_cfg(["math"])) as rm:
        assert rm.score(samples).cluster_ids.tolist() == [-1] * 4
