"""RewardManager in-process: failures never stop the batch, and are counted by reason.

The misbehaving reward is ``custom/native_style.py:flaky``; each sample's response says what
it should do (raise, hang, nan, none, leak, or score 1).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from entropo.rewards import RewardManager, RewardResult
from entropo.rewards.loader import load_function, parse_entry
from tests.rewards.helpers import reward_cfg, sample

CUSTOM = os.path.relpath(Path(__file__).parent / "custom", Path.cwd())
FLAKY = f"{CUSTOM}/native_style.py:flaky"


def _check_shapes(res: RewardResult, n: int) -> None:
    assert res.rewards.shape == (n,) and res.rewards.dtype == torch.float32
    assert res.correct.shape == (n,) and res.cluster_ids.dtype == torch.int64
    assert all(v.shape == (n,) for v in res.components.values())
    assert torch.allclose(sum(res.components.values()), res.rewards)
    assert all(isinstance(v, float) for v in res.metrics.values())


def test_failures_get_the_fallback_and_are_counted(capfd):
    behaviours = ["ok", "raise", "hang", "nan", "ok", "none", "raise", "ok"]
    samples = [sample(b, "x", group=i // 4) for i, b in enumerate(behaviours)]
    cfg = reward_cfg([f"{FLAKY}*2", "format"], timeout_s=0.3, fallback_score=-1.0, workers=1)
    with RewardManager(cfg) as rm:
        res = rm.score(samples)
    _check_shapes(res, 8)
    # flaky: 1 -> weighted 2; failures and None -> fallback -1 -> weighted -2
    assert res.components["flaky"].tolist() == [2, -2, -2, -2, 2, -2, -2, 2]
    assert res.components["format"].tolist() == [0.0] * 8  # no <think>: format 0, no failure
    m = res.metrics
    assert (m["reward/errors"], m["reward/errors/exception"], m["reward/errors/timeout"],
            m["reward/errors/nan"], m["reward/skipped"]) == (4, 2, 1, 1, 1)
    assert m["reward/workers_replaced"] >= 1  # the hung job's thread was abandoned
    err = capfd.readouterr().err
    assert "[reward] 'flaky' failed on sample 1 (exception)" in err and "ValueError: boom" in err
    assert err.count("[reward] ") == 3  # MAX_LOGGED_ERRORS


def test_the_pool_keeps_working_after_a_timeout():
    cfg = reward_cfg([FLAKY], timeout_s=0.3, workers=2)
    with RewardManager(cfg) as rm:
        first = rm.score([sample("hang"), sample("ok")])
        second = rm.score([sample("ok"), sample("ok"), sample("raise")])
    assert first.rewards.tolist() == [0.0, 1.0] and first.metrics["reward/errors/timeout"] == 1
    assert second.rewards.tolist() == [1.0, 1.0, 0.0] and second.metrics["reward/errors/timeout"] == 0


def test_async_timeout_is_cooperative():
    cfg = reward_cfg([f"{CUSTOM}/async_style.py:native"], timeout_s=0.3)
    with RewardManager(cfg) as rm:
        res = rm.score([sample("a", "a"), sample("hang", "a"), sample("b", "a")])
    assert res.rewards.tolist() == [1.0, 0.0, 0.0]
    assert res.metrics["reward/errors/timeout"] == 1 and res.metrics["reward/workers_replaced"] == 0


def test_a_batch_call_that_fails_is_retried_per_sample():
    cfg = reward_cfg([f"{CUSTOM}/trl_style.py:fragile"], workers=1)
    samples = [sample(r) for r in ["a", "b", "raise", "c", "d", "e", "f", "g"]]
    with RewardManager(cfg) as rm:
        res = rm.score(samples)
    assert res.rewards.tolist() == [1, 1, 0, 1, 1, 1, 1, 1]
    assert res.metrics["reward/errors/exception"] == 1


def test_a_leaking_reward_completes_in_process():
    cfg = reward_cfg([FLAKY])
    samples = [sample("leak", extra_info={"leak_mb": 4}) for _ in range(5)]
    try:
        with RewardManager(cfg) as rm:
            res = rm.score(samples)
        assert res.rewards.tolist() == [1.0] * 5 and res.metrics["reward/errors"] == 0
    finally:
        load_function(parse_entry(FLAKY)).__globals__["_LEAK"].clear()


def test_empty_batch_and_bad_settings():
    with RewardManager(reward_cfg(["math"])) as rm:
        res = rm.score([])
    assert res.rewards.shape == (0,) and res.metrics["reward/errors"] == 0
    with pytest.raises(ValueError, match="reward.mode"):
        RewardManager(reward_cfg(["math"], mode="threads"))
    with pytest.raises(ValueError, match="reward.workers"):
        RewardManager(reward_cfg(["math"], workers=0))
    with pytest.raises(ValueError, match="reward.fns is empty"):
        RewardManager(reward_cfg([]))
    with pytest.raises(ValueError, match="reward.math"):
        RewardManager(reward_cfg(["math"], math={"tail_chars": -1}))


@pytest.mark.parametrize("value", ["0.5", b"1", "yes", [0.5], {"acc": 1.0}])
def test_a_score_that_is_not_a_number_is_an_error_not_a_score(value):
    """Text, bytes, a list, or a dict without ``score`` are reward bugs: the fallback score and
    an ``exception`` count, whatever the text says ("0.5" is not read as 0.5)."""
    from entropo.rewards.evaluator import EXCEPTION, normalise

    out = normalise(value)
    assert out.status == EXCEPTION and ("not a number" in out.message or "without 'score'" in out.message)
    assert normalise(0.5).score == 0.5 and normalise({"score": True}).score == 1.0
