"""Lp-Reg (arXiv 2510.03222): min-p proxy, selection quirk, k3, gradients, loop reference, rank split."""

from __future__ import annotations

import math

import pytest
import torch

from entropo.algorithms.configs.losses import LpRegConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.losses.lp_reg import (
    MINP_FILTERED_LOGIT,
    lp_reg_loss,
    lp_reg_select,
    minp_proxy_logprobs,
)
from entropo.algorithms.reduce import LOCAL
from entropo.algorithms.registry import TOKEN_LOSSES
from tests.fake_ranks import run_split

PI_OLD = [0.5, 0.3, 0.15, 0.04, 0.01]
# κ = 0.05: threshold 0.05·0.5 = 0.025 drops 0.01; the rest renormalised by 0.99:
# [0.505051, 0.303030, 0.151515, 0.040404, 0]
PROXY = [0.5 / 0.99, 0.3 / 0.99, 0.15 / 0.99, 0.04 / 0.99, 0.0]
# Sampled token 3 with π_θ = 0.03: Δ = ln(0.040404/0.03) = 0.297733; k3 = e^Δ − Δ − 1 = 0.049069
DELTA = math.log(0.04 / 0.99 / 0.03)
K3 = math.exp(DELTA) - DELTA - 1


def test_spec_l8_proxy():
    logits = torch.tensor([PI_OLD], dtype=torch.float64).log().expand(5, 5).contiguous()  # raw logits
    logp = minp_proxy_logprobs(logits, torch.arange(5), kappa=0.05)
    torch.testing.assert_close(logp.exp(), torch.tensor(PROXY, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(logp.exp(), torch.tensor([0.505051, 0.303030, 0.151515, 0.040404, 0.0],
                                                        dtype=torch.float64), atol=1e-6, rtol=0)
    # The filtered token's logit is −1e4: log π_proxy = −1e4 − lse, lse = log(Σ kept p) = log 0.99.
    assert logp[4].item() == pytest.approx(MINP_FILTERED_LOGIT - math.log(0.99), abs=1e-9)


def test_proxy_filters_on_raw_logits_then_applies_temperature():
    # Raw logits, T = 2: the filter keeps the same set as at T = 1 (p ≥ κ·max p on raw logits);
    # the kept logits are divided by T before renormalising.
    z = torch.tensor([[2.0, 1.0, -2.0]], dtype=torch.float64)  # raw p ∝ [e², e, e⁻²]; e⁻⁴ < 0.05
    logp = minp_proxy_logprobs(z.expand(3, 3).contiguous(), torch.arange(3), kappa=0.05, temperature=2.0)
    kept = torch.tensor([1.0, 0.5], dtype=torch.float64)  # z/T of the kept tokens
    torch.testing.assert_close(logp[:2], kept - torch.logsumexp(kept, 0), atol=1e-12, rtol=0)
    assert logp[2].item() < -4000  # ≈ −1e4/2: outside the support at any temperature


def test_proxy_chunking_layouts_and_dtypes():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g) * 3
    labels = torch.randint(0, 50, (3, 7), generator=g)
    whole = minp_proxy_logprobs(logits, labels, 0.02, chunk_size=1000)
    torch.testing.assert_close(minp_proxy_logprobs(logits, labels, 0.02, chunk_size=2), whole, atol=0, rtol=0)
    # A non-contiguous slice (the usual logits[:, :-1]) gives the same values as a copy.
    sliced = minp_proxy_logprobs(logits[:, :-1], labels[:, :-1], 0.02, chunk_size=4)
    torch.testing.assert_close(sliced, whole[:, :-1], atol=0, rtol=0)
    # bf16 logits are upcast: the output is fp32. bf16 keeps 8 mantissa bits, so logits of size
    # ~10 move by up to 0.03 and log-probs by about twice that: hence atol 0.1 against fp32.
    out = minp_proxy_logprobs(logits.bfloat16(), labels, 0.02)
    assert out.dtype == torch.float32
    kept = whole > -100
    torch.testing.assert_close(out[kept], whole[kept], atol=1e-1, rtol=1e-2)
    # No gradient.
    assert not minp_proxy_logprobs(logits.requires_grad_(True), labels, 0.02).requires_grad


def _spec_batch(rho_neg=1.0):
    """Two negative tokens (n = ⌊1.0·2⌋ = 2 > 1, both selected) and one positive.

    token 0: the hand case's token, π_θ = π_old = 0.03 (r = 1) < π_proxy = 0.040404 → regularised
    token 1: π_θ = π_old = 0.5 > π_proxy = 0.3 → selected but not regularised
    token 2: A = +1, π_θ = 0.001 (lowest) but positive → never selected
    """
    logp = torch.tensor([[math.log(0.03), math.log(0.5), math.log(0.001)]], dtype=torch.float64)
    proxy = torch.tensor([[math.log(PROXY[3]), math.log(0.3), math.log(0.5)]], dtype=torch.float64)
    adv = torch.tensor([[-1.0, -1.0, 1.0]], dtype=torch.float64)
    return logp, proxy, adv, LpRegConfig(rho_neg=rho_neg)


def test_spec_l8_loss_and_gradient():
    logp, proxy, adv, cfg = _spec_batch()
    lp = logp.clone().requires_grad_(True)
    inp = TokenLossInputs(lp, logp.clone(), adv, torch.ones(1, 3), proxy_logp=proxy)
    loss, metrics = lp_reg_loss(inp, cfg)
    # token 0: ℓ = −A·r + β·k3 = 1 + 0.049069; token 1: max(1·1, 1·clip(1, 0, 10)) = 1; token 2: −1
    torch.testing.assert_close(loss[0], torch.tensor([1 + K3, 1.0, -1.0], dtype=torch.float64), atol=1e-12, rtol=0)
    assert loss[0, 0].item() == pytest.approx(1.049069, abs=1e-6)
    assert metrics["lp_reg/reg_count"].item() == 1.0
    assert metrics["lp_reg/selected_frac"].item() == pytest.approx(2 / 3)
    assert metrics["lp_reg/k3_mean"].item() == pytest.approx(K3)
    assert metrics["lp_reg/proxy_prob_mean"].item() == pytest.approx(PROXY[3])
    loss.sum().backward()
    # token 0 gets gradient from both terms: d(−A·r)/dlog π_θ = −A·r = 1 and
    # d k3/dlog π_θ = 1 − e^Δ = 1 − 1.346801 → 0.653199; tokens 1, 2: −A·r = 1, −1.
    expected = torch.tensor([[1 + 1 - math.exp(DELTA), 1.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(lp.grad, expected, atol=1e-12, rtol=0)
    assert lp.grad[0, 0].item() == pytest.approx(0.653199, abs=1e-6)


def test_n_at_most_one_quirk():
    # 150 negative tokens, ρ = 0.01: n = max(1, ⌊1.5⌋) = 1 → no selection at all (logged);
    # 200: n = 2 → the two lowest log π_θ are selected.
    for n_neg, expected in ((150, 0), (200, 2)):
        logp = -torch.arange(n_neg, dtype=torch.float64)[None] / 10
        inp = TokenLossInputs(logp, logp, -torch.ones(1, n_neg, dtype=torch.float64), torch.ones(1, n_neg),
                              proxy_logp=torch.zeros(1, n_neg, dtype=torch.float64))
        selected, metrics = lp_reg_select(inp, LpRegConfig(rho_neg=0.01))
        assert int(selected.sum()) == expected
        assert metrics["lp_reg/skipped_small_n"].item() == float(expected == 0)
        if expected:
            assert selected[0, -2:].all()  # the lowest log π_θ are at the end
    # A single negative token is never regularised, even with ρ = 1.
    logp, proxy, adv, cfg = _spec_batch()
    inp = TokenLossInputs(logp, logp, adv, torch.tensor([[1.0, 0.0, 1.0]]), proxy_logp=proxy)
    loss, metrics = lp_reg_loss(inp, cfg)
    assert metrics["lp_reg/reg_count"].item() == 0.0 and loss[0, 0].item() == pytest.approx(1.0)


def test_selection_ignores_masked_and_positive_tokens():
    logp = torch.tensor([[-9.0, -8.0, -1.0, -2.0, -3.0]])
    adv = torch.tensor([[-1.0, 1.0, -1.0, -1.0, -1.0]])
    mask = torch.tensor([[0, 1, 1, 1, 1.0]])  # the lowest (−9) is masked, −8 is positive
    inp = TokenLossInputs(logp, logp, adv, mask, proxy_logp=torch.zeros(1, 5))
    selected, _ = lp_reg_select(inp, LpRegConfig(rho_neg=0.7))  # n = ⌊0.7·3⌋ = 2
    assert selected.tolist() == [[False, False, False, True, True]]


def test_regularised_tokens_lose_their_clipping_and_k3_is_capped():
    # A = −1, r = 0.5, ε = 0.2: the base surrogate is clipped at 0.8 (no gradient); a regularised
    # token uses −A·r = 0.5 with gradient.
    logp = torch.tensor([[math.log(0.05), math.log(0.05)]], dtype=torch.float64)
    old = logp - math.log(0.5)
    proxy = torch.tensor([[math.log(0.06), math.log(0.06)]], dtype=torch.float64)
    adv = -torch.ones(1, 2, dtype=torch.float64)
    cfg = LpRegConfig(rho_neg=1.0, eps_low=0.2, eps_high=0.2)
    lp = logp.clone().requires_grad_(True)
    sel = torch.tensor([[True, False]])
    loss, _ = lp_reg_loss(TokenLossInputs(lp, old, adv, torch.ones(1, 2), selected=sel, proxy_logp=proxy), cfg)
    d = math.log(0.06 / 0.05)
    assert loss[0, 0].item() == pytest.approx(0.5 + math.exp(d) - d - 1)
    assert loss[0, 1].item() == pytest.approx(0.8)
    loss.sum().backward()
    assert lp.grad[0, 0].item() == pytest.approx(0.5 + 1 - math.exp(d)) and lp.grad[0, 1].item() == 0.0
    # Δ = 3 > 2.61: k3 = e³ − 4 = 16.1 is capped at 10 and its gradient is 0, leaving −A·r.
    lp = torch.tensor([[math.log(0.01), 0.0]], dtype=torch.float64, requires_grad=True)
    proxy = torch.tensor([[math.log(0.01) + 3.0, 0.0]], dtype=torch.float64)
    loss, _ = lp_reg_loss(TokenLossInputs(lp, lp.detach(), adv, torch.ones(1, 2), selected=sel, proxy_logp=proxy), cfg)
    assert loss[0, 0].item() == pytest.approx(1.0 + 10.0)
    loss[0, 0].backward()
    assert lp.grad[0, 0].item() == pytest.approx(1.0)


def test_filtered_sampled_token_is_never_regularised():
    # π_proxy ≈ e^−1e4: log π_θ < log π_proxy cannot hold; logged as outside the support.
    logp = torch.tensor([[-5.0, -6.0]])
    inp = TokenLossInputs(logp, logp, -torch.ones(1, 2), torch.ones(1, 2), proxy_logp=torch.full((1, 2), -1e4))
    loss, metrics = lp_reg_loss(inp, LpRegConfig(rho_neg=1.0))
    assert metrics["lp_reg/reg_count"].item() == 0.0
    assert metrics["lp_reg/outside_support_frac"].item() == 1.0
    assert torch.isfinite(loss).all()


def _reference(logp, old, proxy, adv, mask, cfg):
    """The code's compute_policy_loss_lp_reg (negative branch), written from the formula."""
    ratio = torch.exp(logp - old)
    base = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - cfg.eps_low, 1 + cfg.eps_high))
    out = base.clone()
    flat_valid = mask.reshape(-1).bool().nonzero().squeeze(-1)
    neg = flat_valid[adv.reshape(-1)[flat_valid] < 0]
    k = max(1, int(len(neg) * cfg.rho_neg))
    if len(neg) and k > 1:
        idx = neg[logp.reshape(-1)[neg].topk(k, largest=False).indices]
        for i in idx.tolist():
            b, t = divmod(i, logp.shape[1])
            if logp[b, t] < proxy[b, t]:
                kl = proxy[b, t] - logp[b, t]
                out[b, t] = -adv[b, t] * ratio[b, t] + cfg.kl_coef * torch.clamp(kl.exp() - kl - 1, max=10)
    return out


def _random_batch(seed, n=6, t=40):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=g, dtype=torch.float64) * 6
    old = logp + 0.2 * torch.randn(n, t, generator=g, dtype=torch.float64)
    proxy = logp + torch.randn(n, t, generator=g, dtype=torch.float64)
    adv = torch.randn(n, 1, generator=g, dtype=torch.float64).expand(n, t).contiguous()
    mask = (torch.rand(n, t, generator=g) > 0.2).double()
    return logp, old, proxy, adv, mask


def test_matches_reference_on_random_inputs():
    cfg = LpRegConfig(rho_neg=0.05)
    for seed in range(5):
        logp, old, proxy, adv, mask = _random_batch(seed)
        loss, _ = lp_reg_loss(TokenLossInputs(logp, old, adv, mask, proxy_logp=proxy), cfg)
        ref = _reference(logp, old, proxy, adv, mask, cfg)
        torch.testing.assert_close(loss * mask, ref * mask, atol=1e-12, rtol=0)


def test_rank_split_selection_equals_whole_batch():
    logp, old, proxy, adv, mask = _random_batch(11)
    cfg = LpRegConfig(rho_neg=0.05, stat_scope="global")

    def run(rows, reducer):
        inp = TokenLossInputs(logp[rows], old[rows], adv[rows], mask[rows], proxy_logp=proxy[rows], reducer=reducer)
        selected, _ = lp_reg_select(inp, cfg)
        loss, _ = lp_reg_loss(TokenLossInputs(logp[rows], old[rows], adv[rows], mask[rows],
                                              selected=selected, proxy_logp=proxy[rows]), cfg)
        return selected, loss

    whole_sel, whole_loss = run(slice(0, 6), LOCAL)
    parts = run_split(run, [slice(0, 2), slice(2, 3), slice(3, 6)])
    assert whole_sel.sum() > 1
    assert torch.equal(torch.cat([p[0] for p in parts]), whole_sel)
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), whole_loss, atol=0, rtol=0)


def test_registered_and_validated():
    entry = TOKEN_LOSSES.get("lp_reg")
    assert entry.config_cls is LpRegConfig and entry.selector is lp_reg_select
    assert LpRegConfig() == LpRegConfig(kappa=0.02, rho_neg=0.01, kl_coef=1.0, eps_low=1.0, eps_high=9.0,
                                        stat_scope="global")
    with pytest.raises(ValueError, match="algorithm.lp_reg.kappa"):
        LpRegConfig(kappa=0.0)
    with pytest.raises(ValueError, match="algorithm.lp_reg.rho_neg"):
        LpRegConfig(rho_neg=1.5)
    with pytest.raises(ValueError, match="algorithm.lp_reg.stat_scope"):
        LpRegConfig(stat_scope="step")
    with pytest.raises(ValueError, match="inputs.proxy_logp"):
        lp_reg_loss(TokenLossInputs(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1)),
                    LpRegConfig())


def test_meta_a_wrong_value_fails():
    logp, proxy, adv, cfg = _spec_batch()
    loss, _ = lp_reg_loss(TokenLossInputs(logp, logp, adv, torch.ones(1, 3), proxy_logp=proxy), cfg)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(loss[0, 0], torch.tensor(1.049169, dtype=torch.float64), atol=1e-6, rtol=0)
