"""The controller's stages with a fake cluster (no Ray): dynamic sampling, mini-batches, adaptive c_H."""

from __future__ import annotations

import math
import re
from functools import partial

import pytest
import torch

from entropo.config import load_config
from entropo.data.loading import PromptRow
from entropo.trainer.batch import StepBatch
from entropo.trainer.controller import Controller
from entropo.trainer.step_metrics import Timer, probe_of


class FakeCluster:
    """Each prompt's samples are all correct, all wrong, or mixed, by its index mod 3."""

    def __init__(self) -> None:
        self.calls = 0
        self.weight_version = 0
        self.generating = False
        self.log: list[str] = []

    def rollout(self, rows, params, tokenizer):
        import time

        self.calls += 1
        self.generating = True
        self.log.append(f"rollout v{self.weight_version}")
        time.sleep(0.05)  # long enough for the main thread to run ahead in async mode
        self.generating = False
        n, g = len(rows), params.n
        texts = []
        for row in rows:
            kind = row.index % 3  # 0: all correct, 1: all wrong, 2: mixed
            for j in range(g):
                ok = kind == 0 or (kind == 2 and j % 2 == 0)
                texts.append("<think>x</think>" + (row.ground_truth if ok else "0"))
        return StepBatch(
            prompt_ids=torch.ones(n * g, 2, dtype=torch.long), prompt_mask=torch.ones(n * g, 2, dtype=torch.long),
            response_ids=torch.ones(n * g, 3, dtype=torch.long), mask=torch.ones(n * g, 3),
            rollout_logp=torch.zeros(n * g, 3), truncated=torch.zeros(n * g, dtype=torch.bool),
            group_ids=torch.arange(n).repeat_interleave(g), response_text=texts,
            rows=[r for r in rows for _ in range(g)], weight_version=self.weight_version,
        )

    def update(self, minibatches, ctx, fill=None):
        self.log.append("update" + (" fused" if fill is not None else ""))
        if fill is not None:
            fill.old_logp = torch.zeros_like(fill.mask)
            fill.entropy = torch.full_like(fill.mask, 0.2)
        return {"actor/pg_loss": 0.0, "actor/grad_norm": 1.0}

    def sync_weights(self, version):
        assert not self.generating, "weights pushed while the rollout workers generate"
        self.log.append(f"sync v{version}")
        self.weight_version = version

    def metrics(self):
        return {}

    def forward(self, batch, extras=frozenset()):
        self.log.append("forward")
        batch.old_logp = torch.zeros_like(batch.mask)
        batch.entropy = torch.full_like(batch.mask, 0.1)
        if "topp_entropy" in extras:
            batch.topp_entropy = torch.full_like(batch.mask, 0.05)


class ListSampler:
    def __init__(self, rows, size):
        self.rows, self.size, self.pos = rows, size, 0

    def next_batch(self):
        out = [self.rows[(self.pos + i) % len(self.rows)] for i in range(self.size)]
        self.pos += self.size
        return out

    def state_dict(self):
        return {"pos": self.pos}


ROWS = [PromptRow(prompt=f"{i}+0=?", ground_truth=str(i + 10), data_source="t", index=i) for i in range(30)]


def _controller(*overrides):
    from entropo.rewards import RewardManager

    cfg = load_config(overrides=["trainer.prompts_per_step=4", "rollout.n=2", "reward.mode=local",
                                 "learner.fuse_old_forward=false", *overrides])
    return Controller(cfg, FakeCluster(), ListSampler(ROWS, 4), None, RewardManager(cfg.reward), sinks=None), cfg


def test_dynamic_sampling_keeps_only_mixed_groups_across_generation_batches():
    ctl, _ = _controller("algorithm.dynamic_sampling.enable=true")
    batch, metrics = ctl.collect(1, Timer())
    # one mixed prompt in three: 4 kept groups need 3 generation batches (12 prompts -> 4 mixed)
    assert ctl.cluster.calls == 3
    assert metrics["sampling/num_gen_batches"] == 3.0
    assert len(batch) == 8 and len(torch.unique(batch.group_ids)) == 4
    assert {r.index % 3 for r in batch.rows} == {2}
    # group ids stayed unique across batches: every group has exactly G rows
    assert torch.bincount(torch.unique(batch.group_ids, return_inverse=True)[1]).tolist() == [2, 2, 2, 2]
    assert metrics["sampling/all_correct_frac"] == pytest.approx(1 / 3, abs=1e-12)  # 4 of the 12 prompts


def test_dynamic_sampling_gives_up_after_max_batches():
    from entropo.algorithms.dynamic_sampling import DynamicSamplingExhausted

    ctl, _ = _controller("algorithm.dynamic_sampling.enable=true", "algorithm.dynamic_sampling.max_num_gen_batches=2")
    with pytest.raises(DynamicSamplingExhausted):
        ctl.collect(1, Timer())


def test_minibatches_are_whole_groups_split_evenly_over_ranks():
    ctl, _ = _controller("learner.ranks=2", "learner.mini_batch_prompts=2")
    batch, _ = ctl.collect(1, Timer())
    batch, _ = ctl.advantages(batch)
    mbs = ctl.minibatches(batch)
    assert len(mbs) == 2 and all(len(mb) == 2 for mb in mbs)
    assert all(len(shard) == 2 for mb in mbs for shard in mb)


def test_adaptive_entropy_bonus_only_below_target():
    ctl, _ = _controller("algorithm.adaptive_entropy=true", "algorithm.entropy_coef=0.01",
                         "algorithm.entropy_adaptive.target=0.05")
    batch, _ = ctl.collect(1, Timer())  # entropy 0.1 > target 0.05
    assert ctl.step_context(batch, 1).entropy_coef == 0.0
    out = ctl.observe({"entropy/mean": 0.1}, 1)
    assert out["actor/entropy_bonus_active"] == 0.0 and out["actor/entropy_coef"] == 0.01
    assert ctl.methods.states["adaptive_entropy"].coef == pytest.approx(0.01 - 0.005)  # decreased by δ
    batch.entropy.fill_(0.01)
    assert ctl.step_context(batch, 2).entropy_coef == pytest.approx(0.005)


def test_aepo_injects_positive_high_temperature_samples_into_the_first_rows():
    # Ĥ starts at 0 <= target 0.5: T' = T_high; 1 of 4 prompts re-generated (prompt_fraction 0.25)
    ctl, _ = _controller("algorithm.sampling=[aepo]", "trainer.prompts_per_step=8")
    ctl.sampler = ListSampler([r for r in ROWS if r.index % 3 == 2], 8)  # only mixed prompts
    batch, _ = ctl.collect(1, Timer())
    batch, _ = ctl.advantages(batch)
    mixed, metrics = ctl.methods.inject(batch, 1, partial(ctl.generate_extra, 1), Timer())
    assert metrics["aepo/temperature"] == 1.2
    # 2 re-generated prompts x 2 samples, one correct per group -> 2 positives, n_s = min(60, 2) = 2
    assert metrics["aepo/n_injected"] == 2.0
    assert len(mixed) == len(batch)
    assert torch.equal(mixed.advantages[:2], mixed.mask[:2])  # A ≡ 1 on valid tokens
    assert torch.equal(mixed.advantages[2:], batch.advantages[2:])
    assert all(c == 1.0 for c in mixed.correct[:2].tolist())
    assert (mixed.group_ids[:2] < 0).all()  # own groups, not the replaced rows' groups


def test_step_context_carries_siren_anchor_and_epo_reference():
    ctl, _ = _controller("algorithm.regularizer=[siren]")
    batch, _ = ctl.collect(1, Timer())
    ctx = ctl.step_context(batch, 1)
    # all top-p entropies 0.05: H_sel of the per-sequence top 20% is 0.05... except that strict
    # ">" the 0.8-quantile of equal values selects nothing, so every sequence contributes 0
    assert ctx.values["siren_anchor"] == pytest.approx(0.0)
    assert ctx.step_entropy == pytest.approx(0.1)
    assert ctl.methods.forward_extras() == frozenset()  # measured once: no more top-p entropies
    ctl2, _ = _controller("algorithm.regularizer=[epo]")
    batch, _ = ctl2.collect(1, Timer())
    assert ctl2.step_context(batch, 1).values["epo_reference"] == pytest.approx(0.1)
    batch.entropy.fill_(0.3)
    assert ctl2.step_context(batch, 2).values["epo_reference"] == pytest.approx(0.2)  # cumulative mean


def test_hapo_temperature_statistics_feed_the_next_rollout():
    ctl, _ = _controller("algorithm.sampling=[hapo_temperature]")
    assert ctl.sampling(1, 1).logit_scale is None  # step 1: no statistics yet
    batch, _ = ctl.collect(1, Timer())
    batch.entropy = torch.tensor([0.01, 0.05, 0.2, 0.5, 1.0, 2.0]).repeat(8, 1)[:, :3]
    ctl.step_context(batch, 1)
    scale = ctl.sampling(2, 1).logit_scale
    assert scale.tau == 0.05 and scale.code_compat is False
    # μ is the nearest-rank 0.8-quantile of log H over the 24 valid tokens (8 × [0.01, 0.05, 0.2])
    assert scale.mu == pytest.approx(math.log(0.2), abs=1e-6)


def test_think_phase_split_excludes_the_close_token():
    from entropo.trainer.step_metrics import think_phase

    close = 9
    ids = torch.tensor([[1, 2, close, 4, 0], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[1.0, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    think, valid = think_phase(ids, mask, close)
    assert think.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]  # no </think>: all thinking
    assert valid.tolist() == [[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]]


def test_samples_table_and_entropy_histogram_reach_the_sinks():
    class Capture:
        def __init__(self):
            self.tables, self.histograms = [], []

        def log_table(self, step, name, columns, rows):
            self.tables.append((step, name, columns, list(rows)))

        def log_histogram(self, step, name, values):
            self.histograms.append((step, name, values))

    ctl, _ = _controller("logger.samples=3")
    ctl.sinks = Capture()
    batch, _ = ctl.collect(1, Timer())
    ctl.log_samples(5, batch)
    (step, name, columns, rows), = ctl.sinks.tables
    assert (step, name, columns) == (5, "samples", ["prompt", "response", "reward", "mean_entropy"])
    assert len(rows) == 3 and rows[0][0] == "0+0=?" and rows[0][3] == pytest.approx(0.1)
    (step, name, values), = ctl.sinks.histograms
    assert name == "entropy/tokens" and len(values) == int(batch.mask.sum())


def test_forking_token_analysis():
    class Capture:
        def __init__(self):
            self.tables = []

        def log_table(self, step, name, columns, rows):
            self.tables.append((name, list(rows)))

    ctl, _ = _controller()
    ctl.sinks = Capture()
    batch, _ = ctl.collect(1, Timer())
    batch.entropy = torch.rand_like(batch.mask)
    ctl.state.probe = probe_of(batch, 32)
    out = ctl.forking_tokens(10, batch)
    # FakeCluster.forward sets every probe entropy to 0.1: ties break by position, so the
    # "current" top-20% are the first positions; the overlap with the random initial ranking
    # is a fraction in [0, 1]
    assert 0.0 <= out["forking/overlap_initial"] <= 1.0
    valid = batch.entropy[batch.mask.bool()]
    k = int(0.2 * valid.numel() + 0.9999)  # the top 20%: the threshold is the k-th largest entropy
    assert out["forking/threshold"] == pytest.approx(float(valid.sort(descending=True).values[k - 1]), abs=1e-6)
    name, rows = ctl.sinks.tables[0]
    assert name == "forking_tokens" and sum(r[1] for r in rows) == int(0.2 * batch.mask.sum() + 0.9999)


def test_old_pass_is_fused_only_where_it_equals_the_update_forward():
    from entropo.rewards import registry
    from entropo.trainer.passes import old_pass_fused

    POLICY_FREE = {n for n in registry.names() if not registry.get(n).reads_policy}
    assert {"math", "countdown", "embedded", "format", "code", "random"} == POLICY_FREE

    def fused(*overrides, rewards=("embedded",)):
        cfg = load_config(overrides=["trainer.prompts_per_step=4", *overrides])
        return old_pass_fused(cfg, any(r not in POLICY_FREE for r in rewards))

    assert fused()
    assert fused("algorithm.token_weight=[tis]", "algorithm.token_mask=[high_entropy]",
                 "algorithm.high_entropy.stat_scope=micro", rewards=("math", "format"))
    assert not fused("learner.fuse_old_forward=false")
    assert not fused("learner.ppo_epochs=2")
    assert not fused("learner.mini_batch_prompts=2")  # the second mini-batch sees moved parameters
    assert not fused("algorithm.kl_coef=0.01")
    assert not fused("algorithm.token_weight=[steer]")  # reads π_old entropies
    assert not fused("algorithm.loss=kl_cov", "algorithm.kl_cov.stat_scope=global")  # global pre-pass
    assert not fused("algorithm.advantage=canon")  # reads π_old entropies
    assert fused("algorithm.advantage=hapo")  # reads the lengths only
    assert not fused("algorithm.regularizer=[epo]")  # a stateful method reads π_old before the update
    assert not fused("algorithm.token_mask=[dmmpt]", "algorithm.dmmpt.sigma=0.5")
    assert not fused(rewards=("pear",))
    assert not fused(rewards=("my_rewards.py:score",))  # may read Sample.entropy


def test_fused_step_runs_no_forward_and_takes_entropies_from_the_update():
    ctl, _ = _controller("learner.fuse_old_forward=true", "logger.backends=[]")
    assert ctl.fused
    metrics = ctl.train_step()
    assert ctl.cluster.log == ["rollout v0", "update fused", "sync v1"]
    assert metrics["entropy/mean"] == pytest.approx(0.2)
    assert metrics["rollout/off_policy_steps"] == 0.0


def test_async_rollout_overlaps_generation_and_stays_one_step_behind():
    ctl, _ = _controller("trainer.async_rollout=true", "trainer.total_steps=3", "learner.fuse_old_forward=true")
    steps = [ctl.train_step() for _ in range(3)]
    # step 1 generates with v0 and starts step 2's generation (still v0) before its update;
    # step 2 pushes v1 once that generation is done, then starts step 3's with v1.
    log = ctl.cluster.log
    assert log[0] == "rollout v0"
    assert log.index("sync v1") > log.index("update fused")
    assert [s["rollout/off_policy_steps"] for s in steps] == [0.0, 1.0, 1.0]
    assert [s["rollout/weight_version"] for s in steps] == [0.0, 0.0, 1.0]
    assert log.count("rollout v0") == 2 and log.count("rollout v1") == 1
    assert "rollout v2" not in log  # no generation beyond the last step
    assert all(s["timing/rollout_ahead"] > 0 for s in steps[1:])
    ctl.settle()
    assert ctl.cluster.weight_version == 3  # the final policy reached the workers
    assert ctl.sampler.pos == 12  # 3 steps × 4 prompts, nothing drawn beyond


@pytest.mark.parametrize("fused", [True, False])
def test_async_fused_scores_the_next_batch_in_the_background(fused):
    """With nothing before the reward reading π_old (fused), the background thread scores the
    batch it generated: the step uses those rewards (the same as scoring it again) and logs
    their time as ``timing/reward_ahead``. Without fusion the rewards wait for π_old."""
    import threading

    ctl, _ = _controller("trainer.async_rollout=true", "trainer.total_steps=3",
                         f"learner.fuse_old_forward={str(fused).lower()}")
    threads = []
    score = ctl.scorer.score
    ctl.scorer.score = lambda batch, step: threads.append(threading.current_thread().name) or score(batch, step)
    steps = [ctl.train_step() for _ in range(3)]
    if fused:
        assert threads[0] == "MainThread" and all(n.startswith("rollout-ahead") for n in threads[1:])
        assert all(s["timing/reward_ahead"] > 0 for s in steps[1:])
        batch = ctl.last_batch
        rewards = batch.rewards.clone()
        again = score(batch, 3)
        assert torch.equal(batch.rewards, rewards)
        assert again and all(steps[-1][k] == pytest.approx(v) for k, v in again.items())
    else:
        assert threads == ["MainThread"] * 3
        assert not any("timing/reward_ahead" in s for s in steps)
    ctl.settle()


def test_async_checkpoint_keeps_the_pending_draw():
    ctl, _ = _controller("trainer.async_rollout=true", "trainer.total_steps=5")
    ctl.train_step()
    assert ctl.ahead.pending and ctl.sampler.pos == 8
    assert ctl.ahead.sampler_state == {"pos": 4}  # what a checkpoint stores: step 2 is drawn again


def test_fit_evaluates_every_evaluation_every_steps_whatever_samples_every(tmp_path):
    class Sinks:
        def log(self, step, metrics):
            pass

        def log_table(self, *a):
            pass

        def log_histogram(self, *a):
            pass

    ctl, _ = _controller("trainer.total_steps=4", "evaluation.every=2", "logger.samples_every=1",
                         f"trainer.output_dir={tmp_path}", "learner.fuse_old_forward=true")
    evaluated = []
    ctl.eval_rows, ctl.sinks, ctl.checkpoint = [object()], Sinks(), lambda: None
    ctl.evaluate = lambda: (evaluated.append(ctl.state.step), {"eval/pass@1": 0.5})[1]
    ctl.fit()
    assert evaluated == [0, 2, 4]


def test_a_reward_failing_on_most_samples_stops_the_step_in_one_line(tmp_path):
    """Half the responses make the native reward raise: at max_error_frac 0.5 the step goes on
    (the error fraction is logged), at 0.4 it stops before any update, naming the function."""
    from entropo.rewards import RewardFailureError

    raising = tmp_path / "rewards.py"
    raising.write_text("def half(sample):\n"
                       "    if sample.group % 2:\n"
                       "        raise KeyError('answer')\n"
                       "    return 1.0\n")
    ctl, _ = _controller(f"reward.fns=[{raising}:half]", "reward.max_error_frac=0.5")
    metrics = ctl.train_step()
    assert metrics["reward/error_frac"] == 0.5 and metrics["reward/errors"] == 4.0
    ctl, _ = _controller(f"reward.fns=[{raising}:half]", "reward.max_error_frac=0.4")
    with pytest.raises(RewardFailureError) as e:
        ctl.train_step()
    assert str(e.value).startswith("reward 'half' failed on 4/8 samples of step 1 (50% > reward.max_error_frac=0.4); "
                                   "first: exception: KeyError: 'answer'")
    assert "update" not in ctl.cluster.log and ctl.state.step == 0


def test_reward_functions_see_the_rendered_prompt_the_messages_and_the_progress(tmp_path):
    seen = tmp_path / "seen.txt"
    spy = tmp_path / "spy.py"
    spy.write_text("def spy(sample):\n"
                   f"    open({str(seen)!r}, 'a').write(repr((sample.prompt, sample.messages, sample.columns, "
                   "sample.trainer_state.global_step, sample.trainer_state.max_steps)) + '\\n')\n"
                   "    return 0.0\n")
    ctl, _ = _controller(f"reward.fns=[{spy}:spy]", "trainer.total_steps=5")
    messages = [{"role": "user", "content": "1+1?"}]
    ctl.sampler = ListSampler([PromptRow(messages, "2", "t", columns={"solution": "2"})], 4)
    ctl.train_step()
    first = __import__("ast").literal_eval(seen.read_text().splitlines()[0])
    # no chat template (tokenizer None): the contents, never a JSON dump
    assert first == ("1+1?", messages, {"solution": "2"}, 1, 5)


@pytest.mark.parametrize(("bad", "named"), [
    ({"actor/grad_norm": float("nan")}, "actor/grad_norm=nan"),
    ({"actor/pg_loss": float("inf")}, "actor/pg_loss=inf"),
    ({"actor/nonfinite_param_ranks": 1.0}, "NaN/inf weights on 1 learner rank(s)"),
])
def test_a_non_finite_update_stops_before_the_weights_are_synced(bad, named):
    from entropo.trainer.errors import NonFiniteUpdateError

    ctl, cfg = _controller()
    update = ctl.cluster.update
    ctl.cluster.update = lambda *a, **k: {**update(*a, **k), **bad}
    with pytest.raises(NonFiniteUpdateError, match="^step 1: the update gave " + re.escape(named)) as e:
        ctl.train_step()
    assert f"learner.lr (now {cfg.learner.lr:g})" in str(e.value) and "\n" not in str(e.value)
    assert "update" in ctl.cluster.log and not any(x.startswith("sync") for x in ctl.cluster.log)
    assert ctl.state.step == 0  # the step did not complete
