"""Entropy bonus and adaptive coefficient, reference-KL estimators (docs/algorithms.md §9)."""

from __future__ import annotations

import math

import pytest
import torch

from entropo.algorithms.aggregate import aggregate, loss_norm
from entropo.algorithms.configs.regularizers import KL_ESTIMATOR_NAMES, AdaptiveEntropyConfig
from entropo.algorithms.regularizers import (
    K3_MAX,
    KL_ESTIMATORS,
    adaptive_entropy_coef,
    entropy_bonus,
    kl_penalty,
)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """−Σ p log p over the last dim (a test-local reference, not the chunked kernel)."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


# ---------------------------------------------------------------- entropy bonus


def test_spec_entropy_bonus():
    # Uniform over 2 and over 4 tokens: H = [ln 2, ln 4] = [0.693147, 1.386294];
    # token-mean = 1.039721; with c_H = 0.01 the term is −0.010397.
    # −1e9 removes two vocabulary entries (p = 0 exactly, and 0·log p stays finite).
    logits = torch.tensor([[[0.0, 0.0, -1e9, -1e9], [0.0, 0.0, 0.0, 0.0]]])
    entropy = _entropy(logits)  # [1, 2]
    torch.testing.assert_close(entropy, torch.tensor([[math.log(2), math.log(4)]]))
    term, metrics = entropy_bonus(entropy, torch.ones(1, 2), 0.01, "token-mean")
    torch.testing.assert_close(term, torch.tensor(-0.010397), rtol=0, atol=1e-6)
    torch.testing.assert_close(metrics["actor/entropy_bonus"], torch.tensor(0.010397), rtol=0, atol=1e-6)


def test_entropy_bonus_gradient_passes_through():
    entropy = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    term, _ = entropy_bonus(entropy, mask, 0.1, "token-mean")
    term.backward()
    # ∂(−c·Σ mH/Σ m)/∂H = −c·m/Σ m = −0.1/3 on valid tokens, 0 on padding.
    torch.testing.assert_close(entropy.grad, -0.1 / 3 * mask)


def test_entropy_bonus_gradient_to_logits_gradcheck():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)

    def f(z):
        return entropy_bonus(_entropy(z), mask, 0.3, "seq-mean-token-mean")[0]

    assert torch.autograd.gradcheck(f, (logits,))
    f(logits).backward()
    assert logits.grad.abs().sum() > 0
    # Padding position (0, 2) gets no gradient.
    assert torch.equal(logits.grad[0, 2], torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize(
    "mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
)
def test_entropy_bonus_matches_aggregate_with_global_norm(mode):
    entropy = torch.rand(4, 5, generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(5)[None, :] < torch.tensor([[5], [3], [1], [0]])).float()
    norm = loss_norm(torch.ones(8, 5))  # a larger mini-batch's denominators
    term, _ = entropy_bonus(entropy, mask, 0.02, mode, norm, l_norm=5)
    expected = -0.02 * aggregate(entropy, mask, mode, norm, 5)
    torch.testing.assert_close(term, expected, rtol=0, atol=1e-7)


# ---------------------------------------------------------------- adaptive coefficient


def test_adaptive_coefficient_steps():
    cfg = AdaptiveEntropyConfig()  # δ = 0.005, H_tgt = 0.2, c ∈ [0, 1]
    coef, active = adaptive_entropy_coef(0.01, 0.15, cfg)  # below target: up, active
    assert active and coef == pytest.approx(0.015, abs=1e-12)
    coef, active = adaptive_entropy_coef(0.01, 0.35, cfg)  # above target: down, inactive
    assert not active and coef == pytest.approx(0.005, abs=1e-12)
    coef, active = adaptive_entropy_coef(0.01, 0.2, cfg)  # equal: TRL's ≤ → up, active
    assert active and coef == pytest.approx(0.015, abs=1e-12)


def test_adaptive_coefficient_clamps():
    cfg = AdaptiveEntropyConfig(delta=0.3, target=1.0, coef_min=0.1, coef_max=0.5)
    assert adaptive_entropy_coef(0.4, 0.5, cfg) == (0.5, True)
    assert adaptive_entropy_coef(0.2, 2.0, cfg) == (0.1, False)
    coef = 0.0
    for _ in range(5):  # a collapsed run: climbs to c_max and stays there
        coef, _ = adaptive_entropy_coef(coef, 0.0, cfg)
    assert coef == 0.5


def test_adaptive_config_validation():
    with pytest.raises(ValueError, match="coef_min"):
        AdaptiveEntropyConfig(coef_min=0.5, coef_max=0.1)
    with pytest.raises(ValueError, match="delta"):
        AdaptiveEntropyConfig(delta=-0.1)


# ---------------------------------------------------------------- reference KL

# Δ = log π_ref − log π_θ for (logp, ref_logp) = (−1, −2), (−2, −1), (−5, 0), (−0.3, −0.3):
#   Δ = −1, 1, 5, 0
#   k1 = −Δ      = 1, −1, −5, 0
#   k2 = ½Δ²     = 0.5, 0.5, 12.5, 0
#   k3 = e^Δ−Δ−1 = e^−1 = 0.367879, e − 2 = 0.718282, e^5 − 6 = 142.41 → capped at 10, 0
LOGP = torch.tensor([[-1.0, -2.0, -5.0, -0.3]])
REF = torch.tensor([[-2.0, -1.0, 0.0, -0.3]])
HAND = {
    "k1": [1.0, -1.0, -5.0, 0.0],
    "k2": [0.5, 0.5, 12.5, 0.0],
    "k3": [0.367879, 0.718282, 10.0, 0.0],
}


@pytest.mark.parametrize("estimator", sorted(HAND))
def test_kl_hand_values(estimator):
    kl = kl_penalty(LOGP, REF, estimator)
    torch.testing.assert_close(kl, torch.tensor([HAND[estimator]]), rtol=0, atol=1e-6)


def test_k3_gradient_wrt_logp():
    # ∂k3/∂logp = −(e^Δ − 1) = 1 − π_ref/π_θ: 1 − e^−1 = 0.632121, 1 − e = −1.718282;
    # 0 where the k3 ≤ 10 cap is active (Δ = 5) and 0 at Δ = 0.
    logp = LOGP.clone().requires_grad_(True)
    ref = REF.clone().requires_grad_(True)
    kl_penalty(logp, ref, "k3").sum().backward()
    torch.testing.assert_close(
        logp.grad, torch.tensor([[0.632121, -1.718282, 0.0, 0.0]]), rtol=0, atol=1e-6
    )
    assert ref.grad is None  # the reference is detached


def test_k3_gradcheck_unclamped_region():
    gen = torch.Generator().manual_seed(2)
    logp = (-torch.rand(3, 4, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    ref = -torch.rand(3, 4, generator=gen, dtype=torch.float64) * 2  # |Δ| < 2: no clamp active
    assert torch.autograd.gradcheck(lambda x: kl_penalty(x, ref, "k3"), (logp,))


def test_k3_extreme_log_ratios_are_finite():
    logp = torch.tensor([-200.0, 0.0], requires_grad=True)
    ref = torch.tensor([0.0, -200.0])
    kl = kl_penalty(logp, ref, "k3")
    # Δ = 200 → clamped to 20, e^20 − 21 → capped at 10; Δ = −200 → −20, e^−20 + 19 → 10.
    torch.testing.assert_close(kl, torch.tensor([K3_MAX, K3_MAX]))
    kl.sum().backward()
    assert torch.equal(logp.grad, torch.zeros(2))


def test_kl_estimators_are_unbiased_under_exact_expectation():
    # Σ_v p_v k(log p_v, log q_v) = KL(p‖q) for k1 and k3 (exact expectation under π_θ = p).
    gen = torch.Generator().manual_seed(3)
    logp = torch.randn(7, generator=gen, dtype=torch.float64).log_softmax(-1)
    logq = torch.randn(7, generator=gen, dtype=torch.float64).mul(0.3).log_softmax(-1)
    exact = (logp.exp() * (logp - logq)).sum()
    for estimator in ("k1", "k3"):
        expectation = (logp.exp() * kl_penalty(logp, logq, estimator)).sum()
        torch.testing.assert_close(expectation, exact, rtol=0, atol=1e-12, msg=estimator)


def test_unknown_estimator_lists_names():
    assert sorted(KL_ESTIMATORS) == ["k1", "k2", "k3"]
    assert tuple(KL_ESTIMATORS) == KL_ESTIMATOR_NAMES  # the names config validates against
    with pytest.raises(ValueError, match=r"'low_var_kl'.*\['k1', 'k2', 'k3'\]"):
        kl_penalty(LOGP, REF, "low_var_kl")


# ---------------------------------------------------------------- meta-tests


def test_meta_wrong_values_fail():
    kl = kl_penalty(LOGP, REF, "k3")
    # Unclamped k3 at Δ = 5 (142.41), and the hand case's bonus with the sign flipped, must both fail.
    with pytest.raises(AssertionError):
        torch.testing.assert_close(
            kl, torch.tensor([[0.367879, 0.718282, 142.413159, 0.0]]), rtol=0, atol=1e-6
        )
    term, _ = entropy_bonus(
        torch.tensor([[math.log(2), math.log(4)]]), torch.ones(1, 2), 0.01, "token-mean"
    )
    with pytest.raises(AssertionError):
        torch.testing.assert_close(term, torch.tensor(0.010397), rtol=0, atol=1e-6)
