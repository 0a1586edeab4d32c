"""Tests for entropy diagnostics (docs/algorithms.md §12): hand cases, rank splits."""

from __future__ import annotations

import math

import pytest
import torch

from entropo.algorithms.diagnostics import (
    LawFit,
    covariance_metrics,
    entropy_summary,
    exact_entropy_change,
    extrapolation_error,
    fit_entropy_change,
    fit_entropy_law,
    law_metrics,
    law_predict,
    law_slope,
    logprob_gap,
    natural_pg_delta,
    phase_split_means,
    predicted_entropy_change,
    quantile,
    sampled_token_delta,
    token_covariance,
    vanilla_pg_delta,
)
from entropo.algorithms.reduce import LOCAL
from tests.fake_ranks import run_split

F64 = torch.float64


def close(actual, expected, atol=1e-12):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=F64), torch.as_tensor(expected, dtype=F64), atol=atol, rtol=0
    )


# The Clip-Cov hand batch: mean A = 0, mean log π = −6.8/6 = −1.133333, so
# Cov = A·(log π + 6.8/6) = [[31, −26, 19], [−28, 56, −4]] / 30.
L2_A = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=F64)
L2_LOGP = torch.tensor([[-0.1, -2.0, -0.5], [-0.2, -3.0, -1.0]], dtype=F64)
L2_COV = torch.tensor([[31.0, -26.0, 19.0], [-28.0, 56.0, -4.0]], dtype=F64) / 30
L2_H = torch.tensor([[0.5, 2.0, 0.1], [0.3, 1.5, 0.0]], dtype=F64)


def random_batch(seed: int, n: int = 6, t: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, t, generator=g) < 0.7).to(F64)
    mask[1] = 0.0  # a fully masked response
    adv = torch.randn(n, 1, generator=g, dtype=F64).expand(n, t).clone()
    return {
        "logp": -torch.rand(n, t, generator=g, dtype=F64) * 3,
        "adv": adv,
        "entropy": torch.rand(n, t, generator=g, dtype=F64) * 2,
        "other": -torch.rand(n, t, generator=g, dtype=F64) * 3,
        "phase": (torch.rand(n, t, generator=g) < 0.5).to(F64),
        "mask": mask,
    }


def shards_of(batch: dict[str, torch.Tensor], cut: int) -> list[dict[str, torch.Tensor]]:
    return [{k: v[:cut] for k, v in batch.items()}, {k: v[cut:] for k, v in batch.items()}]


def assert_metrics_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- covariance: token covariance


def test_token_covariance_spec_l2_batch():
    cov = token_covariance(L2_LOGP, L2_A, torch.ones(2, 3))
    close(cov, L2_COV)
    listed = [[1.033333, -0.866667, 0.633333], [-0.933333, 1.866667, -0.133333]]
    close(cov, listed, atol=1e-6)


def test_token_covariance_masked_token_changes_means_and_is_zero():
    # Mask out (1,1): mean log π = −3.8/5 = −0.76, mean A = 1/5 = 0.2, so
    # row 0: (log π + 0.76)·0.8 = [0.528, −0.992, 0.208]; row 1: (log π + 0.76)·(−1.2) = [−0.672, 0, 0.288].
    mask = torch.ones(2, 3)
    mask[1, 1] = 0
    logp = L2_LOGP.clone()
    logp[1, 1] = -1e4  # garbage under the mask must not leak into the means
    cov = token_covariance(logp, L2_A, mask)
    close(cov, [[0.528, -0.992, 0.208], [-0.672, 0.0, 0.288]])


def test_token_covariance_padding_and_all_masked():
    pad = torch.full((2, 2), 123.0, dtype=F64)
    mask = torch.cat([torch.ones(2, 3), torch.zeros(2, 2)], dim=1)
    cov = token_covariance(torch.cat([L2_LOGP, pad], 1), torch.cat([L2_A, pad], 1), mask)
    close(cov[:, :3], L2_COV)
    assert torch.equal(cov[:, 3:], torch.zeros(2, 2, dtype=F64))
    assert torch.equal(
        token_covariance(L2_LOGP, L2_A, torch.zeros(2, 3)), torch.zeros(2, 3, dtype=F64)
    )


def test_token_covariance_keeps_input_dtype_and_matches_official_formula():
    # Official code (Entropy-Mechanism-of-RL 8850579, clip_cov): (A − masked_mean A)·(logp − masked_mean logp)
    # in float32. Ours centres in float64, so they agree to float32 rounding.
    b = random_batch(0, n=16, t=33)
    logp, adv, mask = b["logp"].float(), b["adv"].float(), b["mask"].float()

    def masked_mean(x):
        return (x * mask).sum() / mask.sum()

    official = (adv - masked_mean(adv)) * (logp - masked_mean(logp)) * mask
    ours = token_covariance(logp, adv, mask)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, official, atol=1e-6, rtol=0)


def test_covariance_metrics_hand_case():
    # Ĉ = (31 − 26 + 19 − 28 + 56 − 4)/30/6 = 48/180; A>0 row: 24/90; A<0 row: 24/90.
    # Entropy ranks (ascending): (1,2)=0.0, (0,2)=0.1, (1,0)=0.3, (0,0)=0.5, (1,1)=1.5, (0,1)=2.0;
    # quintile ⌊5r/6⌋ = 0,0,1,2,3,4, so q1 = mean(−4, 19)/30 and q2..q5 = −28, 31, 56, −26 (/30).
    m = covariance_metrics(L2_LOGP, L2_A, L2_H, torch.ones(2, 3))
    expected = {
        "cov/mean": 48 / 180,
        "cov/adv_pos": 24 / 90,
        "cov/adv_pos_frac": 0.5,
        "cov/adv_neg": 24 / 90,
        "cov/adv_neg_frac": 0.5,
        "cov/entropy_q1": 15 / 60,
        "cov/entropy_q2": -28 / 30,
        "cov/entropy_q3": 31 / 30,
        "cov/entropy_q4": 56 / 30,
        "cov/entropy_q5": -26 / 30,
    }
    assert m.keys() == expected.keys()
    for key, value in expected.items():
        close(m[key], value)


def test_covariance_metrics_tied_entropy_quintiles_stay_balanced():
    # All H equal: ranks follow row-major position, 10 tokens -> 2 per quintile.
    g = torch.Generator().manual_seed(1)
    logp, adv = -torch.rand(2, 5, generator=g, dtype=F64), torch.randn(2, 5, generator=g, dtype=F64)
    mask = torch.ones(2, 5)
    m = covariance_metrics(logp, adv, torch.zeros(2, 5, dtype=F64), mask)
    cov = token_covariance(logp, adv, mask).reshape(-1)
    for j in range(5):
        close(m[f"cov/entropy_q{j + 1}"], cov[2 * j : 2 * j + 2].mean())
    close(m["cov/mean"], cov.mean())


def test_covariance_metrics_empty_and_one_sign():
    m = covariance_metrics(L2_LOGP, L2_A, L2_H, torch.zeros(2, 3))
    assert all(torch.equal(v, torch.zeros((), dtype=F64)) for v in m.values())
    m = covariance_metrics(L2_LOGP, L2_A.abs(), L2_H, torch.ones(2, 3))  # A ≡ 1: Cov ≡ 0, no A<0
    close(m["cov/adv_neg"], 0.0)
    close(m["cov/adv_neg_frac"], 0.0)
    close(m["cov/mean"], 0.0)


# ---------------------------------------------------------------- covariance: state-level identity

Z = torch.tensor([2.0, 1.0, 0.0], dtype=F64)
A = torch.tensor([1.0, 0.0, -1.0], dtype=F64)
ETA = 0.01


def test_spec_softmax_and_entropy():
    close(Z.softmax(-1), [0.665241, 0.244728, 0.090031], atol=1e-6)
    close(exact_entropy_change(torch.zeros(3, dtype=F64), Z), 0.832396 - math.log(3), atol=1e-6)


@pytest.mark.parametrize(
    ("delta", "pred", "exact"),
    [
        (natural_pg_delta(A, ETA), -0.0042440, -0.0042478),
        (vanilla_pg_delta(Z, A, ETA), -0.0020076, -0.0020103),
        (sampled_token_delta(Z, 0, 1.0, ETA), -0.0014182, -0.0014204),
    ],
    ids=["natural", "vanilla", "sampled"],
)
def test_identity_spec_numbers(delta, pred, exact):
    p = predicted_entropy_change(Z, delta)
    e = exact_entropy_change(Z, delta)
    close(p, pred, atol=1e-6)
    close(e, exact, atol=1e-6)
    assert abs(float(p) - float(e)) < 1e-5


def test_update_rules_hand_and_autograd():
    p = Z.softmax(-1)
    close(natural_pg_delta(A, ETA), ETA * A)
    close(vanilla_pg_delta(Z, A, ETA), ETA * p * A)
    # The single-token rule is η·A·∇_z log π_a.
    z = Z.clone().requires_grad_(True)
    z.log_softmax(-1)[2].backward()
    close(sampled_token_delta(Z, 2, -0.5, ETA), ETA * -0.5 * z.grad)


def test_identity_batched_states_match_single_states():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 7, 11, generator=g, dtype=F64)  # [B, T, V]
    action = torch.randint(0, 11, (4, 7), generator=g)
    adv = torch.randn(4, 7, generator=g, dtype=F64)
    delta = sampled_token_delta(logits, action, adv, 1e-3)
    pred = predicted_entropy_change(logits, delta)
    assert pred.shape == (4, 7)
    close(
        pred[3, 5],
        predicted_entropy_change(
            logits[3, 5],
            sampled_token_delta(logits[3, 5], int(action[3, 5]), float(adv[3, 5]), 1e-3),
        ),
    )
    # First order: the error is O(η²); with η·|A|·|Δz| ≲ 1e-2 it stays below 1e-5.
    assert (pred - exact_entropy_change(logits, delta)).abs().max() < 1e-5


# ---------------------------------------------------------------- covariance: trailing-window fit


def test_fit_entropy_change_hand_case():
    # Pairs (x = −Ĉ[k], y = H[k+1] − H[k]): (−1, −0.1), (−2, −0.15).
    # η = Σxy/Σx² = 0.4/5 = 0.08; residuals −0.02, 0.01; R² = 1 − 0.0005/0.0325.
    m = fit_entropy_change([1.0, 2.0, 0.5], [1.0, 0.9, 0.75])
    close(m["cov/eta_eff"], 0.08)
    close(m["cov/dH_pred"], -0.08 * 0.5)
    close(m["cov/dH_realised"], -0.15)
    close(m["cov/dH_fitted"], -0.16)
    close(m["cov/fit_r2"], 1 - 0.0005 / 0.0325)
    close(m["cov/fit_points"], 2.0)


def test_fit_entropy_change_recovers_eta_and_uses_window_only():
    c = torch.tensor([0.3, -0.1, 0.5, 0.2, 0.4, 0.05], dtype=F64)
    h = torch.cat([torch.ones(1, dtype=F64), 1.0 - 0.7 * c[:-1].cumsum(0)])  # ΔH = −0.7·Ĉ exactly
    m = fit_entropy_change(c, h, window=20)
    close(m["cov/eta_eff"], 0.7)
    close(m["cov/fit_r2"], 1.0)
    close(m["cov/fit_points"], 5.0)
    # Garbage before the window is ignored.
    c2, h2 = (
        torch.cat([torch.tensor([9.0, -9.0], dtype=F64), c]),
        torch.cat([torch.tensor([5.0, -5.0], dtype=F64), h]),
    )
    close(fit_entropy_change(c2, h2, window=5)["cov/eta_eff"], 0.7)


def test_fit_entropy_change_not_available_and_bad_args():
    assert fit_entropy_change([], []) == {}
    assert fit_entropy_change([0.1, 0.2], [1.0, 0.9]) == {}  # one pair
    assert fit_entropy_change([0.0, 0.0, 0.3], [1.0, 0.9, 0.8]) == {}  # Ĉ ≡ 0 on the pairs
    assert (
        fit_entropy_change([0.1, float("nan"), 0.3], [1.0, 0.9, 0.8]) == {}
    )  # one finite pair left
    with pytest.raises(ValueError, match="equal length"):
        fit_entropy_change([0.1, 0.2, 0.3], [1.0, 0.9])
    with pytest.raises(ValueError, match="window"):
        fit_entropy_change([0.1, 0.2, 0.3], [1.0, 0.9, 0.8], window=1)


# ---------------------------------------------------------------- entropy–performance law

LAW_H = [0.6, 0.4, 0.2, 0.1]
LAW_R = [1.0 - 0.5 * math.exp(h) for h in LAW_H]  # exact in float64


def test_law_spec_numbers():
    close(LAW_R, [0.088941, 0.254088, 0.389299, 0.447415], atol=1e-6)
    fit = fit_entropy_law(LAW_H, LAW_R)
    assert isinstance(fit, LawFit) and fit.n_points == 4
    close(fit.a, 0.5, atol=1e-9)
    close(fit.b, 1.0, atol=1e-9)
    close(fit.ceiling, 0.5, atol=1e-9)
    close(fit.r2, 1.0, atol=1e-9)
    assert fit.residual_rms < 1e-9
    close(law_predict(fit, 0.3), 1.0 - 0.5 * math.exp(0.3), atol=1e-9)
    close(law_slope(fit, [0.0, 0.3]), [-0.5, -0.5 * math.exp(0.3)], atol=1e-9)


def test_law_hand_case_with_residuals():
    # x = e^H = [1, 2, 3], R = [0.5, 0.1, 0.0]: slope = ((−1)(0.3) + (1)(−0.2))/2 = −0.25, so a = 0.25,
    # b = 0.2 + 0.25·2 = 0.7; residuals [0.05, −0.1, 0.05]; R² = 1 − 0.015/0.14; RMS = √0.005.
    fit = fit_entropy_law([0.0, math.log(2), math.log(3)], [0.5, 0.1, 0.0])
    close(fit.a, 0.25)
    close(fit.b, 0.7)
    close(fit.ceiling, 0.45)
    close(fit.r2, 1 - 0.015 / 0.14)
    close(fit.residual_rms, math.sqrt(0.005))
    m = law_metrics(fit, math.log(2))
    close(m["law/pred_R"], 0.2)
    close(m["law/dR_dH"], -0.5)
    assert set(m) == {
        "law/a",
        "law/b",
        "law/r2",
        "law/residual_rms",
        "law/ceiling",
        "law/pred_R",
        "law/dR_dH",
    }


def test_law_first_k_and_extrapolation_error():
    later_h, later_r = [0.05, 0.0], [1.0 - 0.5 * math.exp(0.05) + 0.01, 0.5 - 0.01]
    fit = fit_entropy_law([*LAW_H, *later_h], [*LAW_R, *later_r], mode="first_k", k=4)
    close(fit.a, 0.5, atol=1e-9)
    assert fit.n_points == 4
    close(extrapolation_error(fit, later_h, later_r), 0.01, atol=1e-9)


def test_law_too_few_points_constant_h_and_bad_args():
    assert fit_entropy_law(LAW_H[:2], LAW_R[:2]) is None
    assert fit_entropy_law(LAW_H, LAW_R, mode="first_k", k=2) is None
    assert fit_entropy_law([0.3] * 5, [0.1, 0.2, 0.3, 0.4, 0.5]) is None
    fit = fit_entropy_law(LAW_H, [0.3] * 4)  # constant R: a = 0, fitted exactly
    close(fit.a, 0.0)
    close(fit.r2, 1.0)
    with pytest.raises(ValueError, match="first_k"):
        fit_entropy_law(LAW_H, LAW_R, mode="first_k")
    with pytest.raises(ValueError, match="only used"):
        fit_entropy_law(LAW_H, LAW_R, k=3)
    with pytest.raises(ValueError, match="unknown"):
        fit_entropy_law(LAW_H, LAW_R, mode="last_k")
    with pytest.raises(ValueError, match="equal length"):
        fit_entropy_law(LAW_H, LAW_R[:3])
    with pytest.raises(ValueError, match="finite"):
        fit_entropy_law([*LAW_H, float("nan")], [*LAW_R, 0.1])
    with pytest.raises(ValueError, match="later points"):
        extrapolation_error(fit, [], [])


# ---------------------------------------------------------------- entropy logging


def test_quantile_linear_interpolation_hand_numbers():
    # h = (N−1)·q on sorted [1, 2, 3, 4, 10]: q=.5 → x[2] = 3; q=.8 → h=3.2 → 4 + 0.2·6 = 5.2;
    # q=.95 → h=3.8 → 4 + 0.8·6 = 8.8. Even N: [1, 2, 3, 4], q=.5 → h=1.5 → 2.5.
    close(
        quantile(torch.tensor([10.0, 3.0, 1.0, 4.0, 2.0]), [0.0, 0.5, 0.8, 0.95, 1.0]),
        [1, 3, 5.2, 8.8, 10],
    )
    close(quantile(torch.tensor([4.0, 1.0, 3.0, 2.0]), 0.5), 2.5)
    close(quantile(torch.tensor([7.0]), 0.99), 7.0)
    with pytest.raises(ValueError):
        quantile(torch.tensor([]), 0.5)


def test_quantile_matches_numpy_default():
    np = pytest.importorskip("numpy")
    x = torch.randn(1001, generator=torch.Generator().manual_seed(3), dtype=F64)
    qs = [0.0, 0.13, 0.5, 0.8, 0.95, 0.99, 1.0]
    close(quantile(x, qs), torch.from_numpy(np.quantile(x.numpy(), qs)), atol=1e-14)


def test_entropy_summary_hand_numbers_with_padding():
    entropy = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 10.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    m = entropy_summary(entropy, mask, threshold=3.0)  # strictly above 3: {4, 10}
    expected = {"mean": 4.0, "p50": 3.0, "p80": 5.2, "p95": 8.8, "max": 10.0, "frac_above": 0.4}
    assert set(m) == {f"entropy/{k}" for k in expected}
    for key, value in expected.items():
        close(m[f"entropy/{key}"], value)
    close(entropy_summary(entropy, mask)["entropy/frac_above"], 1.0)  # default 0.672
    assert all(float(v) == 0.0 for v in entropy_summary(entropy, torch.zeros(2, 4)).values())


def test_phase_split_means_and_logprob_gap_hand_numbers():
    entropy = torch.tensor([[1.0, 3.0, 5.0], [2.0, 4.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    phase = torch.tensor([[1, 1, 0], [1, 0, 0]])
    m = phase_split_means(entropy, mask, phase)  # think: (1+3+2)/3; answer: (5+4)/2; 9 is masked
    close(m["entropy/think"], 2.0)
    close(m["entropy/answer"], 4.5)
    m = phase_split_means(entropy, mask, torch.ones(2, 3), names=("correct", "wrong"))
    close(m["entropy/wrong"], 0.0)  # empty group
    # |gap| = k/100 for k = 0..100: mean 0.5, p99 at h = 100·0.99 = 99 → 0.99.
    gap = torch.arange(101, dtype=F64).reshape(1, 101) / 100
    old = -torch.rand(1, 101, generator=torch.Generator().manual_seed(4), dtype=F64)
    sign = torch.where(torch.arange(101) % 2 == 0, 1.0, -1.0).to(F64)
    m = logprob_gap(old + sign * gap, old, torch.ones(1, 101))
    close(m["logprob_gap/mean"], 0.5, atol=1e-15)
    close(m["logprob_gap/p99"], 0.99, atol=1e-15)


# ---------------------------------------------------------------- rank splits


STATS = {
    "token_covariance": lambda b, r: token_covariance(b["logp"], b["adv"], b["mask"], r),
    "covariance_metrics": lambda b, r: covariance_metrics(
        b["logp"], b["adv"], b["entropy"], b["mask"], r
    ),
    "entropy_summary": lambda b, r: entropy_summary(b["entropy"], b["mask"], r),
    "phase_split_means": lambda b, r: phase_split_means(
        b["entropy"], b["mask"], b["phase"], reducer=r
    ),
    "logprob_gap": lambda b, r: logprob_gap(b["logp"], b["other"], b["mask"], r),
}


@pytest.mark.parametrize("name", list(STATS))
@pytest.mark.parametrize("cut", [1, 2, 5])  # cut=1: rank 1 holds a fully masked response
def test_two_ranks_equal_whole_batch_exactly(name, cut):
    fn = STATS[name]
    batch = random_batch(5)
    whole = fn(batch, LOCAL)
    parts = run_split(fn, shards_of(batch, cut))
    if name == "token_covariance":
        assert torch.equal(torch.cat(parts, dim=0), whole)
    else:
        for part in parts:
            assert_metrics_equal(part, whole)


def test_rank_with_no_valid_token_still_matches():
    batch = random_batch(6)
    batch["mask"][:2] = 0.0
    whole = covariance_metrics(batch["logp"], batch["adv"], batch["entropy"], batch["mask"])
    for part in run_split(STATS["covariance_metrics"], shards_of(batch, 2)):
        assert_metrics_equal(part, whole)


# ---------------------------------------------------------------- meta: the checks can fail


def test_meta_wrong_values_fail():
    cov = token_covariance(L2_LOGP, L2_A, torch.ones(2, 3))
    with pytest.raises(AssertionError):
        close(cov[0, 0], 1.033333 + 1e-5, atol=1e-6)
    fit = fit_entropy_law(LAW_H, LAW_R)
    with pytest.raises(AssertionError):
        close(fit.a, 0.5 + 1e-8, atol=1e-9)
    p = predicted_entropy_change(Z, natural_pg_delta(A, ETA))
    with pytest.raises(AssertionError):
        close(p, -0.0042478, atol=1e-6)  # the exact value is not the first-order prediction
    # Per-shard (micro) statistics are not the whole-batch ones: the split test has teeth.
    batch = random_batch(5)
    whole = token_covariance(batch["logp"], batch["adv"], batch["mask"])
    micro = [token_covariance(s["logp"], s["adv"], s["mask"]) for s in shards_of(batch, 2)]
    assert not torch.allclose(torch.cat(micro, dim=0), whole)
