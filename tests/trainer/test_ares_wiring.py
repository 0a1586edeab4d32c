"""ARES in the trainer without Ray: the controller stage, the per-row β in the objective."""

from __future__ import annotations

import math

import pytest
import torch

from entropo.algorithms.ares import AresState
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.objective import micro_objective
from entropo.config import load_config
from entropo.trainer.controller import Controller
from entropo.trainer.passes import old_pass_fused
from entropo.trainer.step_metrics import Timer
from tests.objectives import objective
from tests.trainer.test_controller import ROWS, FakeCluster, ListSampler


class RefCluster(FakeCluster):
    """π_ref log-probs below π_old's (a KL > 0) and the top-k entropy extra."""

    def forward(self, batch, extras=frozenset()):
        super().forward(batch, extras)
        batch.old_logp = torch.full_like(batch.mask, -0.5)
        batch.ref_logp = torch.full_like(batch.mask, -0.7)
        if "topk_entropy" in extras:
            batch.topk_entropy = torch.full_like(batch.mask, 0.3)


def _controller(*overrides):
    from entropo.rewards import RewardManager

    cfg = load_config(overrides=["trainer.prompts_per_step=6", "rollout.n=2", "reward.mode=local",
                                 "algorithm.ares.enable=true", "algorithm.kl_coef=0.01",
                                 "algorithm.ares.window_size=1", *overrides])
    return Controller(cfg, RefCluster(), ListSampler(ROWS, 6), None, RewardManager(cfg.reward), sinks=None), cfg


def test_ares_stage_adds_the_term_and_sets_beta_per_row():
    ctl, _ = _controller()
    batch, _ = ctl.collect(1, Timer())
    before = batch.rewards.clone()
    metrics = ctl.methods.shape(batch, 1)
    term = batch.reward_components["ares"]
    torch.testing.assert_close(batch.rewards, before + term)
    state = ctl.methods.states["ares"]
    assert isinstance(state, AresState)
    assert state.kl_updates == 1 and state.threshold == pytest.approx(0.1)
    # prompts by index mod 3: all correct (easy), all wrong (hard), mixed 1 of 2 (medium)
    beta = torch.tensor(state.beta)
    bucket = torch.tensor([(0, 2, 1)[r.index % 3] for r in batch.rows])
    torch.testing.assert_close(batch.kl_scale, beta[bucket].float()[:, None] * batch.mask)
    assert metrics["ares/frac_easy"] == metrics["ares/frac_hard"] == metrics["ares/frac_medium"] == pytest.approx(1 / 3)
    # every row: k3 at log π_ref − log π_old = −0.2 is e^−0.2 + 0.2 − 1 = 0.018731, above the target 0.01:
    # e = 0.8731, E = 0.03·e, β = exp(0.05·E) in every bucket
    kl = math.exp(-0.2) + 0.2 - 1
    assert metrics["ares/kl_easy"] == pytest.approx(kl, rel=1e-6)
    assert state.beta == pytest.approx((math.exp(0.05 * 0.03 * (kl / 0.01 - 1)),) * 3, rel=1e-6)
    batch, _ = ctl.advantages(batch)
    shards = ctl.minibatches(batch)
    assert shards[0][0].kl_scale is not None and shards[0][0].kl_scale.shape == batch.mask.shape


def test_topk_entropy_is_requested_and_fusing_is_off():
    ctl, cfg = _controller("algorithm.ares.entropy=topk", "algorithm.ares.adaptive_kl=false", "algorithm.kl_coef=0")
    assert ctl.methods.forward_extras() == frozenset({"topk_entropy"})
    assert not old_pass_fused(cfg, rewards_read_policy=False)  # the term reads π_old's entropies before the update
    batch, _ = ctl.collect(1, Timer())
    metrics = ctl.methods.shape(batch, 1)
    assert batch.kl_scale is None and "ares/kl_easy" not in metrics
    assert metrics["ares/threshold"] == pytest.approx(0.3)  # the top-k entropies were read


def test_objective_scales_the_reference_kl_per_row():
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(3, 4, generator=gen) - 1
    ref = torch.randn(3, 4, generator=gen) - 1
    mask = torch.ones(3, 4)
    scale = torch.tensor([0.5, 1.0, 2.0])[:, None] * mask
    obj = objective(loss="ppo_clip", loss_cfg=load_config().algorithm.ppo_clip, kl_coef=0.1)
    base = TokenLossInputs(logp=logp, old_logp=logp, advantages=torch.zeros(3, 4), mask=mask)
    scaled = TokenLossInputs(logp=logp, old_logp=logp, advantages=torch.zeros(3, 4), mask=mask, kl_scale=scale)
    plain, _ = micro_objective(base, obj, ref_logp=ref)
    ours, _ = micro_objective(scaled, obj, ref_logp=ref)
    from entropo.algorithms.regularizers import kl_penalty

    kl = kl_penalty(logp, ref, "k3")  # A = 0: the loss is the KL term alone (token-mean)
    torch.testing.assert_close(plain, 0.1 * kl.mean())
    torch.testing.assert_close(ours, 0.1 * (kl * scale).mean())
