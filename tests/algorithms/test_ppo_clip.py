import pytest
import torch

from entropo.algorithms.configs.losses import PPOClipConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.losses.ppo_clip import ppo_clip_loss


def _loss(ratio, adv, **cfg):
    logp = torch.log(torch.tensor([ratio]))
    inp = TokenLossInputs(logp, torch.zeros(1), torch.tensor([adv]), torch.ones(1))
    loss, metrics = ppo_clip_loss(inp, PPOClipConfig(**cfg))
    return loss.item(), metrics


def test_spec_l1_clip_higher():
    # A = 1, r = 1.35 -> clipped at 1 + 0.28: loss = -1.28
    loss, m = _loss(1.35, 1.0, eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx(-1.28, abs=1e-6)
    assert m["actor/pg_clipfrac_upper"].item() == 1.0
    # A = -1, r = 0.7 -> max(0.7, 0.8) = 0.8 (clipped at 1 - 0.2)
    loss, m = _loss(0.7, -1.0, eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx(0.8, abs=1e-6)
    assert m["actor/pg_clipfrac_lower"].item() == 1.0


def test_unclipped_inside_the_trust_region():
    loss, m = _loss(1.1, 1.0, eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx(-1.1, abs=1e-6)
    assert m["actor/pg_clipfrac"].item() == 0.0


def test_dual_clip_bounds_negative_advantages():
    # A = -1, r = 5: max(5, 1.2) = 5, dual clip with c = 3 -> min(5, 3) = 3
    loss, m = _loss(5.0, -1.0, dual_clip_c=3.0)
    assert loss == pytest.approx(3.0, abs=1e-6)
    assert m["actor/pg_clipfrac_dual"].item() == 1.0
    loss, _ = _loss(5.0, -1.0)
    assert loss == pytest.approx(5.0, abs=1e-5)


def test_log_ratio_clamp_prevents_overflow():
    inp = TokenLossInputs(torch.tensor([100.0]), torch.zeros(1), torch.tensor([-1.0]), torch.ones(1))
    loss, _ = ppo_clip_loss(inp, PPOClipConfig(log_ratio_clamp=20.0))
    assert torch.isfinite(loss).all()
    assert loss.item() == pytest.approx(torch.exp(torch.tensor(20.0)).item(), rel=1e-6)


def test_gradient_is_minus_advantage_times_ratio_when_unclipped():
    logp = torch.tensor([0.05, -0.5], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    inp = TokenLossInputs(logp, torch.zeros(2), adv, torch.ones(2))
    loss, _ = ppo_clip_loss(inp, PPOClipConfig(eps_low=0.2, eps_high=0.2))
    loss.sum().backward()
    # token 0: r = e^0.05 = 1.051271 inside [0.8, 1.2]: d(-A r)/dlogp = -2 * 1.051271
    # token 1: r = e^-0.5 = 0.606531 < 0.8 with A < 0: clipped, gradient 0
    assert logp.grad.tolist() == pytest.approx([-2.102542, 0.0], abs=1e-6)


def test_invalid_config_names_the_field():
    with pytest.raises(ValueError, match="ppo_clip.dual_clip_c"):
        PPOClipConfig(dual_clip_c=0.5)
