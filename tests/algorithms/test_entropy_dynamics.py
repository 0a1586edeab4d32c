"""The entropy discriminator S and the predicted entropy change (arXiv 2602.03392)."""

import math

import pytest
import torch

from entropo.algorithms import diagnostics as d
from entropo.algorithms.reduce import LOCAL
from tests.fake_ranks import run_split

E1 = math.exp(-1.0)


def _tiny():
    """Two responses of two valid tokens + one padding (NaN garbage), as (log p, H, A):
    (0, 0.5, +1): S = 0.5            (−1, 0.5, +1): S = e^−1·(0.5 − 1) = −0.5/e
    (−2, 2, −1):  S = e^−2·0 = 0     (ln ½, ln 2, −1): S = ½·(ln 2 − ln 2) = 0"""
    nan = math.nan
    logp = torch.tensor([[0.0, -1.0, nan], [-2.0, math.log(0.5), nan]], dtype=torch.float64)
    h = torch.tensor([[0.5, 0.5, nan], [2.0, math.log(2.0), nan]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    return logp, h, adv, mask


def test_hand_computed():
    m = d.entropy_dynamics_metrics(*_tiny())
    s_bar = (0.5 - 0.5 * E1) / 4  # 0.0790
    # ΔĤ = −A(S − S̄): −(0.5 − S̄), (0.5/e + S̄), −S̄, −S̄; the sum is −0.5 + 0.5/e
    assert m["entropy_dynamics/predicted_dH"].item() == pytest.approx((-0.5 + 0.5 * E1) / 4, rel=1e-12)
    assert m["entropy_dynamics/predicted_dH_adv_pos"].item() == pytest.approx((-0.5 + 0.5 * E1 + 2 * s_bar) / 4)
    assert m["entropy_dynamics/predicted_dH_adv_neg"].item() == pytest.approx(-s_bar / 2)
    assert m["entropy_dynamics/s_mean"].item() == pytest.approx(s_bar, rel=1e-12)
    s = torch.tensor([0.5, -0.5 * E1, 0.0, 0.0], dtype=torch.float64)
    assert m["entropy_dynamics/s_std"].item() == pytest.approx(s.std(unbiased=False).item(), rel=1e-12)
    assert all(math.isfinite(v.item()) for v in m.values())  # the NaN padding is ignored


def test_is_minus_the_token_covariance_and_the_parts_add_up():
    torch.manual_seed(0)
    logp, h = -3 * torch.rand(5, 12), 2 * torch.rand(5, 12)
    adv = torch.randn(5, 1).expand(5, 12) + 0.3  # not centred: the identity still holds
    mask = (torch.rand(5, 12) > 0.3).float()
    m = d.entropy_dynamics_metrics(logp, h, adv, mask)
    v = mask.bool()
    s, a = d.entropy_discriminator(logp[v].double(), h[v].double()), adv[v].double()
    cov = ((s - s.mean()) * (a - a.mean())).mean()
    assert m["entropy_dynamics/predicted_dH"].item() == pytest.approx(-cov.item(), rel=1e-10)
    parts = m["entropy_dynamics/predicted_dH_adv_pos"] + m["entropy_dynamics/predicted_dH_adv_neg"]
    assert parts.item() == pytest.approx(m["entropy_dynamics/predicted_dH"].item(), rel=1e-12)
    # meta-test: the opposite sign is rejected
    assert m["entropy_dynamics/predicted_dH"].item() != pytest.approx(cov.item(), rel=1e-6)


def test_theorem_3_2_single_logit():
    # ΔH = −ε·S_k when only z_k moves by ε: first order, error O(ε²)
    torch.manual_seed(1)
    z = torch.randn(4, 11, dtype=torch.float64)
    logp = z.log_softmax(-1)
    h = -(logp.exp() * logp).sum(-1)
    k, eps = 3, 1e-5
    dz = torch.zeros_like(z)
    dz[:, k] = eps
    s_k = d.entropy_discriminator(logp[:, k], h)
    torch.testing.assert_close(d.predicted_entropy_change(z, dz), -eps * s_k, rtol=1e-10, atol=1e-18)
    # exact vs first order: the remainder is O(ε²) = 1e-10 in absolute terms
    torch.testing.assert_close(d.exact_entropy_change(z, dz), -eps * s_k, rtol=0, atol=10 * eps**2)


def test_theorem_3_3_sampled_token_step_and_the_vocabulary_baseline():
    # a step Δz_b = α·A·(1[b=a] − π_b) changes H by −α·A·(S_a − E_π[S]) to first order;
    # the first-order form agrees with the covariance identity to rounding
    torch.manual_seed(2)
    z = torch.randn(6, 13, dtype=torch.float64)
    a = torch.randint(0, 13, (6,))
    adv = torch.randn(6, dtype=torch.float64)
    alpha = 1e-5
    logp = z.log_softmax(-1)
    h = -(logp.exp() * logp).sum(-1)
    s_a = d.entropy_discriminator(logp.gather(-1, a[:, None]).squeeze(-1), h)
    pred = -alpha * adv * (s_a - d.expected_discriminator(z))
    delta = d.sampled_token_delta(z, a, adv, alpha)
    torch.testing.assert_close(d.predicted_entropy_change(z, delta), pred, rtol=1e-10, atol=1e-18)
    torch.testing.assert_close(d.exact_entropy_change(z, delta), pred, rtol=0, atol=10 * alpha**2)  # O(α²)
    # E_π[S] = Σ π_b·S_b (the Clip_V statistic N)
    direct = (logp.exp() * d.entropy_discriminator(logp, h[:, None])).sum(-1)
    torch.testing.assert_close(d.expected_discriminator(z), direct, rtol=1e-12, atol=1e-15)


def test_empty_scope_and_rank_split():
    logp, h, adv, _ = _tiny()
    m = d.entropy_dynamics_metrics(logp, h, adv, torch.zeros(2, 3))
    assert all(v.item() == 0.0 for v in m.values())
    torch.manual_seed(4)
    logp, h = -3 * torch.rand(7, 15), 2 * torch.rand(7, 15)
    adv, mask = torch.randn(7, 1).expand(7, 15), (torch.rand(7, 15) > 0.2).float()

    def run(rows, reducer):
        return d.entropy_dynamics_metrics(logp[rows], h[rows], adv[rows], mask[rows], reducer)

    whole = run(slice(0, 7), LOCAL)
    for part in run_split(run, [slice(0, 3), slice(3, 7)]):  # gathered: bitwise equal
        assert {k: v.item() for k, v in part.items()} == {k: v.item() for k, v in whole.items()}
