"""The composed objective: global scope makes the loss independent of micro-batching."""

import pytest
import torch

from entropo.algorithms.configs.losses import ClipCovConfig, KLCovConfig, PPOClipConfig
from entropo.algorithms.configs.masks import EntropyMaskConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.objective import micro_objective, prepare_minibatch
from tests.objectives import objective


def _batch(seed=0, n=8, t=16):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=g) * 4
    old = logp + 0.05 * torch.randn(n, t, generator=g)
    adv = torch.randn(n, 1, generator=g).expand(n, t).contiguous() * 2
    mask = (torch.rand(n, t, generator=g) > 0.2).float()
    entropy = torch.rand(n, t, generator=g) * 2
    return logp, old, adv, mask, entropy


def _loss_and_grad(obj, micro_rows, seed=0):
    logp, old, adv, mask, entropy = _batch(seed)
    lp = logp.clone().requires_grad_(True)
    ent = entropy.clone().requires_grad_(True)
    full = TokenLossInputs(logp, old, adv, mask, entropy=entropy, generator=torch.Generator().manual_seed(3))
    prepared = prepare_minibatch(full, obj)
    total = 0.0
    for rows in micro_rows:
        inp = TokenLossInputs(lp[rows], old[rows], adv[rows], mask[rows], entropy=ent[rows],
                              generator=torch.Generator().manual_seed(3))
        loss, _ = micro_objective(inp, obj, prepared.rows(rows))
        loss.backward()
        total += loss.item()
    return total, lp.grad.clone()


OBJECTIVES = {
    "grpo": objective("ppo_clip", PPOClipConfig()),
    "clip_cov": objective("clip_cov", ClipCovConfig(clip_ratio=0.05, cov_low=0.1, cov_high=5.0)),
    "kl_cov": objective("kl_cov", KLCovConfig(k=0.05)),
    "entropy_mask": objective("ppo_clip", PPOClipConfig(), masks=(("high_entropy", EntropyMaskConfig()),)),
    "entropy_mask_all_valid+bonus": objective(
        "ppo_clip", PPOClipConfig(), masks=(("high_entropy", EntropyMaskConfig(norm="all_valid")),),
        entropy_coef=0.01,
    ),
    "kl_cov+mask+seq_mean": objective(
        "kl_cov", KLCovConfig(k=0.1), masks=(("high_entropy", EntropyMaskConfig(rho=0.5)),),
        agg_mode="seq-mean-token-mean",
    ),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_global_scope_is_independent_of_micro_batch_size(name):
    obj = OBJECTIVES[name]
    one, g_one = _loss_and_grad(obj, [slice(0, 8)])
    four, g_four = _loss_and_grad(obj, [slice(i, i + 2) for i in range(0, 8, 2)])
    odd, g_odd = _loss_and_grad(obj, [slice(0, 3), slice(3, 8)])
    assert four == pytest.approx(one, abs=1e-6) and odd == pytest.approx(one, abs=1e-6)
    torch.testing.assert_close(g_four, g_one, atol=1e-7, rtol=0)
    torch.testing.assert_close(g_odd, g_one, atol=1e-7, rtol=0)


def test_micro_scope_reproduces_the_official_dependence_on_micro_batch_size():
    obj = objective("kl_cov", KLCovConfig(k=0.05, stat_scope="micro"))
    _, g_one = _loss_and_grad(obj, [slice(0, 8)])
    _, g_four = _loss_and_grad(obj, [slice(i, i + 2) for i in range(0, 8, 2)])
    assert not torch.allclose(g_four, g_one, atol=1e-4)


def test_entropy_bonus_value_and_gradient():
    # Entropy bonus: uniform over 2 and 4 tokens, H = [ln 2, ln 4], token-mean 1.039721; c_H = 0.01 -> −0.010397
    h = torch.tensor([[torch.log(torch.tensor(2.0)), torch.log(torch.tensor(4.0))]], requires_grad=True)
    zeros = torch.zeros(1, 2)
    inp = TokenLossInputs(zeros, zeros, zeros, torch.ones(1, 2), entropy=h)
    loss, _ = micro_objective(inp, objective("ppo_clip", PPOClipConfig(), entropy_coef=0.01))
    assert loss.item() == pytest.approx(-0.010397, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(h.grad, torch.full((1, 2), -0.005))


def test_kl_term_requires_reference():
    zeros = torch.zeros(1, 2)
    inp = TokenLossInputs(zeros, zeros, zeros, torch.ones(1, 2))
    with pytest.raises(ValueError, match="ref_logp"):
        micro_objective(inp, objective("ppo_clip", PPOClipConfig(), kl_coef=0.04))
    loss, _ = micro_objective(inp, objective("ppo_clip", PPOClipConfig(), kl_coef=0.04), ref_logp=zeros - 0.5)
    # k3 with Δ = log π_ref − log π_θ = −0.5: e^−0.5 + 0.5 − 1 = 0.106531; × 0.04 = 0.004261
    assert loss.item() == pytest.approx(0.04 * 0.106531, abs=1e-6)


# ---- rows with no advantage (learner.skip_zero_advantage) --------------------------------

def _inert_objectives():
    from entropo.algorithms.configs.losses import HapoClipConfig
    from entropo.algorithms.configs.masks import DmmptConfig
    from entropo.algorithms.configs.weights import SteerConfig, TisConfig

    tis = (("tis", TisConfig(cap=1.02)),)  # a cap inside the ratios below: some weights truncate
    return {
        # name: (objective, rows with A = 0 may be left out)
        "grpo": (objective("ppo_clip", PPOClipConfig()), True),
        "grpo+tis": (objective("ppo_clip", PPOClipConfig(), weights=tis), True),
        "dual_clip+seq_mean": (objective("ppo_clip", PPOClipConfig(dual_clip_c=3.0),
                                         agg_mode="seq-mean-token-mean"), True),
        "clip_cov": (objective("clip_cov", ClipCovConfig(clip_ratio=0.05, cov_low=0.1, cov_high=5.0)), True),
        "hapo_clip": (objective("hapo_clip", HapoClipConfig()), True),
        "entropy_mask": (objective("ppo_clip", PPOClipConfig(), masks=(("high_entropy", EntropyMaskConfig()),)),
                         True),
        "steer": (objective("ppo_clip", PPOClipConfig(), weights=(("steer", SteerConfig(stat_scope="global")),)),
                  True),
        "dmmpt": (objective("ppo_clip", PPOClipConfig(), masks=(("dmmpt", DmmptConfig(tau=0.3, sigma=10.0)),)),
                  True),
        # not inert: a term without A, or a statistic over the micro-batch's other rows
        "kl_cov": (objective("kl_cov", KLCovConfig(k=0.2)), False),
        "bonus": (objective("ppo_clip", PPOClipConfig(), entropy_coef=0.01), False),
        "kl_ref": (objective("ppo_clip", PPOClipConfig(), kl_coef=0.04), False),
        "clip_cov_micro": (objective("clip_cov", ClipCovConfig(clip_ratio=0.2, cov_low=-5.0, cov_high=5.0,
                                                                stat_scope="micro")), False),
        "entropy_mask_micro": (objective("ppo_clip", PPOClipConfig(),
                                         masks=(("high_entropy", EntropyMaskConfig(stat_scope="micro")),)), False),
        # linear STEER reads Ω_min, which is 0 exactly when an A = 0 row shares the micro-batch
        "steer_micro": (objective("ppo_clip", PPOClipConfig(),
                                  weights=(("steer", SteerConfig(scheme="linear", stat_scope="micro")),)), False),
        "dmmpt_micro": (objective("ppo_clip", PPOClipConfig(),
                                  masks=(("dmmpt", DmmptConfig(tau=0.3, sigma=10.0, stat_scope="micro")),)), False),
    }


INERT_ROWS = [0, 3, 6]


def _loss_and_grad_of_rows(obj, rows):
    """Loss and gradient (d/dlogp and d/dentropy) of one micro-batch of ``rows`` (A = 0 on
    INERT_ROWS), the statistics prepared over all 8 rows."""
    logp, old, adv, mask, entropy = _batch(5)
    adv = adv.clone()
    adv[INERT_ROWS] = 0.0
    rollout = old + 0.03 * torch.randn(old.shape, generator=torch.Generator().manual_seed(9))
    ref = old - 0.1

    def inputs(lp, index, ent=entropy):
        return TokenLossInputs(lp[index], old[index], adv[index], mask[index], entropy=ent[index],
                               old_entropy=entropy[index], rollout_logp=rollout[index], step_entropy=0.5,
                               generator=torch.Generator().manual_seed(3))

    prepared = prepare_minibatch(inputs(logp, slice(None)), obj)
    lp, ent = logp.clone().requires_grad_(True), entropy.clone().requires_grad_(True)
    index = torch.tensor(rows)
    loss, _ = micro_objective(inputs(lp, index, ent), obj, prepared.rows(index), ref_logp=ref[index])
    loss.backward()
    return loss.item(), torch.cat([lp.grad, torch.zeros_like(lp) if ent.grad is None else ent.grad], dim=1)


@pytest.mark.parametrize("name", sorted(_inert_objectives()))
def test_rows_without_advantage_can_be_left_out_exactly_when_the_objective_says_so(name):
    """Where ``inert_at_zero_advantage`` holds, a micro-batch without the A = 0 rows has the
    loss and gradient of one with them (those rows' gradient is exactly 0); where it does not,
    leaving them out changes the gradient (so the flag is not merely conservative)."""
    obj, inert = _inert_objectives()[name]
    assert obj.inert_at_zero_advantage is inert
    full, g_full = _loss_and_grad_of_rows(obj, list(range(8)))
    part, g_part = _loss_and_grad_of_rows(obj, [r for r in range(8) if r not in INERT_ROWS])
    assert g_full.abs().sum() > 0
    if inert:
        assert g_full[INERT_ROWS].abs().max() == 0
        assert part == pytest.approx(full, abs=1e-7)
        torch.testing.assert_close(g_part, g_full, atol=1e-7, rtol=0)
    else:
        assert not torch.allclose(g_part, g_full, atol=1e-6)
