"""Spurious-reward controls in ppo_clip (arXiv 2512.16912): clipping off, clip-bias metrics by hand, rank split."""

import math

import pytest
import torch

from entropo.algorithms.configs.losses import CispoConfig, PPOClipConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.losses.clip_bias import clip_bias_metrics
from entropo.algorithms.losses.ppo_clip import ppo_clip_loss
from tests.algorithms.learner_split import random_tokens, split_update
from tests.metrics_doc import undocumented
from tests.objectives import objective

# r per token and A: (1.5, +1) clipped above; (0.5, −2) clipped below; (1.5, −1) unclipped
# (A < 0 above the region keeps −A·r); (0.5, +1) unclipped; (5, −1) dual-clipped at c = 3
RATIO = [1.5, 0.5, 1.5, 0.5, 5.0]
ADV = [1.0, -2.0, -1.0, 1.0, -1.0]


def _inp(mask=None):
    logp = torch.log(torch.tensor([RATIO], dtype=torch.float64)).requires_grad_(True)
    m = torch.ones_like(logp) if mask is None else torch.tensor([mask], dtype=torch.float64)
    return TokenLossInputs(logp, torch.zeros_like(logp), torch.tensor([ADV], dtype=torch.float64), m)


def test_clip_bias_by_hand():
    inp = _inp()
    loss, m = ppo_clip_loss(inp, PPOClipConfig(dual_clip_c=3.0))
    # ℓ = max(−A·r, −A·clip(r, 0.8, 1.2)), then min(ℓ, −A·3) where A < 0
    assert loss[0].tolist() == pytest.approx([-1.2, 1.6, 1.5, -0.5, 3.0], abs=1e-12)
    # clipped (no gradient): token 0 (A = +1), token 1 (A = −2), token 4 (dual, A = −1)
    assert float(m["actor/clipfrac_pos_adv"]) == pytest.approx(1 / 5)
    assert float(m["actor/clipfrac_neg_adv"]) == pytest.approx(2 / 5)
    assert float(m["actor/clipped_adv_mass_pos"]) == pytest.approx(1.0 / 5)
    assert float(m["actor/clipped_adv_mass_neg"]) == pytest.approx((2.0 + 1.0) / 5)
    assert float(m["actor/clipfrac_pos_adv"]) == float(m["actor/pg_clipfrac_upper"])
    assert float(m["actor/clipfrac_neg_adv"]) == pytest.approx(
        float(m["actor/pg_clipfrac_lower"]) + float(m["actor/pg_clipfrac_dual"]))
    assert undocumented(m) == []
    loss.sum().backward()
    # tokens 0, 1, 4 have no gradient; 2 and 3: −A·r
    assert inp.logp.grad[0].tolist() == pytest.approx([0.0, 0.0, 1.5, -0.5, 0.0], abs=1e-12)


def test_clip_off_is_the_plain_importance_weighted_surrogate():
    inp = _inp()
    loss, m = ppo_clip_loss(inp, PPOClipConfig(clip=False))
    # ℓ = −A·r everywhere, gradient −A·r (d r / d log π = r)
    expected = [-a * r for a, r in zip(ADV, RATIO)]
    assert loss[0].tolist() == pytest.approx(expected, abs=1e-12)
    loss.sum().backward()
    assert inp.logp.grad[0].tolist() == pytest.approx(expected, abs=1e-12)
    for key in ("actor/pg_clipfrac", "actor/pg_clipfrac_upper", "actor/pg_clipfrac_lower", "actor/pg_clipfrac_dual",
                "actor/clipfrac_pos_adv", "actor/clipfrac_neg_adv", "actor/clipped_adv_mass_pos",
                "actor/clipped_adv_mass_neg"):
        assert float(m[key]) == 0.0, key
    assert float(m["actor/ppo_kl"]) == pytest.approx(-sum(math.log(r) for r in RATIO) / 5)
    # the κ clamp still guards against overflow
    far = TokenLossInputs(torch.tensor([[100.0]]), torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1))
    assert torch.isfinite(ppo_clip_loss(far, PPOClipConfig(clip=False))[0]).all()


def test_clip_off_with_dual_clip_is_rejected():
    with pytest.raises(ValueError, match="algorithm.ppo_clip.clip=false"):
        PPOClipConfig(clip=False, dual_clip_c=3.0)


def test_masked_and_zero_advantage_tokens_are_not_counted():
    _, m = ppo_clip_loss(_inp(mask=[0, 1, 1, 1, 1]), PPOClipConfig())
    assert float(m["actor/clipfrac_pos_adv"]) == 0.0  # token 0 masked
    assert float(m["actor/clipfrac_neg_adv"]) == pytest.approx(1 / 4)
    flags = torch.tensor([[True, True]])
    m = clip_bias_metrics(flags, torch.zeros(1, 2), torch.ones(1, 2))
    assert all(float(v) == 0.0 for v in m.values())  # A = 0: clipped, but on neither side


@pytest.mark.parametrize("obj", [objective("ppo_clip", PPOClipConfig(eps_high=0.28, dual_clip_c=3.0)),
                                 objective("cispo", CispoConfig(eps_high=0.2))], ids=["ppo_clip", "cispo"])
def test_rank_split_equals_whole_batch(obj):
    """The learner's reduction (token-weighted over micro-batches, summed over ranks) of the
    clip-bias metrics equals their whole-batch value."""
    n, t = 9, 13
    old, logp, adv, mask = random_tokens(5, n, t, spread=0.6)
    whole = split_update(obj, logp, old, adv, mask, [slice(0, n)], micro=n)
    split = split_update(obj, logp, old, adv, mask, [slice(0, 2), slice(2, 6), slice(6, n)], micro=3)
    torch.testing.assert_close(split[0], whole[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(split[1], whole[1], atol=1e-12, rtol=0)
    for key in ("actor/clipfrac_pos_adv", "actor/clipfrac_neg_adv", "actor/clipped_adv_mass_pos",
                "actor/clipped_adv_mass_neg"):
        assert split[2][key] == pytest.approx(whole[2][key], abs=1e-6), key
        assert whole[2][key] > 0, key
    # the positive side counts only positive-advantage tokens (the share clipped is this over it)
    pos = (adv > 0) & mask.bool()
    assert whole[2]["actor/clipfrac_pos_adv"] <= float(pos.sum()) / float(mask.sum())
