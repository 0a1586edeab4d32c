"""EPO (arXiv 2509.22576): faithful corridor (value shift only), differentiable variant, β_k, history."""

from __future__ import annotations

import math

import pytest
import torch

from entropo.algorithms.aggregate import loss_norm
from entropo.algorithms.configs.regularizers import EpoConfig
from entropo.algorithms.epo import EpoHistory, epo_history_update, epo_phase_weight, epo_term
from entropo.algorithms.regularizers import entropy_bonus
from tests.fake_ranks import run_split

# Hand case: token entropies [0.5, 3.0], H̄ = 1, κ = (0, 2), α = 0.05, β_k = 1, c_s = 1, λ = 0.001.
SPEC_CFG = EpoConfig(enable_smooth_weights=False)
MASK = torch.ones(1, 2)


def _h():
    return torch.tensor([[0.5, 3.0]], dtype=torch.float64, requires_grad=True)


# ---------------------------------------------------------------- hand-computed numbers


def test_faithful_spec_numbers():
    h = _h()
    term, m = epo_term(h, MASK, 1.0, SPEC_CFG, step=0, agg_mode="token-mean")
    # In range: 0 < 0.5 < 2 yes, 3.0 no: P = [0, 0.05], agg(P) = 0.025.
    torch.testing.assert_close(m["epo/penalty_agg"], torch.tensor(0.025, dtype=torch.float64))
    torch.testing.assert_close(m["epo/in_range_frac"], torch.tensor(0.5))
    # L = −λ(agg(H) − c_s·agg(P)) = −0.001·(1.75 − 0.025) = −0.001725.
    torch.testing.assert_close(term, torch.tensor(-0.001725, dtype=torch.float64), rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(term, h)

    h0 = _h()
    plain, _ = epo_term(h0, MASK, 1.0, SPEC_CFG, step=0, smooth=False, agg_mode="token-mean")
    # The corridor shifts the loss by +λ·c_s·agg(P) = 0.001·0.025 = 2.5e-5 ...
    torch.testing.assert_close(term - plain, torch.tensor(2.5e-5, dtype=torch.float64), rtol=0, atol=1e-15)
    # ... and leaves the gradient exactly that of the plain bonus: −λ/2 per token.
    (grad0,) = torch.autograd.grad(plain, h0)
    assert torch.equal(grad, grad0)
    torch.testing.assert_close(grad, torch.full((1, 2), -0.0005, dtype=torch.float64))


def test_without_history_is_the_plain_bonus():
    h = torch.rand(3, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    for mode in ("token-mean", "seq-mean-token-mean"):
        term, m = epo_term(h, mask, None, EpoConfig(), step=3, agg_mode=mode)
        expected, _ = entropy_bonus(h, mask, 0.001, mode)
        torch.testing.assert_close(term, expected, rtol=0, atol=0)
        assert math.isnan(m["epo/in_range_frac"])


def test_per_token_reference_equals_scalar():
    h = torch.rand(2, 5, dtype=torch.float64) * 3
    mask = torch.ones(2, 5)
    a, _ = epo_term(h, mask, 1.2, EpoConfig(), step=40, agg_mode="token-mean")
    b, _ = epo_term(h, mask, torch.full((2, 5), 1.2, dtype=torch.float64), EpoConfig(), step=40, agg_mode="token-mean")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- differentiable mode (ours)


def test_differentiable_mode_hand_case():
    h = _h()
    cfg = EpoConfig(mode="differentiable", enable_smooth_weights=False)
    term, _ = epo_term(h, MASK, 1.0, cfg, step=0, agg_mode="token-mean")
    # bonus = mean(H·in) = (0.5 + 0)/2 = 0.25; hinge = α·(3 − 2)² = 0.05 on token 2: agg 0.025.
    # L = −0.001·(0.25 − 0.025) = −0.000225.
    torch.testing.assert_close(term, torch.tensor(-0.000225, dtype=torch.float64), rtol=0, atol=1e-15)
    (grad,) = torch.autograd.grad(term, h)
    # ∂/∂H_1 = −λ/2 = −5e-4 (bonus); ∂/∂H_2 = λ·c_s·(1/2)·2α(H_2 − 2) = 0.001·0.05 = 5e-5 (pushes H down).
    torch.testing.assert_close(grad, torch.tensor([[-5e-4, 5e-5]], dtype=torch.float64), rtol=0, atol=1e-15)


def test_differentiable_lower_hinge_pushes_entropy_up():
    h = torch.tensor([[0.2, 1.0]], dtype=torch.float64, requires_grad=True)
    cfg = EpoConfig(mode="differentiable", kappa_l=0.5, enable_smooth_weights=False)
    term, _ = epo_term(h, MASK, 1.0, cfg, step=0, agg_mode="token-mean")
    (grad,) = torch.autograd.grad(term, h)
    # Token 1 below κ_l·H̄ = 0.5: hinge α(0.5 − 0.2)² = 0.0045, ∂ = −2α·0.3 = −0.03 per unit;
    # ∂L/∂H_1 = −λ·(0 − c_s·(1/2)·(−0.03)) = −1.5e-5 < 0: descent raises H_1.
    torch.testing.assert_close(grad[0, 0], torch.tensor(-1.5e-5, dtype=torch.float64), rtol=0, atol=1e-15)


# ---------------------------------------------------------------- phase weight and history


def test_phase_weight():
    assert epo_phase_weight(0, K=150) == 1.0
    # k = K/2 = 75: 1 − 0.2(1 − e^{−2}) = 1 − 0.2·0.864665 = 0.827067.
    assert abs(epo_phase_weight(75, K=150) - 0.827067) < 1e-6
    # k = 76: 0.8·e^{−3/75} = 0.8·0.960789 = 0.768631; k = 150 (and beyond): 0.8·e^{−3} = 0.039830.
    assert abs(epo_phase_weight(76, K=150) - 0.768631) < 1e-6
    assert abs(epo_phase_weight(150, K=150) - 0.039830) < 1e-6
    assert epo_phase_weight(400, K=150) == epo_phase_weight(150, K=150)
    assert epo_phase_weight(-5, K=150) == 1.0
    assert epo_phase_weight(1, K=1) == 0.8 * math.exp(-3.0)
    # β_k multiplies the penalty only.
    h = _h()
    _, m = epo_term(h, MASK, 1.0, EpoConfig(), step=76, agg_mode="token-mean")
    torch.testing.assert_close(m["epo/penalty_agg"], torch.tensor(0.025 * epo_phase_weight(76, K=150), dtype=torch.float64))


def test_history_cumulative_mean():
    hist = EpoHistory()
    assert hist.mean is None
    for value in (1.0, 2.0, 6.0):
        hist = epo_history_update(hist, value)
    assert hist.count == 3 and hist.mean == 3.0
    with pytest.raises(ValueError, match="finite"):
        epo_history_update(hist, float("nan"))


# ---------------------------------------------------------------- rank split


@pytest.mark.parametrize("mode", ["faithful", "differentiable"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_two_ranks_equal_whole_batch(mode, agg):
    gen = torch.Generator().manual_seed(0)
    h = torch.rand(6, 7, generator=gen, dtype=torch.float64) * 3
    lengths = torch.tensor([7, 1, 0, 4, 6, 2])
    mask = (torch.arange(7)[None, :] < lengths[:, None]).float()
    cfg = EpoConfig(mode=mode, kappa_l=0.4)
    whole_h = h.clone().requires_grad_()
    whole, _ = epo_term(whole_h, mask, 1.1, cfg, step=90, agg_mode=agg, l_norm=7.0)
    whole.backward()

    def on_rank(shard, reducer):
        hs, ms = shard
        hs = hs.clone().requires_grad_()
        share, _ = epo_term(hs, ms, 1.1, cfg, step=90, agg_mode=agg, norm=loss_norm(ms, reducer), l_norm=7.0)
        share.backward()
        return share.detach(), hs.grad

    results = run_split(on_rank, [(h[:2], mask[:2]), (h[2:], mask[2:])])
    torch.testing.assert_close(results[0][0] + results[1][0], whole.detach(), rtol=0, atol=1e-15)
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), whole_h.grad, rtol=0, atol=1e-15)


# ---------------------------------------------------------------- config and meta


def test_config():
    cfg = EpoConfig()
    values = (cfg.coef, cfg.smooth_coef, cfg.kappa_l, cfg.kappa_r, cfg.alpha, cfg.mode, cfg.phase_K)
    assert values == (0.001, 1.0, 0.0, 2.0, 0.05, "faithful", 150) and cfg.enable_smooth_weights
    for bad in ({"coef": -1.0}, {"kappa_l": 2.0}, {"mode": "soft"}, {"phase_K": 0}, {"alpha": -0.1}):
        with pytest.raises(ValueError, match="algorithm.epo"):
            EpoConfig(**bad)


def test_meta_wrong_value_fails():
    term, _ = epo_term(_h(), MASK, 1.0, SPEC_CFG, step=0, agg_mode="token-mean")
    # Without the corridor shift (−0.00175) and with a sign error on it (−0.001775): both must fail.
    for wrong in (-0.00175, -0.001775):
        with pytest.raises(AssertionError):
            torch.testing.assert_close(term, torch.tensor(wrong, dtype=torch.float64), rtol=0, atol=1e-7)
