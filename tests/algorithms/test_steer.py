"""STEER token weights (arXiv 2510.10150): hand-computed numbers, edge cases, loop reference, rank split, no gradient."""

from __future__ import annotations

import math

import pytest
import torch

from entropo.algorithms.configs.weights import SteerConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.reduce import LOCAL
from entropo.algorithms.registry import TOKEN_WEIGHTS
from entropo.algorithms.weights.steer import entropy_change_proxy, steer_weights
from tests.fake_ranks import run_split

# Hand case: A = [1, 1, −1, −1], p = q = [0.9, 0.2, 0.5, 0.05], H = [0.5, 2.0, 1.0, 3.0].
A = [1.0, 1.0, -1.0, -1.0]
P = [0.9, 0.2, 0.5, 0.05]
H = [0.5, 2.0, 1.0, 3.0]
# Ω = |A/q · p(1−p) · (ln p + H)| = |(1 − p)(ln p + H)| since p = q:
#   0.1·(−0.105361 + 0.5) = 0.039464;  0.8·(−1.609438 + 2) = 0.312450
#   0.5·(−0.693147 + 1) = 0.153426;    0.95·|−2.995732 + 3| = 0.004054
OMEGA = [abs((1 - p) * (math.log(p) + h)) for p, h in zip(P, H)]


def _inp(a=A, p=P, h=H, q=None, mask=None, reducer=LOCAL, dtype=torch.float64):
    logp = torch.tensor([p], dtype=dtype).log()
    old = logp.clone() if q is None else torch.tensor([q], dtype=dtype).log()
    mask = torch.ones_like(logp) if mask is None else mask
    return TokenLossInputs(logp, old, torch.tensor([a], dtype=dtype), mask,
                           old_entropy=torch.tensor([h], dtype=dtype), reducer=reducer)


def test_spec_l6_omega():
    omega = entropy_change_proxy(_inp())
    torch.testing.assert_close(omega[0], torch.tensor(OMEGA, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(omega[0], torch.tensor([0.039464, 0.312450, 0.153426, 0.004054], dtype=torch.float64),
                               atol=1e-6, rtol=0)  # 6-decimal hand values


def test_spec_l6_exponential():
    w, metrics = steer_weights(_inp(), SteerConfig(scheme="exponential", w_min=0.8))
    # κ = −ln 0.8 / max(Ω_max, 0.02) = 0.223144/0.312450 = 0.714175; w = clamp(exp(−κΩ), 0.8, 1)
    kappa = -math.log(0.8) / max(OMEGA)
    expected = [min(max(math.exp(-kappa * o), 0.8), 1.0) for o in OMEGA]
    torch.testing.assert_close(w[0], torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(w[0], torch.tensor([0.972209, 0.8, 0.896217, 0.997109], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    assert metrics["steer/weight_min"].item() == pytest.approx(0.8)
    assert metrics["steer/omega_max"].item() == pytest.approx(max(OMEGA))


def test_spec_l6_linear():
    w, _ = steer_weights(_inp(), SteerConfig(scheme="linear", w_min=0.8, w_max=1.2))
    # w = 1.2 − (Ω − Ω_min)·0.4/(Ω_max − Ω_min), Ω_min = 0.004054, Ω_max = 0.312450
    lo, hi = min(OMEGA), max(OMEGA)
    expected = [1.2 - (o - lo) * 0.4 / (hi - lo) for o in OMEGA]
    torch.testing.assert_close(w[0], torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(w[0], torch.tensor([1.154072, 0.8, 1.006259, 1.2], dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_weights_carry_no_gradient():
    inp = _inp()
    inp.logp.requires_grad_(True)
    w, metrics = steer_weights(inp, SteerConfig())
    assert not w.requires_grad
    assert all(not v.requires_grad for v in metrics.values())


def test_edge_cases():
    # Ω_max = Ω_min (one valid token): linear gives the midpoint.
    w, _ = steer_weights(_inp(mask=torch.tensor([[0, 1, 0, 0.0]])), SteerConfig(scheme="linear", w_min=0.8, w_max=1.2))
    assert w.tolist() == [[0.0, pytest.approx(1.0), 0.0, 0.0]]
    # Exponential with every Ω below 0.02: κ uses the floor 0.02, so weights stay near 1.
    # Ω = 0.004054 alone: w = 0.8^(0.004054/0.02) = 0.955775.
    w, _ = steer_weights(_inp(mask=torch.tensor([[0, 0, 0, 1.0]])), SteerConfig())
    assert w[0, 3].item() == pytest.approx(0.8 ** (OMEGA[3] / 0.02), abs=1e-12)
    # A non-finite Ω (here H = inf) is set to 0 → the largest weight.
    w, _ = steer_weights(_inp(h=[0.5, 2.0, 1.0, math.inf]), SteerConfig(scheme="linear"))
    assert w[0, 3].item() == pytest.approx(1.2)
    assert torch.isfinite(w).all()
    # All masked: zero weights, finite metrics.
    w, metrics = steer_weights(_inp(mask=torch.zeros(1, 4)), SteerConfig(scheme="linear"))
    assert torch.equal(w, torch.zeros(1, 4, dtype=torch.float64))
    assert all(torch.isfinite(v).all() for v in metrics.values())
    # p = 1 is clamped to 1 − 1e-8 (Ω stays finite); q = 0 is clamped to 1e-8.
    w, _ = steer_weights(_inp(p=[1.0, 0.2, 0.5, 0.05], q=[0.9, 0.0, 0.5, 0.05]), SteerConfig())
    assert torch.isfinite(w).all()


def test_masked_tokens_do_not_move_the_extremes():
    # A masked token with a huge Ω must not change the valid tokens' weights.
    mask = torch.tensor([[1, 1, 1, 1, 0.0]])
    inp = _inp(a=[*A, 50.0], p=[*P, 0.5], h=[*H, 9.0], mask=mask)
    w, _ = steer_weights(inp, SteerConfig(scheme="linear"))
    ref, _ = steer_weights(_inp(), SteerConfig(scheme="linear"))
    torch.testing.assert_close(w[:, :4], ref, atol=1e-12, rtol=0)
    assert w[0, 4].item() == 0.0


def _reference(logp, old_logp, adv, entropy, mask, cfg):
    """The code's compute_token_weights, written from the formula on the valid tokens."""
    p = logp.exp().clamp(1e-8, 1 - 1e-8)
    q = old_logp.exp().clamp(1e-8, 1.0)
    metric = adv / q * p * (1 - p) * (p.log() + entropy)
    metric = torch.where(torch.isfinite(metric), metric, 0.0).abs()
    v = metric[mask.bool()]
    if cfg.scheme == "linear":
        wv = (cfg.w_max - (v - v.min()) * (cfg.w_max - cfg.w_min) / (v.max() - v.min())).clamp(cfg.w_min, cfg.w_max)
    else:
        k = -math.log(cfg.w_min) / max(v.max().item(), 0.02)
        wv = torch.exp(-k * v).clamp(cfg.w_min, 1.0)
    out = torch.zeros_like(metric)
    out[mask.bool()] = wv
    return out


def _random_batch(seed, n=6, t=30):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=g, dtype=torch.float64) * 4
    old = logp + 0.1 * torch.randn(n, t, generator=g, dtype=torch.float64)
    adv = torch.randn(n, 1, generator=g, dtype=torch.float64).expand(n, t).contiguous()
    entropy = torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    mask = (torch.rand(n, t, generator=g) > 0.2).double()
    return logp, old, adv, entropy, mask


@pytest.mark.parametrize("scheme", ["linear", "exponential"])
def test_matches_reference_on_random_inputs(scheme):
    cfg = SteerConfig(scheme=scheme, w_min=0.8, w_max=1.2)
    for seed in range(5):
        logp, old, adv, entropy, mask = _random_batch(seed)
        w, _ = steer_weights(TokenLossInputs(logp, old, adv, mask, old_entropy=entropy), cfg)
        torch.testing.assert_close(w, _reference(logp, old, adv, entropy, mask, cfg), atol=1e-12, rtol=0)


@pytest.mark.parametrize("scheme", ["linear", "exponential"])
def test_rank_split_equals_whole_batch(scheme):
    logp, old, adv, entropy, mask = _random_batch(7)
    cfg = SteerConfig(scheme=scheme, stat_scope="global")

    def run(rows, reducer):
        inp = TokenLossInputs(logp[rows], old[rows], adv[rows], mask[rows], old_entropy=entropy[rows], reducer=reducer)
        return steer_weights(inp, cfg)[0]

    whole = run(slice(0, 6), LOCAL)
    parts = run_split(run, [slice(0, 1), slice(1, 3), slice(3, 6)])
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-12, rtol=0)
    # A shard with no valid token contributes nothing to the extremes.
    mask0 = mask.clone()
    mask0[:2] = 0
    parts = run_split(
        lambda rows, r: steer_weights(TokenLossInputs(logp[rows], old[rows], adv[rows], mask0[rows],
                                                       old_entropy=entropy[rows], reducer=r), cfg)[0],
        [slice(0, 2), slice(2, 6)],
    )
    whole0 = steer_weights(TokenLossInputs(logp, old, adv, mask0, old_entropy=entropy), cfg)[0]
    torch.testing.assert_close(torch.cat(parts), whole0, atol=1e-12, rtol=0)


def test_registered_and_validated():
    entry = TOKEN_WEIGHTS.get("steer")
    assert entry.fn is steer_weights and entry.config_cls is SteerConfig
    assert SteerConfig() == SteerConfig(scheme="exponential", w_min=0.8, w_max=1.2, stat_scope="global")
    with pytest.raises(ValueError, match="algorithm.steer.scheme"):
        SteerConfig(scheme="cubic")
    with pytest.raises(ValueError, match="algorithm.steer.w_min"):
        SteerConfig(w_min=0.0)
    with pytest.raises(ValueError, match="algorithm.steer.w_max"):
        SteerConfig(scheme="linear", w_min=0.9, w_max=0.8)
    with pytest.raises(KeyError, match="registered: steer"):
        TOKEN_WEIGHTS.get("steerr")
    with pytest.raises(ValueError, match="inputs.old_entropy"):
        steer_weights(TokenLossInputs(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1)),
                      SteerConfig())


def test_meta_a_wrong_value_fails():
    w, _ = steer_weights(_inp(), SteerConfig())
    with pytest.raises(AssertionError):
        torch.testing.assert_close(w[0], torch.tensor([0.972209, 0.8, 0.896217, 0.998109], dtype=torch.float64),
                                   atol=1e-6, rtol=0)
