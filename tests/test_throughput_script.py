"""The pure parts of benchmarks/throughput.py: arguments, statistics, formatting, FLOP arithmetic.
Nothing here trains, starts Ray or needs TRL."""

from __future__ import annotations

import importlib.util
import math
import re

import pytest

from tests.script_module import load


@pytest.fixture(scope="module")
def tp():
    return load("benchmarks/throughput.py")


# ---- arguments ---------------------------------------------------------------------------


def test_defaults(tp):
    a = tp.parse_args([])
    # the default training job's sizes, so that the final accuracies can be compared
    assert (a.prompts, a.n, a.max_new_tokens, a.steps, a.reps) == (24, 8, 64, 60, 2)
    assert a.micro_batch == 8 and a.skip_steps == 1 and a.lr == pytest.approx(5e-5) and a.temperature == 0.7
    assert a.mode == "async" and a.eval_prompts == 1000
    assert a.trl_threads == 0 and a.only is None and a.child is None and not a.trl_bf16


def test_options(tp):
    a = tp.parse_args(["--prompts", "4", "--n", "4", "--max-new-tokens", "32", "--steps", "3", "--reps", "1",
                       "--lr", "3e-5", "--micro-batch", "4", "--skip-steps", "2", "--trl-threads", "0"])
    assert (a.prompts, a.n, a.max_new_tokens, a.steps, a.reps, a.micro_batch, a.skip_steps) == (4, 4, 32, 3, 1, 4, 2)
    assert a.lr == pytest.approx(3e-5) and a.trl_threads == 0


@pytest.mark.parametrize("argv", [
    ["--steps", "1"],                       # skip-steps 1 leaves nothing to measure
    ["--steps", "3", "--skip-steps", "3"],
    ["--skip-steps", "-1"],
    ["--prompts", "0"],
    ["--reps", "0"],
    ["--prompts", "3", "--n", "3"],         # micro-batch 8 does not divide 9
    ["--lr", "0"],
    ["--trl-threads", "-2"],
    ["--temperature", "0"],
    ["--eval-prompts", "-1"],
    ["--mode", "fast"],
    ["--child", "trl"],                     # a child needs --result
    ["--only", "verl"],
    ["--set", "trainer.elastic_threads"],   # an override needs KEY=VALUE
])
def test_bad_arguments_fail(tp, argv):
    with pytest.raises(SystemExit):
        tp.parse_args(argv)


def test_forwarded_args_round_trip(tp):
    a = tp.parse_args(["--prompts", "4", "--n", "2", "--steps", "5", "--lr", "2.5e-05", "--micro-batch", "2",
                       "--trl-threads", "3", "--seed", "7", "--temperature", "0.9", "--mode", "sync",
                       "--eval-prompts", "10", "--set", "trainer.elastic_threads=true",
                       "--set", "learner.micro_batch_tokens=584", "--trl-bf16"])
    b = tp.parse_args([*tp.forwarded_args(a), "--child", "entropo", "--result", "x.json"])
    for key in ("prompts", "n", "max_new_tokens", "steps", "lr", "micro_batch", "skip_steps", "seed", "trl_threads",
                "temperature", "mode", "eval_prompts", "overrides", "trl_bf16"):
        assert getattr(a, key) == getattr(b, key), key
    assert b.child == "entropo" and b.result == "x.json" and b.trl_bf16
    assert not tp.parse_args(tp.forwarded_args(tp.parse_args([]))).trl_bf16


def test_trl_threads(tp):
    assert tp.trl_threads(-1, 2) == 1   # as each of entropo's 2 actors
    assert tp.trl_threads(-1, 16) == 8
    assert tp.trl_threads(-1, 1) == 1
    assert tp.trl_threads(0, 2) == 0    # torch default
    assert tp.trl_threads(3, 2) == 3


def test_missing_trl_says_how_to_install(tp, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(tp.importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    with pytest.raises(SystemExit, match=re.escape('pip install -e ".[bench]"')):
        tp.require_trl()


# ---- statistics and formatting --------------------------------------------------------------


def test_mean_std(tp):
    m, s = tp.mean_std([1.0, 2.0, 3.0])
    assert m == pytest.approx(2.0) and s == pytest.approx(1.0)  # sample std
    assert tp.mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(x) for x in tp.mean_std([]))


def test_ratio_summary_is_ratio_of_means_with_paired_spread(tp):
    ratio, lo, hi = tp.ratio_summary([10.0, 30.0], [10.0, 10.0])
    assert ratio == pytest.approx(2.0)
    assert (lo, hi) == (pytest.approx(1.0), pytest.approx(3.0))
    ratio, lo, hi = tp.ratio_summary([2.0, 6.0], [1.0, 4.0])
    assert ratio == pytest.approx(8 / 5)  # not the mean of the paired ratios (1.75)
    assert (lo, hi) == (pytest.approx(1.5), pytest.approx(2.0))
    with pytest.raises(ValueError):
        tp.ratio_summary([1.0], [1.0, 2.0])


def test_last_line_format(tp):
    assert tp.last_line(0.8512) == "ratio entropo/trl trained tokens/s: 0.85"
    assert tp.last_line(12.0) == "ratio entropo/trl trained tokens/s: 12.00"
    assert re.fullmatch(r"ratio entropo/trl trained tokens/s: \d+\.\d\d", tp.last_line(1.005))


def test_number_formats(tp):
    assert tp.fmt_num(1234.5) == "1,234"
    assert tp.fmt_num(123.45) == "123.5"
    assert tp.fmt_num(1.2345) == "1.23"
    assert tp.fmt_num(0.01234) == "0.012"
    assert tp.fmt_num(float("nan")) == "nan"
    assert tp.fmt_mean_std([1.0, 3.0]) == "2.00 ± 1.41"
    assert tp.fmt_ratio(0.8512, 0.8, 0.9) == "0.85 [0.80-0.90]"


def test_format_table(tp):
    lines = tp.format_table([("trained tokens/s", [100.0, 120.0], [50.0, 50.0])], ("entropo", "trl"))
    assert "entropo/trl" in lines[0]
    assert lines[2].startswith("trained tokens/s")
    assert "110.0 ± 14.14" in lines[2] and "50.00 ± 0.000" in lines[2] and "2.20 [2.00-2.40]" in lines[2]
    one = tp.format_table([("trained tokens/s", [100.0], [])], ("entropo",))
    assert "entropo/trl" not in one[0] and "100.0 ± 0.000" in one[2]


def test_summarize_steps_skips_start_up_and_sums_before_dividing(tp):
    steps = [
        {"step": 1, "step_s": 100.0, "rollout_s": 90.0, "update_s": 10.0, "generated": 1.0, "trained": 1.0},
        {"step": 2, "step_s": 2.0, "rollout_s": 1.0, "update_s": 0.5, "generated": 100.0, "trained": 80.0},
        {"step": 3, "step_s": 4.0, "rollout_s": 3.0, "update_s": 0.5, "generated": 300.0, "trained": 220.0},
    ]
    s = tp.summarize_steps(steps, skip=1, phases=("rollout", "update"))
    assert s["steps"] == 2
    assert s["generated_tok_s"] == pytest.approx(400 / 4)   # Σ generated / Σ rollout time
    assert s["trained_tok_s"] == pytest.approx(300 / 6)     # Σ trained / Σ step time
    assert s["step_s"] == pytest.approx(3.0)
    assert s["trained_per_step"] == pytest.approx(150.0)
    assert s["rollout_s"] == pytest.approx(2.0) and s["update_s"] == pytest.approx(0.5)
    assert s["other_s"] == pytest.approx(0.5)
    assert s["backward_frac"] == 1.0  # steps without the record (TRL): every row
    steps[1]["backward_frac"], steps[2]["backward_frac"] = 0.25, 0.75
    assert tp.summarize_steps(steps, skip=1, phases=("rollout", "update"))["backward_frac"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        tp.summarize_steps(steps, skip=3, phases=("rollout",))


def test_summarize_steps_async_generation_time_is_not_a_phase(tp):
    """entropo async: ``rollout_s`` is the wait, ``gen_s`` the overlapped generation."""
    steps = [
        {"step": 2, "step_s": 1.0, "rollout_s": 0.1, "gen_s": 0.8, "update_s": 0.8, "generated": 400.0, "trained": 400.0},
        {"step": 3, "step_s": 1.0, "rollout_s": 0.0, "gen_s": 0.8, "update_s": 0.9, "generated": 400.0, "trained": 400.0},
    ]
    s = tp.summarize_steps(steps, skip=1, phases=("rollout", "update"))
    assert s["generated_tok_s"] == pytest.approx(800 / 1.6)
    assert s["gen_s"] == pytest.approx(0.8)
    assert s["other_s"] == pytest.approx(1.0 - 0.05 - 0.85)


# ---- FLOP arithmetic ------------------------------------------------------------------------


def test_learner_flops(tp):
    n, t = 535_808, 4_000
    assert tp.learner_flops(n, t) == pytest.approx(6 * n * t)
    assert tp.learner_flops(n, t, t) == pytest.approx(8 * n * t)
    assert tp.learner_flops(1_000, 10, 5) == pytest.approx(6 * 1_000 * 10 + 2 * 1_000 * 5)
    # a backward for 40% of the rows: forward 2·N·T + backward 4·N·T·0.4 = 3.6·N·T
    assert tp.learner_flops(1_000, 10, 0.0, 0.4) == pytest.approx(3.6 * 1_000 * 10)
    # 8·N·T over 0.5 s, as in the report: N = 0.5M, T = 4000 → 34.3 GFLOP/s
    assert tp.learner_flops(n, t, t) / 0.5 / 1e9 == pytest.approx(34.29, abs=0.01)


def test_matmul_flops(tp):
    assert tp.matmul_flops(2048) == 2 * 2048**3
    assert tp.matmul_flops(1) == 2


# ---- process roles for the memory numbers ---------------------------------------------------


def test_actor_titles(tp):
    assert tp.is_actor_title("ray::LearnerRank")
    assert tp.is_actor_title("ray::RolloutWorker.generate")
    for title in ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "/usr/bin/python x.py", "raylet"):
        assert not tp.is_actor_title(title), title


def test_memory_by_process(tp):
    procs = {"1": ["driver", "python throughput.py", 400.0], "2": ["actor", "ray::LearnerRank.update", 500.0],
             "3": ["actor", "ray::RolloutWorker", 450.0], "4": ["other", "raylet", 30.0],
             "5": ["other", "ray::IDLE", 70.0]}
    out = tp.memory_by_process(procs)
    assert out == {"driver": 400.0, "LearnerRank": 500.0, "RolloutWorker": 450.0, "Ray daemons/idle workers": 100.0}
