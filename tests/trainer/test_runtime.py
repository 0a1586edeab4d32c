"""Ray actors + DeepSpeed on CPU: weight sync, gradient accounting across ranks, training runs.

One local Ray instance serves the module; each test builds the actors it needs.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from entropo.algorithms.objective import StepContext
from entropo.config import load_config
from entropo.trainer.batch import StepBatch
from tests.metrics_doc import undocumented

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


DIGITS = f"digits={Path(__file__).parent / 'rewards_for_tests.py'}:digit_fraction"


@pytest.fixture(scope="module")
def digits_reward():
    """A reward with variance for a random model: the fraction of digits in the response."""
    return DIGITS


def _cfg(model_dir, tmp_path, *overrides):
    return load_config(overrides=[
        f"model.path={model_dir}", f"trainer.output_dir={tmp_path}", "trainer.prompts_per_step=4",
        "rollout.n=4", "rollout.max_new_tokens=12", "learner.micro_batch_size=4", "learner.lr=1e-2",
        "logger.backends=[jsonl]", "reward.mode=local", "evaluation.max_prompts=8", "logger.forking_every=2",
        *overrides,
    ])


def _fixed_batch(cfg, cluster, reward):
    """A rollout with the controller's stages up to advantages, from a fixed seed."""
    from entropo.data.loading import load_rows
    from entropo.data.sampler import PromptSampler
    from entropo.models.loading import load_tokenizer
    from entropo.rewards import RewardManager
    from entropo.trainer.controller import Controller

    tok = load_tokenizer(cfg.model.path)
    ctl = Controller(cfg, cluster, PromptSampler(load_rows("embedded:addition"), 4, 0), tok,
                     RewardManager(cfg.reward, tok), sinks=None)
    batch, _ = ctl.collect(1, __import__("entropo.trainer.controller", fromlist=["Timer"]).Timer())
    batch, _ = ctl.advantages(batch)
    return ctl, batch


# bf16 (the learner's DeepSpeed bf16, the rollout model loaded in bf16): the decode loop's
# cached keys and the learner's full forward round differently in 8 mantissa bits, so the
# sampled log-probs and π_old agree to ~3e-3 here, not 1e-5; after a sync both sides score
# with the same forward and agree exactly.
@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-5), ("bfloat16", 1e-2)])
def test_weight_sync_makes_rollout_logprobs_equal_learner(ray_session, tiny_model_dir, tmp_path, digits_reward,
                                                          dtype, tol):
    from entropo.trainer.batch import LearnerShard
    from entropo.trainer.cluster import Cluster

    cfg = _cfg(tiny_model_dir, tmp_path, "learner.ranks=1", "rollout.workers=2", f"reward.fns=[{digits_reward}]",
               f"model.dtype={dtype}")
    cluster = Cluster(cfg)
    try:
        ctl, batch = _fixed_batch(cfg, cluster, digits_reward)
        assert batch.advantages.abs().sum() > 0
        shard = LearnerShard(batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.mask)
        args = (batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.mask, cfg.rollout.temperature)
        # before any update, rollout log-probs from sampling equal the learner's π_old
        assert (batch.rollout_logp - batch.old_logp).abs().max() < tol
        cluster.update(ctl.minibatches(batch), StepContext(step=1))
        learner = ray_session.get(cluster.learners[0].score.remote(shard))
        stale = ray_session.get(cluster.workers[0].score.remote(*args))
        assert (learner - stale).abs().max() > 1e-3  # the update moved the policy
        cluster.sync_weights(7)
        for w in cluster.workers:
            fresh = ray_session.get(w.score.remote(*args))
            assert (learner - fresh).abs().max() < 1e-5  # same weights, same forward
            assert ray_session.get(w.weight_version.remote()) == 7
    finally:
        cluster.shutdown()


def _one_update(cfg, reward, batch=None, fused=False):
    """One update on a fresh cluster, of ``batch`` (its π_old pass rerun on these ranks unless
    ``fused``) or of a new fixed batch; returns the update's metrics and the batch."""
    from entropo.trainer.cluster import Cluster
    from entropo.trainer.controller import Controller

    cluster = Cluster(cfg)
    try:
        if batch is None:
            _, batch = _fixed_batch(cfg, cluster, reward)
        elif not fused:
            cluster.forward(batch)
        ctl = Controller(cfg, cluster, None, None, None, None)
        return cluster.update(ctl.minibatches(batch), StepContext(step=1), fill=batch if fused else None), batch
    finally:
        cluster.shutdown()


@pytest.mark.parametrize(("ranks", "zero", "micro"), [(2, 0, "2"), (2, 2, "3"), (2, 3, "3"), (2, 3, "tokens=40")])
def test_gradient_is_independent_of_ranks_zero_and_micro_batch(ray_session, tiny_model_dir, tmp_path,
                                                                digits_reward, ranks, zero, micro):
    """The pre-clip gradient norm and the loss of one update equal the 1-rank, 1-micro-batch ones
    (``tokens=B``: length-sorted micro-batches of at most B padded tokens, unequal in number
    on the two ranks before they agree)."""
    common = ("rollout.workers=1", f"reward.fns=[{digits_reward}]", "algorithm.loss=kl_cov",
              "algorithm.kl_cov.k=0.1", "algorithm.token_mask=[high_entropy]")
    size = f"learner.micro_batch_tokens={micro[7:]}" if micro.startswith("tokens=") else f"learner.micro_batch_size={micro}"
    one, batch = _one_update(_cfg(tiny_model_dir, tmp_path, "learner.ranks=1", "learner.zero_stage=0",
                                  "learner.micro_batch_size=16", *common), digits_reward)
    many, _ = _one_update(_cfg(tiny_model_dir, tmp_path, f"learner.ranks={ranks}", f"learner.zero_stage={zero}",
                               size, *common), digits_reward, batch)
    assert one["actor/grad_norm"] > 0
    assert many["actor/grad_norm"] == pytest.approx(one["actor/grad_norm"], rel=1e-5)
    assert many["actor/pg_loss"] == pytest.approx(one["actor/pg_loss"], abs=1e-6)
    # a token-weighted mean of float32 per-micro-batch fractions: float32 rounding (~1e-6)
    assert many["kl_cov/selected_frac"] == pytest.approx(one["kl_cov/selected_frac"], abs=1e-5)


@pytest.mark.parametrize("precision", ["null", "bf16"])
def test_fused_old_pass_equals_the_separate_forward(ray_session, tiny_model_dir, tmp_path, digits_reward, precision):
    """2 ranks, ZeRO-2, token-budget micro-batches: the update whose forward supplies π_old gives
    the gradient, loss and π_old statistics of a separate π_old pass followed by the update
    (also under bf16 autocast: both passes run the same kernels in the same precision)."""
    import dataclasses

    cfg = _cfg(tiny_model_dir, tmp_path, "learner.ranks=2", "learner.zero_stage=2", "rollout.workers=1",
               "learner.micro_batch_tokens=50", f"reward.fns=[{digits_reward}]",
               f"learner.mixed_precision={precision}")
    separate, batch = _one_update(cfg, digits_reward)  # the fixed batch runs the separate π_old pass
    filled = dataclasses.replace(batch, old_logp=None, entropy=None)
    fused, _ = _one_update(cfg, digits_reward, filled, fused=True)
    assert separate["actor/grad_norm"] > 0
    assert fused["actor/grad_norm"] == pytest.approx(separate["actor/grad_norm"], rel=1e-5)
    assert fused["actor/pg_loss"] == pytest.approx(separate["actor/pg_loss"], abs=1e-6)
    # float32 log-probs of the same kernels in train vs eval mode (no dropout): rounding only
    torch.testing.assert_close(filled.old_logp, batch.old_logp, atol=1e-5, rtol=0)
    # the learner computed in bf16 (the rollout model in fp32): its π_old moved off the sampled
    # log-probs by bf16 rounding of small logits (see tests/models/test_mixed_precision.py)
    gap = float(((batch.old_logp - batch.rollout_logp) * batch.mask).abs().max())
    assert (1e-4 < gap < 0.06) if precision == "bf16" else gap < 1e-5
    torch.testing.assert_close(filled.entropy, batch.entropy, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("zero", "micro", "fused"), [(3, "learner.micro_batch_size=3", False),
                                                      (2, "learner.micro_batch_tokens=40", True)])
def test_skipping_rows_without_advantage_changes_no_number(ray_session, tiny_model_dir, tmp_path, digits_reward,
                                                           zero, micro, fused):
    """``learner.skip_zero_advantage`` on 2 ranks against every row's backward on 1 rank: the
    same gradient, loss and metrics (and, fused, the same π_old) when groups 0, 1 and 3 have
    A = 0. Rank 0 then holds no row to train: it promotes inert rows to match rank 1's backward
    micro-batches and, under ZeRO-3, both ranks match their no-grad forwards."""
    import dataclasses

    common = ("rollout.workers=1", f"reward.fns=[{digits_reward}]", "algorithm.token_weight=[tis]")
    one_cfg = _cfg(tiny_model_dir, tmp_path, "learner.ranks=1", "learner.zero_stage=0", "learner.micro_batch_size=16",
                   "learner.skip_zero_advantage=false", *common)
    _, batch = _one_update(one_cfg, digits_reward)
    batch.advantages[:8] = 0.0  # groups 0, 1: rank 0's rows
    batch.advantages[12:] = 0.0  # group 3
    assert (batch.advantages[8:12] != 0).any()
    one, _ = _one_update(one_cfg, digits_reward, batch)
    many_cfg = _cfg(tiny_model_dir, tmp_path, "learner.ranks=2", f"learner.zero_stage={zero}", micro, *common)
    filled = dataclasses.replace(batch, old_logp=None, entropy=None) if fused else batch
    many, _ = _one_update(many_cfg, digits_reward, filled, fused=fused)
    assert one["actor/grad_norm"] > 0 and one["perf/backward_rows_frac"] == 1.0
    assert many["actor/grad_norm"] == pytest.approx(one["actor/grad_norm"], rel=1e-5)
    assert many["actor/pg_loss"] == pytest.approx(one["actor/pg_loss"], abs=1e-6)
    for key in ("actor/neg_logp", "actor/pg_clipfrac", "tis/ratio_mean", "tis/weight_mean"):
        assert many[key] == pytest.approx(one[key], abs=1e-6), key
    if fused:  # no-grad and training forwards of the same rows (float32): rounding only
        torch.testing.assert_close(filled.old_logp, batch.old_logp, atol=1e-5, rtol=0)
        torch.testing.assert_close(filled.entropy, batch.entropy, atol=1e-5, rtol=0)
        assert 0.25 <= many["perf/backward_rows_frac"] < 1.0
    else:
        # rank 1: rows 8-11 train (cut 3 + 1, two backward micro-batches); rank 0 promotes 2 of its
        # 8 inert rows to match: (2 + 4) of 16 rows ran a backward
        assert many["perf/backward_rows_frac"] == 0.375


@pytest.mark.parametrize(
    ("zero", "recipe_overrides"),
    [
        (2, ["algorithm.loss=ppo_clip"]),
        (3, ["algorithm.loss=clip_cov", "algorithm.clip_cov.clip_ratio=0.05", "algorithm.clip_cov.cov_low=0.01"]),
        (2, ["algorithm.loss=kl_cov", "algorithm.kl_cov.k=0.05"]),
        (3, ["algorithm.token_mask=[high_entropy]", "learner.mixed_precision=bf16"]),
        (2, ["algorithm.advantage=hapo", "algorithm.loss=hapo_clip", "algorithm.sampling=[hapo_temperature]"]),
        (2, ["algorithm.loss=lp_reg", "algorithm.lp_reg.rho_neg=0.2", "algorithm.token_weight=[steer]"]),
        (0, ["algorithm.regularizer=[siren]", "algorithm.advantage=dr_grpo",
             "algorithm.loss_agg_mode=seq-mean-token-sum-norm"]),
        (2, ["algorithm.regularizer=[epo]", "algorithm.advantage=canon", "algorithm.canon.metric=length"]),
        (2, ["algorithm.sampling=[aepo]", "algorithm.advantage_reshaper=seed", "algorithm.seed.alpha=0.5"]),
        (3, ["algorithm.token_mask=[dmmpt]", "algorithm.dmmpt.sigma=10.0", "algorithm.dmmpt.tau=1e-6",
             "algorithm.advantage_reshaper=ettrl"]),
        (2, ["trainer.async_rollout=true", "algorithm.token_weight=[tis]", "learner.micro_batch_tokens=60",
             "trainer.elastic_threads=true"]),
    ],
    ids=["grpo-zero2", "clip_cov-zero3", "kl_cov-zero2", "entropy_mask+bf16_mixed-zero3", "hapo-zero2",
         "lp_reg+steer-zero2", "siren+dr_grpo-zero0", "epo+canon-zero2", "aepo+seed-zero2", "dmmpt+ettrl-zero3",
         "async+tis+token_budget-zero2"],
)
def test_training_runs_end_to_end(ray_session, tiny_model_dir, tmp_path, digits_reward, zero, recipe_overrides):
    from entropo.trainer.run import train

    cfg = _cfg(tiny_model_dir, tmp_path, "learner.ranks=2", f"learner.zero_stage={zero}", "rollout.workers=2",
               "trainer.total_steps=2", "learner.lr=1e-3", f"reward.fns=[{digits_reward}]", *recipe_overrides)
    summary = train(cfg)
    assert summary["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]  # step 0: the evaluation before training
    rows = rows[1:]
    required = ["entropy/mean", "reward/mean", "actor/pg_loss", "actor/pg_clipfrac", "actor/grad_norm",
                "response_length/mean", "timing/rollout", "timing/update", "perf/tokens_per_s"]
    for row in rows:
        for key in required:
            assert row.get(key) is not None and math.isfinite(row[key]), key
        assert 0 < row["entropy/mean"] < math.log(90) + 1e-6  # bounded by ln |V|
        assert row["actor/grad_norm"] > 0
        # generated with the last sync, or (async) with the one before it, from step 2 on
        lag = 1 if cfg.trainer.async_rollout and row["step"] > 1 else 0
        assert row["rollout/off_policy_steps"] == lag
        assert row["rollout/weight_version"] == row["step"] - 1 - lag
    a = cfg.algorithm
    control_key = {"clip_cov": "clip_cov/selected_frac", "kl_cov": "kl_cov/selected_frac",
                   "lp_reg": "lp_reg/selected_frac", "hapo_clip": "hapo/h_pos_frac"}.get(a.loss)
    if "high_entropy" in a.token_mask:
        control_key = "entropy_mask/keep_frac"
        assert rows[0][control_key] == pytest.approx(0.2, abs=0.05)
    if "dmmpt" in a.token_mask:
        # gate open (H̄ < σ = 10) and τ ≈ 0: every token of a positive-advantage response is masked
        assert rows[0]["dmmpt/gate_active"] == 1.0 and rows[0]["dmmpt/masked_frac"] > 0
    if "steer" in a.token_weight:
        assert 0.8 <= rows[0]["steer/weight_min"] <= rows[0]["steer/weight_mean"] <= 1.0
    if "tis" in a.token_weight:
        # step 1 is on-policy (ρ = 1 up to kernel noise); step 2 was sampled before the update
        assert rows[0]["tis/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
        assert rows[1]["logprob_gap/mean"] > 100 * rows[0]["logprob_gap/mean"]
        assert 0 < rows[1]["tis/weight_mean"] <= rows[1]["tis/ratio_mean"]
        assert rows[1]["timing/rollout_ahead"] > 0
        assert "timing/forward" in rows[1]  # a custom reward function keeps the separate π_old pass
    if cfg.trainer.elastic_threads:  # two ranks share the node's cores: never above cores // 2
        assert all(1 <= r["perf/learner_threads"] <= max(1, (os.cpu_count() or 1) // 2) for r in rows)
    if "siren" in a.regularizer:
        assert all(r["siren/H_anc"] == rows[0]["siren/H_anc"] for r in rows)  # fixed after step 1
    if "epo" in a.regularizer:
        assert rows[0]["epo/in_range_frac"] > 0
    if "aepo" in a.sampling:
        assert rows[0]["aepo/temperature"] == 1.2  # Ĥ starts at 0 <= target
    if control_key:
        assert all(r[control_key] > 0 for r in rows)
    assert 0.0 <= rows[-1]["forking/overlap_initial"] <= 1.0  # the forking analysis ran at step 2 on the step-1 probe
    assert rows[-1]["forking/threshold"] > 0
    assert (tmp_path / "config.yaml").exists()
    assert undocumented({k for r in rows for k in r}) == [], "add them to docs/metrics.md"


def test_bad_inputs_fail_fast_with_a_clear_message(tiny_model_dir, tmp_path, capsys):
    from entropo.cli import main

    assert main(["train", "rollout.nn=3"]) == 2
    assert "rollout.nn" in capsys.readouterr().err
    assert main(["train", "model.path=/nonexistent/model", f"trainer.output_dir={tmp_path}"]) == 2
    assert "model.path" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["train", f"model.path={tiny_model_dir}", f"data.train={empty}", "reward.fns=[math]",
                 f"trainer.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "data.train" in err and "empty.jsonl" in err
    blocker = tmp_path / "a-file"  # a directory below a file cannot be made, even by root
    blocker.write_text("")
    for command in ("train", "eval"):
        assert main([command, f"model.path={tiny_model_dir}", f"trainer.output_dir={blocker / 'run'}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == (f"entropo: error: trainer.output_dir: cannot write to {blocker / 'run'} (Not a directory); "
                           "choose a writable directory"), command


def test_step_batch_is_prompt_major(ray_session, tiny_model_dir, tmp_path, digits_reward):
    from entropo.trainer.cluster import Cluster

    cfg = _cfg(tiny_model_dir, tmp_path, "learner.ranks=1", "rollout.workers=2", f"reward.fns=[{digits_reward}]")
    cluster = Cluster(cfg)
    try:
        _, batch = _fixed_batch(cfg, cluster, digits_reward)
    finally:
        cluster.shutdown()
    assert isinstance(batch, StepBatch)
    assert batch.group_ids.tolist() == [g for g in range(4) for _ in range(4)]
    for i in range(len(batch)):
        assert batch.rows[i] is batch.rows[4 * (i // 4)]
    assert torch.equal(batch.mask.sum(-1) > 0, torch.ones(len(batch), dtype=torch.bool))


def test_eval_command_reports_pass_at_k(ray_session, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """``entropo eval`` starts rollout workers only, prints the table and writes eval.json."""
    from entropo.cli import main
    from entropo.trainer import cluster

    planned = []
    plan = cluster.plan_placement
    monkeypatch.setattr(cluster, "plan_placement", lambda ranks, *a: planned.append(ranks) or plan(ranks, *a))
    rc = main(["eval", f"model.path={tiny_model_dir}", "evaluation.max_prompts=4", "evaluation.n=2",
               "evaluation.k=[1,2]", "evaluation.temperature=1.0", "reward.mode=local", "rollout.max_new_tokens=8",
               f"trainer.output_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert planned == [0]  # no learner rank placed
    assert "data.eval=auto: the eval split of embedded:addition (4 prompts)" in out
    values = dict(line.split() for line in out.strip().splitlines() if not line.startswith("["))
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["model"] == tiny_model_dir
    assert all(written[k] == pytest.approx(float(v), abs=1e-4) for k, v in values.items())
    assert float(values["eval/prompts"]) == 4.0
    # a random model never answers correctly: pass@1 = pass@2 = 0 (and they are reported)
    assert float(values["eval/pass@1"]) == 0.0 and float(values["eval/pass@2"]) == 0.0
    assert "eval/embedded/addition/maj@2" in values


def test_custom_rewards_in_each_convention_from_a_yaml_config(ray_session, tiny_model_dir, tmp_path):
    """verl-style and TRL-style functions, loaded by path from a YAML recipe, in a short run."""
    from entropo.trainer.run import train

    funcs = Path(__file__).parent / "rewards_for_tests.py"
    recipe = tmp_path / "custom.yaml"
    recipe.write_text(
        "reward:\n"
        f"  fns: ['verl={funcs}:compute_score', 'trl={funcs}:length_penalty*2', 'native={funcs}:digit_fraction']\n"
        "  mode: ray\n  workers: 1\n"
    )
    cfg = load_config(recipe, [f"model.path={tiny_model_dir}", f"trainer.output_dir={tmp_path / 'run'}",
                               "trainer.total_steps=1", "trainer.prompts_per_step=4", "rollout.n=4",
                               "rollout.max_new_tokens=12", "logger.backends=[jsonl]", "data.eval=null"])
    train(cfg)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= row["reward/verl/mean"] <= 1.0
    assert -2 * 0.2 <= row["reward/trl/mean"] < 0.0  # weight 2 × −len/1000, responses ≤ 12 tokens
    assert row["reward/errors"] == 0.0
    total = row["reward/verl/mean"] + row["reward/trl/mean"] + row["reward/native/mean"]
    assert row["reward/mean"] == pytest.approx(total, abs=1e-6)


def test_trl_dataset_and_rewards_unchanged_with_verl_partial_credit(ray_session, tiny_model_dir, tmp_path):
    """A TRL conversational dataset with a ``solution`` column, TRL's documented example rewards
    and a verl reward giving 0.1 format credit, on a random model that is never right: 2 steps
    train, the held-out slice is evaluated, and accuracy is 0 everywhere (it read 1.0 when any
    reward above 0 counted as correct)."""
    from entropo.data.loading import load_rows
    from entropo.trainer.run import train

    spy = tmp_path / "spy.jsonl"
    data = tmp_path / "trl.jsonl"
    with data.open("w") as f:
        for row in load_rows("embedded:addition?n=40"):
            f.write(json.dumps({"prompt": [{"role": "user", "content": row.prompt}], "solution": f"${row.ground_truth}$",
                                "reward_model": {"ground_truth": row.ground_truth}, "spy_path": str(spy)}) + "\n")
    examples = Path(__file__).parents[1] / "rewards" / "custom"
    fns = [f"{examples}/trl_examples.py:accuracy_reward", f"{examples}/trl_examples.py:format_reward*0.5",
           f"verl={examples}/verl_partial.py:compute_score",
           f"spy={Path(__file__).parent / 'rewards_for_tests.py'}:trl_spy*0"]
    cfg = _cfg(tiny_model_dir, tmp_path / "run", "learner.ranks=1", "rollout.workers=1", "trainer.total_steps=2",
               f"data.train={data}", f"reward.fns=[{','.join(fns)}]", "reward.mode=ray", "reward.workers=1",
               "logger.forking_every=0")
    summary = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["eval/prompts"] == 4.0  # 40 // 10 held out (data.eval=auto)
    for r in rows[1:]:
        assert r["reward/errors"] == 0.0 and r["reward/error_frac"] == 0.0
        assert r["reward/verl/mean"] == pytest.approx(0.1)  # never right: the format credit only
        assert r["reward/accuracy"] == 0.0
    assert rows[0]["eval/pass@1"] == 0.0 and rows[2]["eval/pass@1"] == 0.0
    assert summary["accuracy_end"] == 0.0 and summary["reward_errors"] == 0.0
    calls = [json.loads(line) for line in spy.read_text().splitlines()]
    train_calls = [c for c in calls if not c["is_eval"]]
    assert {c["step"] for c in train_calls} == {1, 2} and {c["step"] for c in calls if c["is_eval"]} == {0, 2}
    for c in calls:
        assert all(isinstance(p, list) and p[0]["role"] == "user" for p in c["prompts"])
        assert all(comp[0]["role"] == "assistant" and isinstance(comp[0]["content"], str) for comp in c["completions"])
        assert all(s.startswith("$") for s in c["solution"]) and all(0 < n <= 12 for n in c["n_ids"])
    assert sum(len(c["completions"]) for c in train_calls) == 2 * 4 * 4  # steps × prompts × n


def test_the_readme_python_example_runs(ray_session, tmp_path, capsys):
    """The README's Python API example, as written there (its output folder moved to tmp)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("<!-- python-api-example -->\n```python\n", 1)[1].split("```", 1)[0]
    assert "from entropo import load_config, train" in block
    exec(compile(block.replace("runs/api", str(tmp_path / "api")), "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads((tmp_path / "api" / "summary.json").read_text())
    assert summary["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "api" / "metrics.jsonl").read_text().splitlines()]
    assert summary["accuracy_start"] == rows[0]["eval/pass@1"] and rows[0]["eval/prompts"] == 16.0
    assert printed == (f"accuracy {summary['accuracy_start']:.2f} -> {summary['accuracy_end']:.2f}, "
                       f"entropy {summary['entropy_start']:.3f} -> {summary['entropy_end']:.3f}")
    assert rows[-1]["clip_cov/selected_frac"] > 0  # the recipe, loaded by its bare name


def test_a_reward_failing_on_every_sample_stops_with_one_line(ray_session, tiny_model_dir, tmp_path, capsys):
    """Exit 2 and one line naming the function, the fraction and the error (not exit 0 with a
    run scored by the fallback); --debug shows the traceback instead."""
    from entropo.cli import main
    from entropo.trainer.errors import RunError

    broken = tmp_path / "broken.py"
    broken.write_text("def score(sample):\n    return {'score': float(sample.extra_info['missing'])}\n")
    args = ["train", f"model.path={tiny_model_dir}", f"trainer.output_dir={tmp_path / 'run'}", "data.eval=null",
            f"reward.fns=[{broken}:score]", "reward.mode=local", "trainer.total_steps=2", "trainer.prompts_per_step=4",
            "rollout.n=4", "rollout.max_new_tokens=8", "logger.backends=[jsonl]"]
    assert main(args) == 2
    captured = capsys.readouterr()
    (line,) = [x for x in captured.err.splitlines() if x.startswith("entropo: error:")]
    assert "reward 'score' failed on 16/16 samples of step 1 (100% > reward.max_error_frac=0.5)" in line
    assert "first: exception: KeyError: 'missing'" in line
    assert captured.err.count("Traceback") == 1  # the first failure's, printed once
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""  # no step completed, none claimed
    with pytest.raises(RunError, match="failed on 16/16"):
        main(["--debug", *args])
