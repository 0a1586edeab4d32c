"""PEAR (arXiv 2510.08026): hand-computed numbers, edge cases, metrics, tokenizer handling."""

from __future__ import annotations

import math

import pytest
import torch

from entropo.models.tiny import build_char_tokenizer
from entropo.rewards import RewardManager, RewardSpecError
from entropo.rewards.configs import PEARConfig
from entropo.rewards.manager import make_context
from entropo.rewards.pear import find_close, pear_reward, phase_entropies
from entropo.rewards.registry import RewardContext
from tests.rewards.helpers import reward_cfg, sample

TOK = build_char_tokenizer()
CLOSE = TOK.convert_tokens_to_ids("</think>")
# Hand case: think entropies [0.8, 0.6, 1.0], </think>, answer entropies [0.2, 0.4]. The entropy
# under </think> itself (5.0) must be in neither phase.
ENTROPY = [0.8, 0.6, 1.0, 5.0, 0.2, 0.4]


def _pear_sample(response: str, ground_truth: str, entropy=ENTROPY, group: int = 0):
    ids = TOK.encode(response, add_special_tokens=False)
    assert len(ids) == len(entropy)
    return sample(response, ground_truth, ids=ids, entropy=entropy, data_source="embedded/addition", group=group)


def test_spec_numbers():
    h_think, h_answer = phase_entropies(torch.tensor(ENTROPY), (3, 4))
    # H_think = (0.8+0.6+1.0)/3 = 0.8; H_answer = (0.2+0.4)/2 = 0.3; P = 0.8 - 1*0.3 = 0.5
    assert h_think == pytest.approx(0.8, abs=1e-6) and h_answer == pytest.approx(0.3, abs=1e-6)
    cfg = PEARConfig(alpha=1.0)
    r, p = pear_reward(h_think, h_answer, True, cfg)
    assert p == pytest.approx(0.5, abs=1e-6) and r == pytest.approx(0.5, abs=1e-6)  # min(1, 1 - 0.5)
    assert pear_reward(h_think, h_answer, False, cfg) == (0.0, pytest.approx(0.5, abs=1e-6))  # r_fmt


def test_no_think_close_means_all_think():
    # No </think>: k = T, every token is "think" and H_answer = 0, so P = mean of all 6 = 8.0/6.
    h_think, h_answer = phase_entropies(torch.tensor(ENTROPY), None)
    assert h_answer == 0.0 and h_think == pytest.approx(8.0 / 6, abs=1e-6)
    assert pear_reward(h_think, h_answer, True, PEARConfig())[1] == pytest.approx(8.0 / 6, abs=1e-6)


def test_edge_positions_and_clipping():
    h = torch.tensor([0.5, 0.7, 0.9])
    assert phase_entropies(h, (0, 1)) == (0.0, pytest.approx(0.8))  # </think> first: H_think = 0
    assert phase_entropies(h, (2, 3)) == (pytest.approx(0.6), 0.0)  # </think> last: H_answer = 0
    # P = max(0, 2 - 1*0) = 2 > 1: the faithful reward is 1 - 2 = -1; clipped at -0.5 on request.
    assert pear_reward(2.0, 0.0, True, PEARConfig()) == (-1.0, 2.0)
    assert pear_reward(2.0, 0.0, True, PEARConfig(pear_clip_min=-0.5))[0] == -0.5
    assert pear_reward(0.1, 0.5, True, PEARConfig()) == (1.0, 0.0)  # P = max(0, -0.4) = 0
    assert pear_reward(0.8, 0.3, True, PEARConfig(alpha=2.0))[1] == pytest.approx(0.2)  # 0.8 - 0.6


def test_find_close_single_token_and_by_decoding():
    ctx = make_context(TOK)
    assert ctx.think_close_id == CLOSE and ctx.tokenizer is None
    ids = TOK.encode("<think>12</think>35", add_special_tokens=False)
    assert find_close(ids, ctx) == (3, 4)
    assert find_close(TOK.encode("<think>1235", add_special_tokens=False), ctx) is None

    class Chars:  # a tokenizer without a </think> token: one id per character
        unk_token_id = 0

        def convert_tokens_to_ids(self, token):
            return self.unk_token_id

        def decode(self, ids, skip_special_tokens=False):
            return "".join(map(chr, ids))

    ctx = make_context(Chars())
    assert ctx.think_close_id is None and ctx.tokenizer is not None
    ids = [ord(c) for c in "abc</think>de"]
    assert find_close(ids, ctx) == (3, 11)  # the 8 tokens of "</think>"
    assert find_close([ord(c) for c in "abcde"], ctx) is None


def test_manager_end_to_end_with_metrics():
    # responses: correct (P = 0.5, r = 0.5), wrong (r = 0), correct without </think> (P = 8/6 > 1)
    samples = [
        _pear_sample("<think>12</think>35", "35"),
        _pear_sample("<think>12</think>36", "35"),
        _pear_sample("<think>12135", "12135"),  # no </think>: the embedded checker says wrong
    ]
    with RewardManager(reward_cfg(["pear"]), tokenizer=TOK) as rm:
        res = rm.score(samples)
    assert res.rewards.tolist() == pytest.approx([0.5, 0.0, 0.0], abs=1e-6)
    assert res.correct.tolist() == [1.0, 0.0, 0.0]
    m = res.metrics
    assert m["reward/pear/h_think_correct"] == pytest.approx(0.8, abs=1e-6)
    assert m["reward/pear/h_answer_correct"] == pytest.approx(0.3, abs=1e-6)
    # wrong ones: (0.8, 0.3) and (8/6, 0) -> means (1.0666..., 0.15)
    assert m["reward/pear/h_think_wrong"] == pytest.approx((0.8 + 8 / 6) / 2, abs=1e-6)
    assert m["reward/pear/h_answer_wrong"] == pytest.approx(0.15, abs=1e-6)
    assert m["reward/pear/p_mean"] == pytest.approx((0.5 + 0.5 + 8 / 6) / 3, abs=1e-6)
    assert m["reward/pear/p_pos_frac_correct"] == 1.0
    assert m["reward/pear/p_gt1_frac"] == pytest.approx(1 / 3)


def test_inner_checker_by_data_source_or_config():
    ids = TOK.encode("<think>1</think>2", add_special_tokens=False)
    math_sample = sample("<think>1</think>2", "2", ids=ids, entropy=[0.1] * len(ids), data_source="gsm8k")
    with RewardManager(reward_cfg(["pear"]), tokenizer=TOK) as rm:
        assert rm.score([math_sample]).correct.tolist() == [1.0]  # math checker: last number 2
    cfg = reward_cfg(["pear"], pear=PEARConfig(inner="embedded"))
    with RewardManager(cfg, tokenizer=TOK) as rm:
        assert rm.score([math_sample]).correct.tolist() == [1.0]
    with pytest.raises(ValueError, match="reward.pear.inner"):
        RewardManager(reward_cfg(["pear"], pear={"inner": "empo"}), tokenizer=TOK)


def test_needs_tokenizer_and_entropy():
    with pytest.raises(RewardSpecError, match="'pear'.*tokenizer"):
        RewardManager(reward_cfg(["pear"]))
    no_entropy = sample("<think>1</think>2", "2", ids=[1, CLOSE, 2])
    with RewardManager(reward_cfg(["pear"], fallback_score=-1.0), tokenizer=TOK) as rm:
        res = rm.score([no_entropy])
    assert res.rewards.tolist() == [-1.0] and res.metrics["reward/errors/exception"] == 1.0
    assert math.isnan(res.metrics.get("reward/pear/p_mean", math.nan))


def test_phase_split_ignores_context():
    ctx = RewardContext(think_close_id=7, has_tokenizer=True)
    assert find_close([1, 7, 2, 7], ctx) == (1, 2)  # the *first* </think>
