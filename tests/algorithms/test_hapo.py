"""HAPO (temperature, advantage, clip): hand-computed numbers, edge cases, loop references, rank split, gradients."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from entropo.algorithms.advantages import grpo
from entropo.algorithms.configs.advantages import HapoAdvantageConfig
from entropo.algorithms.configs.losses import HapoClipConfig, PPOClipConfig
from entropo.algorithms.hapo import entropy_h_hat, hapo_advantage
from entropo.algorithms.hapo_temperature import adaptive_temperature
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.losses.hapo_clip import (
    adaptive_bounds_and_advantage,
    hapo_clip_loss,
    hapo_clip_select,
)
from entropo.algorithms.losses.ppo_clip import ppo_clip_loss
from entropo.algorithms.reduce import LOCAL
from entropo.algorithms.registry import ADVANTAGES, TOKEN_LOSSES
from tests.fake_ranks import run_split

SPEC_H = [0.01, 0.05, 0.2, 0.5, 1.0, 2.0]
# log H, sorted; the 0.8-quantile (nearest rank, position 0.8·5 = 4) is log 1.0 = 0, so μ = 0.
LOG_H = [math.log(h) for h in SPEC_H]
# σ = sqrt(mean(log² H)) = sqrt((21.2076 + 8.9744 + 2.5903 + 0.4805 + 0 + 0.4805)/6) = 2.371118
SIGMA = math.sqrt(sum(e * e for e in LOG_H) / 6)
# h = log H / σ; pos_max = log 2/σ, neg_min = log 0.01/σ, so ĥ = log H / log 2 (h > 0) and
# log H / |log 0.01| (h ≤ 0): [−1, −0.650515, −0.349485, −0.150515, 0, 1]
H_HAT_SIGNED = [e / abs(LOG_H[0]) for e in LOG_H[:5]] + [1.0]


def _h(values=SPEC_H, dtype=torch.float64):
    return torch.tensor([values], dtype=dtype)


# ------------------------------------------------------------- ĥ and the adaptive temperature


def test_spec_s2_statistics_and_h_hat():
    h_hat, stats = entropy_h_hat(_h(), torch.ones(1, 6), pivot_quantile=0.8, code_compat=False)
    assert stats.mu.item() == 0.0
    assert stats.sigma.item() == pytest.approx(SIGMA, abs=1e-12)
    assert stats.sigma.item() == pytest.approx(2.371118, abs=1e-6)
    torch.testing.assert_close(h_hat[0], torch.tensor(H_HAT_SIGNED, dtype=torch.float64), atol=1e-12, rtol=0)
    # Three-decimal hand values, hence the 5e-4 tolerance against these literal numbers.
    spec_h = torch.tensor([-1.942, -1.263, -0.679, -0.292, 0.0, 0.292], dtype=torch.float64)
    torch.testing.assert_close(torch.log(_h()[0]) / stats.sigma, spec_h, atol=5e-4, rtol=0)
    spec_signed = torch.tensor([-1, -0.651, -0.349, -0.151, 0, 1], dtype=torch.float64)
    torch.testing.assert_close(h_hat[0], spec_signed, atol=5e-4, rtol=0)
    assert stats.s_pos.item() == pytest.approx(SIGMA / math.log(2.0))
    assert stats.s_neg.item() == pytest.approx(SIGMA / math.log(0.01))  # the code's 1/neg_min < 0


def test_spec_s2_code_compat_is_non_negative():
    h_hat, _ = entropy_h_hat(_h(), torch.ones(1, 6), code_compat=True, pivot_quantile=0.8)
    expected = torch.tensor([abs(v) for v in H_HAT_SIGNED], dtype=torch.float64)
    torch.testing.assert_close(h_hat[0], expected, atol=1e-12, rtol=0)


def test_spec_s2_temperature():
    _, stats = entropy_h_hat(_h(), torch.ones(1, 6), pivot_quantile=0.8, code_compat=False)
    signed = adaptive_temperature(_h()[0], stats, base_T=1.0, tau=0.05, code_compat=False)
    compat = adaptive_temperature(_h()[0], stats, base_T=1.0, tau=0.05, code_compat=True)
    # h_t = log H/(σ + 1e-6) differs from h by a factor σ/(σ + 1e-6) = 1 − 4.2e-7, so T_t is
    # 1 ± 0.05·ĥ up to 2.1e-8.
    expected_signed = torch.tensor([1 + 0.05 * v for v in H_HAT_SIGNED], dtype=torch.float64)
    torch.testing.assert_close(signed, expected_signed, atol=1e-7, rtol=0)
    assert signed[5].item() == pytest.approx(1.05, abs=1e-7)  # ĥ = 1
    assert signed[0].item() == pytest.approx(0.95, abs=1e-7)  # ĥ = −1 (signed)
    assert compat[0].item() == pytest.approx(1.05, abs=1e-7)  # ĥ = +1 (code-compatible)
    assert (compat >= 1.0).all()
    # Step 1: no statistics yet, T_t = T.
    assert torch.equal(adaptive_temperature(_h()[0], None, base_T=0.7, tau=0.05, code_compat=False), torch.full((6,), 0.7, dtype=torch.float64))


def test_s2_clips_h_hat_to_unit_interval():
    _, stats = entropy_h_hat(_h(), torch.ones(1, 6), pivot_quantile=0.8, code_compat=False)
    t = adaptive_temperature(torch.tensor([50.0, 1e-9], dtype=torch.float64), stats, base_T=2.0, tau=0.1, code_compat=False)
    torch.testing.assert_close(t, torch.tensor([2.2, 1.8], dtype=torch.float64), atol=1e-12, rtol=0)


def test_h_hat_ignores_masked_tokens_and_zeroes_them():
    # A masked 1000.0 would move the quantile and σ; it must not.
    h = torch.tensor([[*SPEC_H, 1000.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0.0]])
    h_hat, stats = entropy_h_hat(h, mask, pivot_quantile=0.8, code_compat=False)
    assert stats.sigma.item() == pytest.approx(SIGMA, abs=1e-12)
    assert h_hat[0, 6].item() == 0.0
    torch.testing.assert_close(h_hat[0, :6], torch.tensor(H_HAT_SIGNED, dtype=torch.float64), atol=1e-12, rtol=0)


def test_h_hat_edge_cases():
    # All masked: μ = 0, ĥ = 0 everywhere, all finite.
    h_hat, stats = entropy_h_hat(_h(), torch.zeros(1, 6), pivot_quantile=0.8, code_compat=False)
    assert torch.equal(h_hat, torch.zeros(1, 6, dtype=torch.float64))
    assert stats.mu.item() == 0.0 and torch.isfinite(stats.s_pos) and torch.isfinite(stats.s_neg)
    # Ties: every entropy equal → h = 0 → ĥ = 0.
    h_hat, _ = entropy_h_hat(torch.full((2, 3), 0.7), torch.ones(2, 3), pivot_quantile=0.8, code_compat=False)
    assert torch.equal(h_hat, torch.zeros(2, 3))
    # No token above the pivot (q = 1: μ is the maximum): pos_max is clamped to 1e-8, every
    # ĥ ≤ 0, and the minimum is −1.
    h_hat, stats = entropy_h_hat(_h(), torch.ones(1, 6), pivot_quantile=1.0, code_compat=False)
    assert (h_hat <= 0).all() and h_hat.min().item() == pytest.approx(-1.0)
    assert stats.s_pos.item() == pytest.approx(1e8)
    # H = 0 is floored at 1e-8 before the log: finite.
    h_hat, _ = entropy_h_hat(torch.tensor([[0.0, 1.0, 2.0]]), torch.ones(1, 3), pivot_quantile=0.8, code_compat=False)
    assert torch.isfinite(h_hat).all()


def test_quantile_index_rounds_half_to_even():
    # N = 6, q = 0.5: position 0.5·5 = 2.5 → Python round → 2 (the code's torch_quantile
    # "nearest"), so μ = log(0.2), the third smallest.
    _, stats = entropy_h_hat(_h(), torch.ones(1, 6), pivot_quantile=0.5, code_compat=False)
    assert stats.mu.item() == pytest.approx(math.log(0.2))


def test_h_hat_rank_split_equals_whole_batch():
    torch.manual_seed(0)
    h = torch.rand(6, 20, dtype=torch.float64) * 3
    mask = (torch.rand(6, 20) > 0.3).double()
    whole, stats = entropy_h_hat(h, mask, pivot_quantile=0.8, code_compat=False)

    def shard(rows, reducer):
        return entropy_h_hat(h[rows], mask[rows], pivot_quantile=0.8, code_compat=False, reducer=reducer)

    parts = run_split(shard, [slice(0, 1), slice(1, 4), slice(4, 6)])
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), whole, atol=1e-12, rtol=0)
    for _, s in parts:
        for name in ("mu", "sigma", "s_pos", "s_neg"):
            torch.testing.assert_close(getattr(s, name), getattr(stats, name), atol=1e-12, rtol=0)


def _reference_h_hat(h, mask, q, code_compat):
    """The code's compute_entropy_h, written from the formula with torch.quantile."""
    m = mask.bool()
    e = torch.log(h.clamp(min=1e-8))
    mu = torch.quantile(e[m], q, interpolation="nearest")
    d = e - mu
    std = (d.pow(2)[m].sum() / m.sum()).clamp(min=1e-8).sqrt()
    d = d / std
    pos_max = d.masked_fill(~(m & (d > 0)), 0.0).max().clamp(min=1e-8)
    neg_min = d.masked_fill(~(m & (d < 0)), 0.0).min().clamp(max=-1e-8)
    s_neg = 1.0 / neg_min if code_compat else 1.0 / neg_min.abs()
    return torch.where(d > 0, d / pos_max, d * s_neg) * m


@pytest.mark.parametrize("code_compat", [False, True])
def test_h_hat_matches_reference_on_random_inputs(code_compat):
    torch.manual_seed(1)
    for _ in range(5):
        h = torch.rand(4, 33, dtype=torch.float64) ** 3 * 4
        mask = (torch.rand(4, 33) > 0.25).double()
        ours, _ = entropy_h_hat(h, mask, 0.8, code_compat)
        torch.testing.assert_close(ours, _reference_h_hat(h, mask, 0.8, code_compat), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------- adaptive clip


def test_spec_l5_bounds_zone_and_redistribution():
    cfg = HapoClipConfig()  # ε = 0.2, α_c = β_a = 1
    h_hat = torch.tensor([1.0, 1.0, H_HAT_SIGNED[1], H_HAT_SIGNED[1]], dtype=torch.float64)
    ratio = torch.tensor([1.0, 1.25, 1.0, 1.15], dtype=torch.float64)
    eps_low, eps_high, adv = adaptive_bounds_and_advantage(h_hat, torch.ones(4, dtype=torch.float64), ratio.log(), cfg)
    # ĥ = 1: ε_high' = 0.2·2 = 0.4, ε_low' = 0.2, Z = (0.9, 1.2); r = 1 → A' = 1; r = 1.25 → A' = 2
    # ĥ = −0.650515: ε_low' = 0.2·1.650515 = 0.330103, Z = (0.834949, 1.1);
    #   r = 1 → A' = 1 − 0.650515 = 0.349485; r = 1.15 → A' = 1
    torch.testing.assert_close(eps_high, torch.tensor([0.4, 0.4, 0.2, 0.2], dtype=torch.float64))
    torch.testing.assert_close(eps_low, torch.tensor([0.2, 0.2, 0.330103, 0.330103], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(adv, torch.tensor([1.0, 2.0, 0.349485, 1.0], dtype=torch.float64), atol=1e-6, rtol=0)
    assert eps_low[2].item() == pytest.approx(0.3302, abs=1e-4)  # the hand value, rounded to 4 decimals


def test_spec_l5_loss_uses_the_adapted_bounds():
    # One sequence with the hand case's entropies; log r chosen per token, A = 1 except where noted.
    r = [1.0, 1.15, 1.0, 1.0, 1.0, 1.25]
    a = [1.0, 1.0, -1.0, 1.0, 1.0, 1.0]
    old = torch.tensor([[-math.log(v) for v in r]])
    inp = TokenLossInputs(torch.zeros(1, 6), old, torch.tensor([a]), torch.ones(1, 6), entropy=_h(dtype=torch.float32))
    loss, metrics = hapo_clip_loss(inp, HapoClipConfig())
    # token 0 (ĥ = −1, r = 1 in Z): A' = 0 → ℓ = 0
    # token 1 (ĥ = −0.650515, r = 1.15 outside Z = (0.835, 1.1)): A' = 1 → ℓ = −1.15
    # token 2 (ĥ = −0.349485, A = −1, r = 1 in Z): A' = −0.650515 → ℓ = 0.650515
    # token 5 (ĥ = 1, r = 1.25 outside Z = (0.9, 1.2)): A' = 2, 1.25 < 1.4 → ℓ = −2.5
    expected = [0.0, -1.15, 1 - 0.349485, -(1 - 0.150515), -1.0, -2.5]
    torch.testing.assert_close(loss[0], torch.tensor(expected), atol=1e-5, rtol=0)  # fp32 inputs
    assert metrics["hapo/h_pos_frac"].item() == pytest.approx(1 / 6)
    assert metrics["hapo/adv_changed_frac"].item() == pytest.approx(4 / 6)  # tokens 0, 2, 3, 5


def test_l5_widened_lower_bound_and_dual_clip():
    # ĥ = −0.650515, A = −1, r = 0.7: outside Z → A' = −1; lower bound 1 − 0.330103 = 0.669897,
    # so r = 0.7 is not clipped: ℓ = 0.7 (plain PPO with ε_low = 0.2 would give 0.8).
    h_hat = torch.tensor([[H_HAT_SIGNED[1], 1.0]])
    log_r = torch.tensor([[math.log(0.7), math.log(30.0)]])
    inp = TokenLossInputs(log_r, torch.zeros(1, 2), torch.tensor([[-1.0, -1.0]]), torch.ones(1, 2), selected=h_hat)
    loss, _ = hapo_clip_loss(inp, HapoClipConfig())
    assert loss[0, 0].item() == pytest.approx(0.7, abs=1e-6)
    # ĥ = 1, A = −1, r = 30 outside Z: A' = −2 → max(60, 2·1.4) = 60, dual clip: min(60, 2·10) = 20
    assert loss[0, 1].item() == pytest.approx(20.0, abs=1e-5)


def test_l5_code_compat_only_widens_eps_high():
    inp = TokenLossInputs(torch.zeros(1, 6), torch.zeros(1, 6), torch.ones(1, 6), torch.ones(1, 6), entropy=_h(dtype=torch.float32))
    h_hat, _ = hapo_clip_select(inp, HapoClipConfig(code_compat=True))
    eps_low, eps_high, _ = adaptive_bounds_and_advantage(h_hat, inp.advantages, torch.zeros(1, 6), HapoClipConfig())
    assert torch.equal(eps_low, torch.full((1, 6), 0.2))
    assert (eps_high >= 0.2).all() and eps_high.max().item() == pytest.approx(0.4)


def test_l5_constant_entropy_is_plain_ppo():
    # Ties: ĥ = 0 everywhere → ε' = ε, A' = A: the loss is ppo_clip's with c = 10.
    torch.manual_seed(2)
    logp = -torch.rand(3, 8)
    old = logp + 0.3 * torch.randn(3, 8)
    adv = torch.randn(3, 1).expand(3, 8).contiguous()
    inp = TokenLossInputs(logp, old, adv, torch.ones(3, 8), entropy=torch.full((3, 8), 1.3))
    ours, _ = hapo_clip_loss(inp, HapoClipConfig())
    ppo, _ = ppo_clip_loss(inp, PPOClipConfig(eps_low=0.2, eps_high=0.2, dual_clip_c=10.0))
    torch.testing.assert_close(ours, ppo, atol=1e-7, rtol=0)


def test_l5_all_masked_is_finite():
    inp = TokenLossInputs(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), entropy=torch.rand(2, 3))
    loss, metrics = hapo_clip_loss(inp, HapoClipConfig())
    assert torch.isfinite(loss).all()
    assert all(torch.isfinite(v).all() for v in metrics.values())


def test_l5_gradient_flows_through_the_ratio_only():
    entropy = _h(dtype=torch.float32).requires_grad_(True)
    logp = torch.zeros(1, 6, requires_grad=True)
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, -math.log(1.25)]])
    inp = TokenLossInputs(logp, old, torch.ones(1, 6), torch.ones(1, 6), entropy=entropy)
    loss, _ = hapo_clip_loss(inp, HapoClipConfig())
    g_logp, g_h = torch.autograd.grad(loss.sum(), [logp, entropy], allow_unused=True)
    assert g_h is None  # ĥ carries no gradient
    # unclipped tokens: d(−A'·r)/dlog π_θ = −A'·r; A' = [0, 0.349485, 0.650515, 0.849485, 1, 2]
    expected = torch.tensor([[0.0, -0.349485, -0.650515, -0.849485, -1.0, -2.5]])
    torch.testing.assert_close(g_logp, expected, atol=1e-5, rtol=0)


def test_l5_global_scope_selection_matches_rank_split():
    torch.manual_seed(3)
    n, t = 6, 16
    entropy = torch.rand(n, t) * 2
    logp = -torch.rand(n, t)
    old = logp + 0.2 * torch.randn(n, t)
    adv = torch.randn(n, 1).expand(n, t).contiguous()
    mask = (torch.rand(n, t) > 0.2).float()
    cfg = HapoClipConfig(stat_scope="global")

    def run(rows, reducer):
        inp = TokenLossInputs(logp[rows], old[rows], adv[rows], mask[rows], entropy=entropy[rows], reducer=reducer)
        h_hat, _ = hapo_clip_select(inp, cfg)
        return hapo_clip_loss(TokenLossInputs(logp[rows], old[rows], adv[rows], mask[rows], selected=h_hat), cfg)[0]

    whole = run(slice(0, n), LOCAL)
    parts = run_split(run, [slice(0, 2), slice(2, n)])
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-6, rtol=0)
    # In micro scope each shard has its own statistics: the result differs.
    micro = torch.cat([run(slice(0, 2), LOCAL), run(slice(2, n), LOCAL)])
    assert not torch.allclose(micro, whole)


def test_hapo_clip_is_registered_and_validated():
    entry = TOKEN_LOSSES.get("hapo_clip")
    assert entry.config_cls is HapoClipConfig and entry.selector is hapo_clip_select
    with pytest.raises(ValueError, match="algorithm.hapo_clip.entropy_pivot"):
        HapoClipConfig(entropy_pivot=1.5)
    with pytest.raises(ValueError, match="algorithm.hapo_clip.dual_clip_c"):
        HapoClipConfig(dual_clip_c=1.0)
    with pytest.raises(ValueError, match="algorithm.hapo_clip.stat_scope"):
        HapoClipConfig(stat_scope="group")
    with pytest.raises(ValueError, match="inputs.entropy"):
        hapo_clip_loss(TokenLossInputs(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1)), HapoClipConfig())


# ------------------------------------------------------------------- token-level advantage


def test_spec_a3_token_weighted_group():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1.0]])
    adv, metrics = hapo_advantage(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), mask=mask)
    # μ_tok = (2·1 + 4·0)/6 = 1/3; σ_tok = sqrt((2·(2/3)² + 4·(1/3)²)/6) = 0.471405
    # A = (2/3)/(σ + 1e-6) = 1.414211, (−1/3)/(σ + 1e-6) = −0.707105
    sigma = math.sqrt((2 * (2 / 3) ** 2 + 4 * (1 / 3) ** 2) / 6)
    assert sigma == pytest.approx(0.471405, abs=1e-6)
    torch.testing.assert_close(adv, torch.tensor([(2 / 3) / (sigma + 1e-6), (-1 / 3) / (sigma + 1e-6)]), atol=1e-6, rtol=0)
    torch.testing.assert_close(adv, torch.tensor([1.414211, -0.707105]), atol=2e-6, rtol=0)  # 6-decimal hand values
    assert metrics["adv/hapo_fallback_frac"].item() == 0.0


def test_a3_falls_back_to_grpo_per_group():
    # Group 0: lengths [1, 100], rewards [1, 0]: p = 1/101 of the tokens have R = 1, σ_tok =
    # sqrt(p(1 − p)), A_0 = (1 − p)/σ_tok = sqrt((1 − p)/p) = 10 ≥ 5 → GRPO: ±0.5/0.707107.
    # Group 1: the hand case's group, no fallback.
    mask = torch.zeros(4, 100)
    mask[0, :1] = 1
    mask[1, :100] = 1
    mask[2, :2] = 1
    mask[3, :4] = 1
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    ids = torch.tensor([0, 0, 1, 1])
    adv, metrics = hapo_advantage(rewards, ids, mask=mask)
    g, _ = grpo(rewards, ids)
    torch.testing.assert_close(adv[:2], g[:2])
    torch.testing.assert_close(adv[:2], torch.tensor([0.707106, -0.707106]), atol=1e-5, rtol=0)
    torch.testing.assert_close(adv[2:], torch.tensor([1.414211, -0.707105]), atol=2e-6, rtol=0)
    assert metrics["adv/hapo_fallback_frac"].item() == 0.5


def test_a3_edge_cases():
    # Constant group → A = 0 (no fallback: every |A| is 0); singleton → A = 0.
    mask = torch.ones(3, 5)
    adv, _ = hapo_advantage(torch.tensor([1.0, 1.0, 0.7]), torch.tensor([0, 0, 1]), mask=mask)
    assert adv.tolist() == [0.0, 0.0, 0.0]
    # A zero-length response has weight 0 and cannot trigger the fallback.
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0.0]])
    adv, metrics = hapo_advantage(torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0, 0, 0]), mask=mask)
    assert metrics["adv/hapo_fallback_frac"].item() == 0.0
    mu = 2 / 5
    sigma = math.sqrt((2 * 0.6**2 + 3 * 0.4**2) / 5)
    assert adv[0].item() == pytest.approx((1 - mu) / (sigma + 1e-6), abs=1e-6)
    with pytest.raises(ValueError, match="token mask"):
        hapo_advantage(torch.tensor([1.0]), torch.tensor([0]))


def _reference_a3(rewards, ids, lengths, eps=1e-6):
    """Loop reference from the formula, in Python floats, with the GRPO fallback."""
    groups = defaultdict(list)
    for i, g in enumerate(ids):
        groups[g].append(i)
    out = [0.0] * len(rewards)
    for members in groups.values():
        w = sum(lengths[i] for i in members)
        mu = sum(lengths[i] * rewards[i] for i in members) / w
        sd = math.sqrt(sum(lengths[i] * (rewards[i] - mu) ** 2 for i in members) / w)
        a = {i: (rewards[i] - mu) / (sd + eps) for i in members}
        if any(abs(a[i]) >= 5 for i in members):
            rs = [rewards[i] for i in members]
            m = sum(rs) / len(rs)
            std = math.sqrt(sum((r - m) ** 2 for r in rs) / (len(rs) - 1)) if len(rs) > 1 else 1.0
            a = {i: (rewards[i] - (m if len(rs) > 1 else 0.0)) / (std + eps) for i in members}
        for i in members:
            out[i] = a[i]
    return out


def test_a3_matches_loop_reference():
    torch.manual_seed(4)
    for _ in range(10):
        n = 24
        ids = torch.randint(0, 5, (n,))
        rewards = torch.randint(0, 2, (n,)).double() + 0.1 * torch.rand(n, dtype=torch.float64)
        lengths = torch.randint(1, 30, (n,))
        mask = (torch.arange(30)[None] < lengths[:, None]).double()
        ours, _ = hapo_advantage(rewards, ids, mask=mask)
        ref = _reference_a3(rewards.tolist(), ids.tolist(), lengths.tolist())
        torch.testing.assert_close(ours, torch.tensor(ref, dtype=torch.float64), atol=1e-9, rtol=0)


def test_a3_is_registered():
    entry = ADVANTAGES.get("hapo")
    assert entry.fn is hapo_advantage and entry.config_cls is HapoAdvantageConfig
    with pytest.raises(ValueError, match="algorithm.hapo.eps"):
        HapoAdvantageConfig(eps=0.0)


def test_meta_a_wrong_value_fails():
    h_hat, _ = entropy_h_hat(_h(), torch.ones(1, 6), pivot_quantile=0.8, code_compat=False)
    wrong = torch.tensor(H_HAT_SIGNED, dtype=torch.float64)
    wrong[1] = -0.6495  # off by 1e-3
    with pytest.raises(AssertionError):
        torch.testing.assert_close(h_hat[0], wrong, atol=1e-6, rtol=0)
