"""The controller's stages with a fake cluster (no Ray): dynamic sampling, mini-batches, adaptive c_H."""

from __future__ import annotations

import pytest
import torch

from entropo.config import load_config
from entropo.data.loading import PromptRow
from entropo.trainer.batch import StepBatch
from entropo.trainer.controller import Controller, Timer


class FakeCluster:
    """Each prompt's samples are all correct, all wrong, or mixed, by its index mod 3."""

    def __init__(self) -> None:
        self.calls = 0

    def rollout(self, rows, params, tokenizer):
        self.calls += 1
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
            rows=[r for r in rows for _ in range(g)],
        )

    def forward(self, batch):
        batch.old_logp = torch.zeros_like(batch.mask)
        batch.entropy = torch.full_like(batch.mask, 0.1)


class ListSampler:
    def __init__(self, rows, size):
        self.rows, self.size, self.pos = rows, size, 0

    def next_batch(self):
        out = [self.rows[(self.pos + i) % len(self.rows)] for i in range(self.size)]
        self.pos += self.size
        return out


ROWS = [PromptRow(prompt=f"{i}+0=?", ground_truth=str(i + 10), data_source="t", index=i) for i in range(30)]


def _controller(*overrides):
    from entropo.rewards.scoring import resolve

    cfg = load_config(overrides=["trainer.prompts_per_step=4", "rollout.n=2", *overrides])
    return Controller(cfg, FakeCluster(), ListSampler(ROWS, 4), None, resolve(["embedded"]), sinks=None), cfg


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
    assert metrics["sampling/all_correct_frac"] == pytest.approx(1 / 3, abs=0.1)


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
    assert ctl.entropy_coef_now(batch) == 0.0
    out = ctl.adapt({"entropy/mean": 0.1})
    assert out["actor/entropy_bonus_active"] == 0.0
    assert ctl.state.entropy_coef == pytest.approx(0.01 - 0.005)  # decreased by δ
    batch.entropy.fill_(0.01)
    assert ctl.entropy_coef_now(batch) == pytest.approx(0.005)
