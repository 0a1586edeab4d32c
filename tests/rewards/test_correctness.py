"""Correctness is explicit (a reported ``acc``, else ``reward.correct_threshold``), and failing
reward functions are loud: counted, printed once, and a stop past ``reward.max_error_frac``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from entropo.rewards import RewardFailureError, RewardManager, check_failures
from tests.rewards.helpers import reward_cfg, sample

CUSTOM = os.path.relpath(Path(__file__).parent / "custom", Path.cwd())
PARTIAL = f"{CUSTOM}/verl_partial.py:compute_score"
FLAKY = f"{CUSTOM}/native_style.py:flaky"


def test_partial_credit_is_not_correct():
    # verl partial credit: 0.1 for a wrong answer, 1.0 for the right one ("357")
    samples = [sample("<think>x</think>358", "357"), sample("<think>x</think>357", "357"), sample("", "357")]
    with RewardManager(reward_cfg([PARTIAL])) as rm:
        res = rm.score(samples)
    assert res.rewards.tolist() == pytest.approx([0.1, 1.0, 0.1])
    assert res.correct.tolist() == [0.0, 1.0, 0.0]  # rewards >= 1.0; "> 0" would say [1, 1, 1]


def test_threshold_is_the_users_and_a_reported_acc_wins():
    samples = [sample("<think>x</think>358", "357"), sample("<think>x</think>357", "357")]
    with RewardManager(reward_cfg([PARTIAL], correct_threshold=0.05)) as rm:
        assert rm.score(samples).correct.tolist() == [1.0, 1.0]  # 0.1 >= 0.05
    # the embedded built-in reports acc: its 0/1 decides, whatever the weighted total is
    with RewardManager(reward_cfg([PARTIAL, "embedded*5"], correct_threshold=0.05)) as rm:
        res = rm.score(samples)
    assert res.rewards.tolist() == pytest.approx([0.1, 6.0])
    assert res.correct.tolist() == [0.0, 1.0]


def test_correctness_rule_is_stated():
    with RewardManager(reward_cfg(["math"], correct_threshold=0.5)) as rm:
        assert "reward.correct_threshold=0.5" in rm.correctness_rule() and "'acc'" in rm.correctness_rule()


def test_failures_are_counted_by_function_and_printed_once(capfd):
    behaviours = ["raise", "ok", "raise", "raise"]
    with RewardManager(reward_cfg([FLAKY, "format"])) as rm:
        first = rm.score([sample(b, "x") for b in behaviours])
        assert capfd.readouterr().err.count("Traceback") == 1  # the first of 3 failures
        again = rm.score([sample(b, "x") for b in behaviours])
        assert "Traceback" not in capfd.readouterr().err  # counted, not printed again
    for res in (first, again):
        (f,) = res.failures  # format never failed
        assert (f.label, f.failed, f.total) == ("flaky", 3, 4)
        assert f.first.startswith("exception: ValueError")
        # 3 failed calls of 8 (2 functions × 4 samples)
        assert res.metrics["reward/errors"] == 3.0 and res.metrics["reward/error_frac"] == 3 / 8


def test_check_failures_stops_past_the_limit_in_one_line():
    with RewardManager(reward_cfg([FLAKY])) as rm:
        res = rm.score([sample(b, "x") for b in ["raise", "ok", "raise", "ok"]])
    check_failures(res, 0.5, "step 3")  # 2/4 is not more than half
    with pytest.raises(RewardFailureError) as e:
        check_failures(res, 0.4, "step 3")
    message = str(e.value)
    assert "\n" not in message
    assert "'flaky' failed on 2/4 samples of step 3 (50% > reward.max_error_frac=0.4)" in message
    assert "first: exception: ValueError" in message
    check_failures(res, 1.0, "step 3")  # 1.0 never stops


def test_no_failure_no_entry():
    with RewardManager(reward_cfg(["format"])) as rm:
        res = rm.score([sample("x", "x")])
    assert res.failures == [] and res.metrics["reward/error_frac"] == 0.0
    assert torch.equal(res.correct, torch.zeros(1))


def test_a_reward_file_imports_its_siblings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # neither the cwd nor the tests package puts it on the path
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(Path.cwd()))])
    with RewardManager(reward_cfg([f"{Path(__file__).parent / 'custom' / 'with_sibling.py'}:score"])) as rm:
        assert rm.score([sample("a1b22", "x")]).rewards.tolist() == [3.0]
