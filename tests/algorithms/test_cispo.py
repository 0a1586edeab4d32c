"""CISPO (MiniMax-M1, arXiv 2506.13585, Eqs. 4-5): by hand, edge cases, official formula, rank split."""

import math

import pytest
import torch

from entropo.algorithms.configs.losses import CispoConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.losses.cispo import cispo_loss
from entropo.algorithms.objective import micro_objective
from entropo.algorithms.registry import TOKEN_LOSSES
from tests.algorithms.learner_split import random_tokens, split_update
from tests.metrics_doc import undocumented
from tests.objectives import objective

# π_θ/π_old per token: 0.5, 1, 2, 6 (old_logp = 0, so log π_θ = log r)
RATIO = [0.5, 1.0, 2.0, 6.0]
ADV = [1.0, -1.0, 2.0, -0.5]


def _inp(ratio=RATIO, adv=ADV, mask=None):
    logp = torch.log(torch.tensor([ratio], dtype=torch.float64)).requires_grad_(True)
    m = torch.ones_like(logp) if mask is None else torch.tensor([mask], dtype=torch.float64)
    return TokenLossInputs(logp, torch.zeros_like(logp), torch.tensor([adv], dtype=torch.float64), m)


def test_by_hand_two_sided_bounds():
    inp = _inp()
    loss, m = cispo_loss(inp, CispoConfig(eps_low=0.2, eps_high=0.2))
    # r̂ = clip(r, 0.8, 1.2) = [0.8, 1, 1.2, 1.2]; tokens 0, 2, 3 clipped
    # ℓ = −r̂·A·log r = [−0.8·1·log .5, −1·(−1)·0, −1.2·2·log 2, −1.2·(−0.5)·log 6]
    expected = [0.8 * math.log(2), 0.0, -2.4 * math.log(2), 0.6 * math.log(6)]
    assert loss[0].tolist() == pytest.approx(expected, abs=1e-12)
    loss.sum().backward()
    # ∂ℓ/∂log π = −r̂·A at every token, the clipped ones included
    assert inp.logp.grad[0].tolist() == pytest.approx([-0.8, 1.0, -2.4, 0.6], abs=1e-12)
    assert float(m["actor/pg_clipfrac"]) == pytest.approx(3 / 4)
    assert float(m["actor/clipfrac_pos_adv"]) == pytest.approx(2 / 4)  # tokens 0 (A = 1), 2 (A = 2)
    assert float(m["actor/clipfrac_neg_adv"]) == pytest.approx(1 / 4)  # token 3 (A = −0.5)
    assert float(m["actor/clipped_adv_mass_pos"]) == pytest.approx((1 + 2) / 4)
    assert float(m["actor/clipped_adv_mass_neg"]) == pytest.approx(0.5 / 4)
    assert float(m["cispo/weight_mean"]) == pytest.approx((0.8 + 1 + 1.2 + 1.2) / 4)
    assert float(m["actor/ppo_kl"]) == pytest.approx(-sum(math.log(r) for r in RATIO) / 4)
    assert undocumented(m) == []


def test_defaults_cap_above_only():
    inp = _inp()
    loss, m = cispo_loss(inp, CispoConfig())  # r̂ = min(r, 5): only r = 6 is clipped
    loss.sum().backward()
    assert inp.logp.grad[0].tolist() == pytest.approx([-0.5, 1.0, -4.0, 2.5], abs=1e-12)
    assert float(m["actor/pg_clipfrac"]) == 0.25 and float(m["actor/clipfrac_neg_adv"]) == 0.25
    assert float(m["actor/clipfrac_pos_adv"]) == 0.0
    # no lower bound: a ratio of 1e-6 keeps its weight
    tiny = _inp(ratio=[1e-6], adv=[1.0])
    loss, m = cispo_loss(tiny, CispoConfig())
    loss.sum().backward()
    assert tiny.logp.grad.item() == pytest.approx(-1e-6, rel=1e-9) and float(m["actor/pg_clipfrac"]) == 0.0


def test_ratio_exactly_at_the_bounds_is_not_clipped():
    inp = _inp(ratio=[1.0, 1.0], adv=[1.0, -2.0])
    loss, m = cispo_loss(inp, CispoConfig(eps_low=0.0, eps_high=0.0))  # bounds [1, 1], r = 1
    loss.sum().backward()
    assert float(m["actor/pg_clipfrac"]) == 0.0
    assert inp.logp.grad[0].tolist() == [-1.0, 2.0]


def test_zero_advantage_gives_zero_loss_and_gradient():
    inp = _inp(adv=[0.0] * 4)
    loss, m = cispo_loss(inp, CispoConfig(eps_low=0.2, eps_high=0.2))
    loss.sum().backward()
    assert loss.abs().max().item() == 0.0 and inp.logp.grad.abs().max().item() == 0.0
    assert float(m["actor/clipfrac_pos_adv"]) == float(m["actor/clipfrac_neg_adv"]) == 0.0
    assert float(m["actor/pg_clipfrac"]) == 0.75  # clipping is about r; A = 0 only makes it harmless
    assert TOKEN_LOSSES.get("cispo").vanishes_at_zero_advantage


def test_masked_tokens_count_nowhere():
    # token 3 (r = 6, clipped) masked out: no gradient through the objective, not in the metrics
    inp = _inp(mask=[1, 1, 1, 0])
    loss, m = micro_objective(inp, objective("cispo", CispoConfig(eps_low=0.2, eps_high=0.2)))
    loss.backward()
    # token-mean over 3 tokens: −r̂·A/3
    assert inp.logp.grad[0].tolist() == pytest.approx([-0.8 / 3, 1 / 3, -2.4 / 3, 0.0], abs=1e-12)
    assert float(m["actor/pg_clipfrac"]) == pytest.approx(2 / 3)
    assert float(m["actor/clipfrac_neg_adv"]) == 0.0
    all_masked = _inp(mask=[0, 0, 0, 0])
    _, m = cispo_loss(all_masked, CispoConfig())
    assert all(float(v) == 0.0 for v in m.values())


def test_huge_ratio_stays_finite():
    inp = TokenLossInputs(torch.tensor([[100.0]], requires_grad=True), torch.zeros(1, 1),
                          torch.tensor([[-1.0]]), torch.ones(1, 1))
    loss, m = cispo_loss(inp, CispoConfig(log_ratio_clamp=None))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and inp.logp.grad.item() == pytest.approx(5.0)
    assert float(m["actor/pg_clipfrac"]) == 1.0


def _official(logp, old, adv, mask, low, high):
    """verl b178a3cd5 ``compute_policy_loss_cispo`` re-expressed (bounds 1−low, 1+high, log r
    clamped to ±20, detached clamp times A times log π; clip fraction r ≠ r̂), before agg_loss."""
    ratio = torch.exp(torch.clamp(logp - old, min=-20.0, max=20.0))
    clamped = torch.clamp(ratio, 1 - low, 1 + high)
    losses = -clamped.detach() * adv * logp
    clipfrac = ((ratio != clamped).float() * mask).sum() / mask.sum()
    return losses, clipfrac


@pytest.mark.parametrize(("low", "high"), [(0.2, 0.2), (10.0, 0.2), (1.0, 4.0)])
def test_parity_with_the_official_formula(low, high):
    g = torch.Generator().manual_seed(0)
    n, t = 6, 17
    old = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    logp = (old + 0.8 * torch.randn(n, t, generator=g, dtype=torch.float64)).requires_grad_(True)
    ref_logp = logp.detach().clone().requires_grad_(True)
    adv = torch.randn(n, 1, generator=g, dtype=torch.float64).expand(n, t)
    mask = (torch.rand(n, t, generator=g) > 0.2).to(torch.float64)
    ours, m = cispo_loss(TokenLossInputs(logp, old, adv, mask), CispoConfig(eps_low=low, eps_high=high))
    theirs, clipfrac = _official(ref_logp, old, adv, mask, low, high)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)
    (ours * mask).sum().backward()
    (theirs * mask).sum().backward()
    torch.testing.assert_close(logp.grad, ref_logp.grad, atol=1e-12, rtol=0)
    assert float(m["actor/pg_clipfrac"]) == pytest.approx(float(clipfrac), abs=1e-6)
    assert 0 < float(clipfrac) < 1
    # meta-test: the same comparison catches a weight that is not detached (PPO's gradient)
    wrong = -torch.clamp(torch.exp(ref_logp - old), 1 - low, 1 + high) * adv
    assert not torch.allclose(torch.autograd.grad((wrong * mask).sum(), ref_logp)[0], ref_logp.grad)


def test_rank_split_equals_whole_batch():
    n, t = 7, 11
    old, logp, adv, mask = random_tokens(3, n, t, spread=0.5)
    obj = objective("cispo", CispoConfig(eps_low=0.2, eps_high=0.2))
    whole = split_update(obj, logp, old, adv, mask, [slice(0, n)], micro=n)
    split = split_update(obj, logp, old, adv, mask, [slice(0, 3), slice(3, n)], micro=2)
    torch.testing.assert_close(split[0], whole[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(split[1], whole[1], atol=1e-12, rtol=0)
    for key in ("actor/pg_clipfrac", "actor/clipfrac_pos_adv", "actor/clipfrac_neg_adv",
                "actor/clipped_adv_mass_pos", "actor/clipped_adv_mass_neg", "cispo/weight_mean"):
        assert split[2][key] == pytest.approx(whole[2][key], abs=1e-6), key
    assert whole[2]["actor/clipfrac_pos_adv"] > 0 and whole[2]["actor/clipfrac_neg_adv"] > 0


def test_config_is_validated_and_registered():
    with pytest.raises(ValueError, match="algorithm.cispo.eps_low"):
        CispoConfig(eps_low=-0.1)
    with pytest.raises(ValueError, match="algorithm.cispo.log_ratio_clamp"):
        CispoConfig(log_ratio_clamp=0.0)
    entry = TOKEN_LOSSES.get("cispo")
    assert entry.fn is cispo_loss and entry.config_cls is CispoConfig and entry.selector is None
