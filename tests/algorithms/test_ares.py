"""ARES (arXiv 2510.08457): window entropy, HWE counts, buckets, the reward term, the β rule."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from entropo.algorithms.ares import (
    EASY,
    HARD,
    MEDIUM,
    AresState,
    alpha_update,
    ares_step,
    beta_update,
    bucket_targets,
    difficulty_buckets,
    hwe_count,
    hwe_threshold,
    sequence_kl,
    shaping_term,
    threshold_update,
    topk_entropy,
    window_entropy,
)
from entropo.algorithms.configs.ares import AresConfig
from entropo.config import ConfigError, load_config
from tests.fake_ranks import run_split

# Three responses of lengths 6, 3, 2 (right-padded to T = 6); w = 2 in the hand cases.
H = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                  [1.0, 2.0, 3.0, 9.0, 9.0, 9.0],
                  [0.7, 0.9, 9.0, 9.0, 9.0, 9.0]], dtype=torch.float64)
MASK = (torch.arange(6)[None, :] < torch.tensor([[6], [3], [2]])).float()


# ---------------------------------------------------------------- window entropy and HWE counts


def test_window_entropy_by_hand_with_padding():
    m, full = window_entropy(H, MASK, window_size=2, start="next")
    # next: m_t = (H_{t+1} + H_{t+2})/2. Row 0: (0.2+0.3)/2 = 0.25, 0.35, 0.45, 0.55, then the window
    # runs past the end. Row 1 (L = 3): (2+3)/2 = 2.5 only (t = 1 would read the pad 9.0). Row 2
    # (L = 2): no full window.
    assert full.tolist() == [[True] * 4 + [False] * 2, [True] + [False] * 5, [False] * 6]
    torch.testing.assert_close(m[0, :4], torch.tensor([0.25, 0.35, 0.45, 0.55], dtype=torch.float64))
    assert float(m[1, 0]) == 2.5 and float(m[~full].abs().sum()) == 0.0
    m, full = window_entropy(H, MASK, window_size=2, start="current")
    # current (the paper's H̄_{t:w}): (H_t + H_{t+1})/2 = 0.15 .. 0.55; row 1: 1.5, 2.5; row 2: 0.8.
    assert full.sum(-1).tolist() == [5, 2, 1]
    torch.testing.assert_close(m[0, :5], torch.tensor([0.15, 0.25, 0.35, 0.45, 0.55], dtype=torch.float64))
    torch.testing.assert_close(m[1, :2], torch.tensor([1.5, 2.5], dtype=torch.float64))
    assert float(m[2, 0]) == pytest.approx(0.8, abs=1e-15)


def test_window_longer_than_every_response_and_all_masked():
    m, full = window_entropy(H, MASK, window_size=6, start="next")
    assert not full.any() and hwe_count(m, full, 0.0).tolist() == [0.0, 0.0, 0.0]
    m, full = window_entropy(H, torch.zeros_like(MASK), window_size=1, start="next")
    assert not full.any()
    assert math.isnan(float(hwe_threshold(m, full, H, torch.zeros_like(MASK), 95.0, "sequence")))
    assert math.isnan(float(hwe_threshold(m, full, H, torch.zeros_like(MASK), 95.0, "global")))


def test_hwe_count_is_inclusive_and_takes_a_trigger():
    m, full = window_entropy(H, MASK, window_size=2, start="next")
    # row 0: 0.45 and 0.55 are >= 0.45; row 1: 2.5; row 2: none.
    assert hwe_count(m, full, 0.45).tolist() == [2.0, 1.0, 0.0]
    trigger = torch.zeros(3, 6, dtype=torch.bool)
    trigger[0, 3] = True  # only position 3 of row 0 may count (the code's word list)
    assert hwe_count(m, full, 0.45, trigger).tolist() == [1.0, 0.0, 0.0]
    assert hwe_count(m, full, float("nan")).tolist() == [0.0, 0.0, 0.0]


def test_threshold_by_hand():
    m, full = window_entropy(H, MASK, window_size=2, start="next")
    # sequence scope: per row the full windows, then the code's fill (the mean of the full windows,
    # or H_0 with none). Row 0: [0.25, 0.35, 0.45, 0.55, 0.4, 0.4]; row 1: [2.5, 2.5, 2.5];
    # row 2: [0.7, 0.7]. p = 50: 0.4, 2.5, 0.7, median 0.7. p = 95 on row 0: position
    # 5·0.95 = 4.75 between 0.45 and 0.55: 0.525.
    assert float(hwe_threshold(m, full, H, MASK, percentile=50, scope="sequence")) == pytest.approx(0.7, abs=1e-15)
    assert float(hwe_threshold(m[:1], full[:1], H[:1], MASK[:1], percentile=95, scope="sequence")) == pytest.approx(0.525, abs=1e-15)
    # global scope: the full windows [0.25, 0.35, 0.45, 0.55, 2.5]; p = 50 is 0.45, p = 95 sits at
    # 4·0.95 = 3.8: 0.55 + 0.8·(2.5 − 0.55) = 2.11.
    assert float(hwe_threshold(m, full, H, MASK, percentile=50, scope="global")) == pytest.approx(0.45, abs=1e-15)
    assert float(hwe_threshold(m, full, H, MASK, percentile=95, scope="global")) == pytest.approx(2.11, abs=1e-14)


def test_threshold_ema_lags_one_step():
    # step 1 counts with τ̂_1 and stores it; step 2 counts with τ_1 = τ̂_1; step 3 with the EMA
    used, tau = threshold_update(None, 2.0, 0.99)
    assert (used, tau) == (2.0, 2.0)
    used, tau = threshold_update(tau, 1.0, 0.99)
    assert used == 2.0 and tau == pytest.approx(0.99 * 2.0 + 0.01 * 1.0, abs=1e-15)
    assert threshold_update(tau, float("nan"), 0.99) == (tau, tau)  # no full window: unchanged
    assert threshold_update(None, float("nan"), 0.99)[1] is None


@pytest.mark.parametrize("scope", ["sequence", "global"])
@pytest.mark.parametrize("seed", [0, 1])
def test_threshold_rank_split_equals_whole_batch(scope, seed):
    gen = torch.Generator().manual_seed(seed)
    h = torch.rand(10, 9, generator=gen, dtype=torch.float64) * 2
    mask = (torch.arange(9)[None, :] < torch.randint(1, 10, (10, 1), generator=gen)).float()
    m, full = window_entropy(h, mask, 4, "next")
    whole = hwe_threshold(m, full, h, mask, 95.0, scope)
    parts = run_split(lambda rows, r: hwe_threshold(m[rows], full[rows], h[rows], mask[rows], 95.0, scope, r),
                      [slice(0, 3), slice(3, 10)])
    assert all(float(p) == float(whole) for p in parts)  # the same values in the same order


# ---------------------------------------------------------------- buckets, targets, α, the term


def test_bucket_edges():
    # groups of 3 at accuracy 3/3, 2/3, 1/3, 0/3, and groups of 6 at 4/6 and 2/6 (the same edges)
    correct = torch.tensor([1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0.0])
    groups = torch.arange(6).repeat_interleave(torch.tensor([3, 3, 3, 3, 6, 6]))
    bucket = difficulty_buckets(correct, groups, 2 / 3, 1 / 3)
    per_group = [int(bucket[groups == g][0]) for g in range(6)]
    assert per_group == [EASY, EASY, MEDIUM, HARD, EASY, MEDIUM]
    # just below the edges: 0.6 and 0.3 of 10
    c = torch.tensor([1.0] * 6 + [0.0] * 4 + [1.0] * 3 + [0.0] * 7)
    assert difficulty_buckets(c, torch.arange(2).repeat_interleave(10), 2 / 3, 1 / 3).unique().tolist() == [MEDIUM, HARD]


def test_bucket_targets_round_half_to_even():
    # easy groups 0, 1 (means 1.5 and 2.0: ḡ = 1.75 → 2); medium group 2 (mean 2.5 → 2); no hard group
    count = torch.tensor([1.0, 2.0, 2.0, 2.0, 2.0, 3.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    bucket = torch.tensor([EASY, EASY, EASY, EASY, MEDIUM, MEDIUM])
    mean, target = bucket_targets(count, bucket, groups)
    assert mean[:2].tolist() == [1.75, 2.5] and target[:2].tolist() == [2.0, 2.0]
    assert math.isnan(mean[2]) and math.isnan(target[2])
    _, target = bucket_targets(torch.tensor([0.0, 1.0]), torch.tensor([HARD, HARD]), torch.tensor([0, 0]))
    assert target[HARD] == 0.0  # 0.5 → 0


def test_alpha_update_by_hand():
    cfg = AresConfig()
    # easy: ḡ − N* = 1.75 − 2 = −0.25 → 0.5 − 0.05·0.25 = 0.4875; medium: 2.4 − 2 → 0.5 + 0.02;
    # hard: N* − ḡ = 3 − 2.6 → 0.5 + 0.02; an empty bucket keeps its α; the bounds clip.
    f64 = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    out = alpha_update((0.5, 0.5, 0.5), f64(1.75, 2.4, 2.6), f64(2.0, 2.0, 3.0), cfg)
    assert out == pytest.approx((0.4875, 0.52, 0.52), abs=1e-15)
    assert alpha_update((0.7, 0.5, 0.3), torch.tensor([float("nan")] * 3), torch.tensor([float("nan")] * 3), cfg) \
        == (0.7, 0.5, 0.3)
    assert alpha_update((1.99, 0.0, 0.0), torch.tensor([100.0, -100.0, 0.0]), torch.tensor([0.0, 0.0, 0.0]), cfg) \
        == (2.0, 0.0, 0.0)


def test_shaping_term_by_hand():
    rows = [  # (n, bucket, correct, N*_b) with α = 0.5 everywhere
        (10.0, EASY, 1, 10.0),  # d = 0 within the margin M = 1.5: 0
        (12.5, EASY, 1, 10.0),  # over = 1, Huber(1; κ=2) = 0.25; 0.25/(1.5+2)·0.5 = 0.0357142857
        (20.0, EASY, 1, 10.0),  # over = 8.5 > κ: 7.5/3.5·0.5 > cap: −cap = −0.5
        (0.0, MEDIUM, 1, 4.0),  # M = 1, |d| − M = 3, Huber(3; κ=3) = 1.5; 1.5/4·0.5 = 0.1875
        (2.0, HARD, 1, 2.0),  # c = 0.6, d = 0 ≥ −M = −1: σ((0 + 1)/3)·0.6
        (0.0, HARD, 1, 2.0),  # d = −2 < −1: Huber(1; κ=4) = 0.125; 0.5·0.125/5·0.6 = 0.0075
        (0.0, EASY, 0, 0.0),  # wrong: σ(0)·0.5·0.6 = 0.15 (half the cap even without excess)
        (0.0, MEDIUM, 0, 0.0),  # wrong: σ(0)·0.5·0.8 = 0.2
        (6.0, HARD, 0, 2.0),  # wrong: over = 4 − 1 = 3, σ(3/3)·0.6·1.0
    ]
    count, bucket, correct, n_star = (torch.tensor([r[i] for r in rows]) for i in range(4))
    target = torch.full((3,), float("nan"))
    term = torch.stack([shaping_term(count[i:i + 1], bucket[i:i + 1], correct[i:i + 1],
                                     target.index_fill(0, bucket[i:i + 1], n_star[i]), (0.5, 0.5, 0.5))[0]
                        for i in range(len(rows))])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [0.0, -0.25 / 3.5 * 0.5, -0.5, -0.1875, sig(1 / 3) * 0.6, -0.0075, 0.15, 0.2, sig(1.0) * 0.6]
    torch.testing.assert_close(term, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    # a wrong expected value must fail (the check is not vacuous)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(term, torch.tensor(expected, dtype=torch.float64) + 1e-9, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- the β rule


def test_beta_update_by_hand_over_steps():
    cfg = AresConfig()  # target 0.01, ρ = 0.97, deadzone 0.02, η = 0.05, clip 0.2
    s = AresState.initial(cfg)
    # call 1: easy K = 0 → e = −1, E = 0.03·(−1); medium K = 0.02 → e = 1, E = 0.03; hard unseen
    s = beta_update(s, torch.tensor([0.0, 0.02, float("nan")], dtype=torch.float64), cfg)
    assert s.beta == pytest.approx((math.exp(-0.0015), math.exp(0.0015), 1.0), abs=1e-15)
    assert s.kl_ema == (0.0, 0.02, None) and s.kl_updates == 1
    # call 2: easy K = 0.03·0.0101 = 3.03e-4, e = −0.9697, E = 0.03·e + 0.97·(−0.03) = −0.058191;
    # medium K = 0.02, E = 0.03 + 0.97·0.03 = 0.0591; hard first seen: K = 0.5, e = 49, E = 1.47 → clip 0.2
    s = beta_update(s, torch.tensor([0.0101, 0.02, 0.5], dtype=torch.float64), cfg)
    assert s.err_ema == pytest.approx((-0.058191, 0.0591, 1.47), abs=1e-12)
    assert s.beta == pytest.approx((math.exp(-0.0015 - 0.05 * 0.058191), math.exp(0.0015 + 0.05 * 0.0591),
                                    math.exp(0.05 * 0.2)), abs=1e-14)


def test_beta_deadzone_interval_and_bounds():
    cfg = AresConfig(kl_ema_decay=0.0, kl_update_every=2, kl_beta_max=1.0001)
    s = AresState.initial(cfg)
    s = beta_update(s, torch.tensor([1.0, 1.0, 0.01015], dtype=torch.float64), cfg)  # call 1: not an update call
    assert s.beta == (1.0, 1.0, 1.0) and s.kl_ema == (1.0, 1.0, 0.01015) and s.err_ema == (0.0, 0.0, 0.0)
    s = beta_update(s, torch.tensor([1.0, 0.0, 0.01015], dtype=torch.float64), cfg)  # call 2: updates, except hard (|e| = 0.015)
    assert s.err_ema[2] == 0.0 and s.beta[2] == 1.0
    assert s.beta[0] == pytest.approx(1.0001, abs=1e-15)  # exp(0.05·0.2) clipped at β_max
    assert s.beta[1] == pytest.approx(math.exp(-0.05 * 0.2), abs=1e-15)


def test_sequence_kl():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.5, 0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.25, 0.1], [0.5, 0.5, 0.5]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # k1 = log π − log π_ref: row 0 (ln 2 + 0)/2 (the pad 0.9 vs 0.1 is left out); row 1: 0
    torch.testing.assert_close(sequence_kl(logp, ref, mask, "k1"), torch.tensor([math.log(2) / 2, 0.0], dtype=torch.float64))


# ---------------------------------------------------------------- top-k entropy


def test_topk_entropy_hand_case_and_full_vocabulary():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    logits = p.log() + 1.0
    # k = 2, sampled token 0 (in the top 2): −(0.5 ln 0.5 + 0.3 ln 0.3) − 0.2 ln 0.2 (tail)
    top2 = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3))
    assert float(topk_entropy(logits, torch.tensor(0), k=2, tail=False)) == pytest.approx(top2, abs=1e-15)
    assert float(topk_entropy(logits, torch.tensor(0), k=2)) == pytest.approx(top2 - 0.2 * math.log(0.2), abs=1e-15)
    # sampled token 3 outside the top 2 joins S: the tail is 0.15
    with3 = top2 - 0.05 * math.log(0.05) - 0.15 * math.log(0.15)
    assert float(topk_entropy(logits, torch.tensor(3), k=2)) == pytest.approx(with3, abs=1e-15)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 40, generator=gen, dtype=torch.float64) * 3
    exact = torch.distributions.Categorical(logits=z / 0.7).entropy()
    torch.testing.assert_close(topk_entropy(z, torch.zeros(3, 5, dtype=torch.long), k=40, temperature=0.7,
                                            chunk_size=4), exact, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- parity with the official code


def _official_entropies(logprob_dicts, tail):
    """The rollout's per-token entropy from a dict of vLLM log-probs (top-k + sampled token)."""
    out = []
    for d in logprob_dicts:
        lp = np.array(list(d.values()), dtype=np.float64)
        p = np.exp(lp)
        h = -float(np.sum(p * lp))
        q = max(0.0, 1.0 - float(np.sum(p)))
        if tail and q > 0.0:
            h -= q * np.log(max(q, 1e-12))
        out.append(h)
    return out


def _official_percentile(ent, p, w):
    """get_window_average_entropy_percentile_threshold_list, one response."""
    vals = []
    for i in range(len(ent)):
        if len(ent) - i - 1 >= w:
            vals.append(float(np.mean(ent[i + 1:i + 1 + w])))
        else:
            vals.append(np.mean(vals) if vals else ent[i])
    return np.percentile(vals, p) if vals else 0.0


def _official_count(ent, threshold, w, trigger):
    """compute_reasoning_token_window_entropy's valid count, ``trigger`` standing in for the word list."""
    n = 0
    for i in range(len(ent)):
        if trigger[i] and len(ent) - i - 1 >= w and float(np.mean(ent[i + 1:i + 1 + w])) >= threshold:
            n += 1
    return n


def _official_entropy_score(acc, difficulty, n, target, alpha):
    """compute_score's entropy_score for one response."""
    frac = {"easy": 0.15, "medium": 0.25, "hard": 0.35}[difficulty]
    kappa = {"easy": 2.0, "medium": 3.0, "hard": 4.0}[difficulty]
    temp = {"easy": 2.0, "medium": 2.5, "hard": 3.0}[difficulty]
    cap = alpha * {"easy": 1.0, "medium": 1.0, "hard": 1.2}[difficulty]
    huber = lambda x: 0.5 * max(x, 0) ** 2 / kappa if max(x, 0) <= kappa else max(x, 0) - 0.5 * kappa  # noqa: E731
    sig = lambda x: 1.0 / (1.0 + math.exp(-x / max(temp, 1e-6)))  # noqa: E731
    delta, margin = n - target, max(1.0, frac * max(target, 1.0))
    if difficulty in ("easy", "medium"):
        if acc == 1.0:
            dev = delta - margin if difficulty == "easy" else abs(delta) - margin
            return -min(cap, huber(max(dev, 0.0)) / (margin + kappa) * cap)
        return sig(max(delta - margin, 0.0)) * cap * (0.6 if difficulty == "easy" else 0.8)
    if acc == 1.0:
        if delta >= -margin:
            return sig(delta + margin) * cap
        return -min(cap, 0.5 * huber(-delta - margin) / (margin + kappa) * cap)
    return sig(max(delta - margin, 0.0)) * cap


def _official_buckets(gids, accs, counts, alpha, lr=0.05):
    """update_difficulty_and_skip_gid_set: difficulty per gid, targets and α per bucket."""
    info = {}
    for g, a, c in zip(gids, accs, counts):
        info.setdefault(g, ([], []))
        info[g][0].append(a)
        info[g][1].append(c)
    diff, per_bucket = {}, {}
    for g, (a, c) in info.items():
        r = np.mean(a)
        diff[g] = "easy" if r >= 2 / 3 else "medium" if r >= 1 / 3 else "hard"
        per_bucket.setdefault(diff[g], []).append(np.mean(c))
    target = {d: round(1.0 * np.mean(v)) for d, v in per_bucket.items()}
    alpha = dict(alpha)
    for d, v in per_bucket.items():
        delta = np.mean(v) - target[d] if d != "hard" else target[d] - np.mean(v)
        alpha[d] = float(np.clip(alpha[d] + lr * delta, 0.0, 2.0))
    return diff, target, alpha


class _OfficialBeta:
    """_update_beta_per_bucket, restated with the code's defaults."""

    def __init__(self, interval):
        self.beta = {"easy": 1.0, "medium": 1.0, "hard": 1.0}
        self.last = {"easy": None, "medium": None, "hard": None}
        self.e = {"easy": 0.0, "medium": 0.0, "hard": 0.0}
        self.count, self.interval = 0, interval

    def update(self, difficulties, seq_kl):
        self.count += 1
        vals = {"easy": [], "medium": [], "hard": []}
        for d, v in zip(difficulties, seq_kl):
            vals[d].append(v)
        for d, v in vals.items():
            if not v:
                continue
            cur = sum(v) / len(v)
            last = cur if self.last[d] is None else self.last[d]
            self.last[d] = 0.03 * cur + 0.97 * last
            e = self.last[d] / max(1e-8, 0.01) - 1.0
            if abs(e) < 0.02 or self.count % self.interval != 0:
                continue
            self.e[d] = 0.03 * e + 0.97 * self.e[d]
            de = float(np.clip(self.e[d], -0.2, 0.2))
            logb = np.log(max(1e-4, min(100.0, self.beta[d])))
            self.beta[d] = float(np.exp(np.clip(logb + 0.05 * de, np.log(1e-4), np.log(100.0))))


def _random_batch(seed, n_groups=6, g=4, t=24, v=30):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_groups * g, t, v, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, v, (n_groups * g, t), generator=gen)
    lengths = torch.randint(2, t + 1, (n_groups * g,), generator=gen)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).double()
    correct = (torch.rand(n_groups * g, generator=gen) < torch.linspace(0, 1, n_groups).repeat_interleave(g)).double()
    groups = torch.arange(n_groups).repeat_interleave(g)
    return logits, labels, mask, correct, groups


def _vllm_dicts(logits, labels, k):
    """Per token: the top-k log-probs and the sampled token's, as vLLM returns them."""
    logp = logits.log_softmax(-1)
    top = logp.topk(k, -1).indices.tolist()
    return [{j: float(logp[t, j]) for j in [*top[t], int(labels[t])]} for t in range(logits.shape[0])]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_the_official_formulas(seed):
    logits, labels, mask, correct, groups = _random_batch(seed)
    k, w, p = 10, 4, 95.0
    lengths = mask.sum(-1).long().tolist()
    dicts = [_vllm_dicts(logits[i, :lengths[i]], labels[i, :lengths[i]], k) for i in range(len(mask))]
    # entropies: the count's (tail-corrected) and the threshold's (not)
    h_tail = topk_entropy(logits, labels, k=k) * mask
    h_raw = topk_entropy(logits, labels, k=k, tail=False) * mask
    for i, d in enumerate(dicts):
        np.testing.assert_allclose(h_tail[i, :lengths[i]].numpy(), _official_entropies(d, True), rtol=0, atol=1e-12)
        np.testing.assert_allclose(h_raw[i, :lengths[i]].numpy(), _official_entropies(d, False), rtol=0, atol=1e-12)
    # threshold: median of per-response 95th percentiles (of the uncorrected entropies)
    m_raw, full_raw = window_entropy(h_raw, mask, w, "next")
    official_tau = float(np.median([_official_percentile(_official_entropies(d, False), p, w) for d in dicts]))
    assert float(hwe_threshold(m_raw, full_raw, h_raw, mask, p, "sequence")) == pytest.approx(official_tau, abs=1e-12)
    # counts over a random trigger set, with the tail-corrected entropies
    trigger = torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed + 9)) < 0.5
    m, full = window_entropy(h_tail, mask, w, "next")
    count = hwe_count(m, full, official_tau, trigger)
    official_count = [_official_count(_official_entropies(d, True), official_tau, w, trigger[i].tolist())
                      for i, d in enumerate(dicts)]
    assert count.tolist() == official_count
    # buckets, targets, α, and the term
    diff, target, alpha = _official_buckets(groups.tolist(), correct.tolist(), count.tolist(),
                                            {"easy": 0.5, "medium": 0.5, "hard": 0.5})
    bucket = difficulty_buckets(correct, groups, 2 / 3, 1 / 3)
    names = ("easy", "medium", "hard")
    assert [names[b] for b in bucket.tolist()] == [diff[g] for g in groups.tolist()]
    mean, ours_target = bucket_targets(count, bucket, groups)
    ours_alpha = alpha_update((0.5, 0.5, 0.5), mean, ours_target, AresConfig())
    for b, name in enumerate(names):
        if name in target:
            assert ours_target[b] == target[name] and ours_alpha[b] == pytest.approx(alpha[name], abs=1e-15)
    term = shaping_term(count, bucket, correct, ours_target, ours_alpha)
    official = [_official_entropy_score(float(correct[i]), diff[int(groups[i])], float(count[i]),
                                        float(target[diff[int(groups[i])]]), alpha[diff[int(groups[i])]])
                for i in range(len(count))]
    np.testing.assert_allclose(term.numpy(), official, rtol=0, atol=1e-12)


@pytest.mark.parametrize("interval", [1, 3])
def test_beta_rule_matches_the_official_update(interval):
    gen = torch.Generator().manual_seed(interval)
    cfg = AresConfig(kl_update_every=interval)
    ours, theirs = AresState.initial(cfg), _OfficialBeta(interval)
    for _ in range(12):
        bucket = torch.randint(0, 3, (16,), generator=gen)
        bucket[bucket == HARD] = HARD if torch.rand(1, generator=gen) < 0.7 else EASY  # buckets go missing
        seq_kl = torch.rand(16, generator=gen, dtype=torch.float64) * 0.03
        sums = torch.nn.functional.one_hot(bucket, 3).double()
        kl_now = torch.where(sums.sum(0) > 0, (sums * seq_kl[:, None]).sum(0) / sums.sum(0).clamp(min=1),
                             float("nan"))
        ours = beta_update(ours, kl_now, cfg)
        theirs.update([("easy", "medium", "hard")[b] for b in bucket.tolist()], seq_kl.tolist())
    assert ours.beta == pytest.approx(tuple(theirs.beta.values()), rel=1e-12)


# ---------------------------------------------------------------- one step, ranks, state


def _step_inputs(seed):
    logits, _, mask, correct, groups = _random_batch(seed)
    entropy = torch.distributions.Categorical(logits=logits).entropy() * mask
    seq_kl = torch.rand(len(mask), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.02
    return entropy, mask, correct, groups, seq_kl


@pytest.mark.parametrize("scope", ["sequence", "global"])
def test_ares_step_rank_split_equals_whole_batch(scope):
    cfg = AresConfig(enable=True, threshold_scope=scope)
    entropy, mask, correct, groups, seq_kl = _step_inputs(3)
    state = dataclasses.replace(AresState.initial(cfg), threshold=1.1)
    whole = ares_step(entropy, mask, correct, groups, state, cfg, seq_kl=seq_kl)
    shards = [slice(0, 8), slice(8, 24)]  # whole groups of 4 on each fake rank
    parts = run_split(lambda rows, r: ares_step(entropy[rows], mask[rows], correct[rows], groups[rows], state, cfg,
                                                seq_kl=seq_kl[rows], reducer=r), shards)
    torch.testing.assert_close(torch.cat([p.term for p in parts]), whole.term, rtol=0, atol=1e-15)
    torch.testing.assert_close(torch.cat([p.beta for p in parts]), whole.beta, rtol=0, atol=1e-15)
    for p in parts:
        assert p.state.threshold == pytest.approx(whole.state.threshold, abs=1e-15)
        assert p.state.beta == pytest.approx(whole.state.beta, abs=1e-15)
        assert p.state.alpha == pytest.approx(whole.state.alpha, abs=1e-15)
        for key, value in whole.metrics.items():
            torch.testing.assert_close(p.metrics[key], value, rtol=0, atol=1e-14, equal_nan=True)


def test_ares_step_uses_the_previous_threshold_and_reports_metrics():
    cfg = AresConfig(enable=True)
    entropy, mask, correct, groups, seq_kl = _step_inputs(4)
    first = ares_step(entropy, mask, correct, groups, AresState.initial(cfg), cfg)
    assert first.beta is None and first.state.kl_updates == 0
    m, full = window_entropy(entropy, mask, cfg.window_size, cfg.window_start)
    tau_1 = float(hwe_threshold(m, full, entropy, mask, cfg.percentile, cfg.threshold_scope))
    assert first.state.threshold == tau_1 and float(first.metrics["ares/threshold"]) == tau_1
    second = ares_step(entropy * 1.5, mask, correct, groups, first.state, cfg, seq_kl=seq_kl)
    assert float(second.metrics["ares/threshold"]) == tau_1  # counts with τ_1
    assert second.state.threshold == pytest.approx(0.99 * tau_1 + 0.01 * tau_1 * 1.5, rel=1e-12)
    assert float(second.metrics["ares/hwe_count_mean"]) == pytest.approx(
        float(hwe_count(*window_entropy(entropy * 1.5, mask, cfg.window_size, cfg.window_start), tau_1).mean()), abs=1e-15)
    fracs = [float(second.metrics[f"ares/frac_{b}"]) for b in ("easy", "medium", "hard")]
    assert sum(fracs) == pytest.approx(1.0) and second.state.kl_updates == 1
    assert float(second.metrics["ares/term_mean"]) == pytest.approx(float(second.term.mean()), abs=1e-15)


def test_state_round_trip(tmp_path):
    from entropo.algorithms.registry import CONTROLLERS
    from entropo.algorithms.stateful import Active, StepInfo, from_state_dicts, state_dicts

    cfg = AresConfig(enable=True)
    entropy, mask, correct, groups, seq_kl = _step_inputs(5)
    state = ares_step(entropy, mask, correct, groups, AresState.initial(cfg), cfg, seq_kl=seq_kl).state
    assert state.kl_ema[0] is not None and state.threshold is not None  # a state with every field set
    torch.save(state_dicts({"ares": state}), tmp_path / "s.pt")
    methods = [Active("ares", CONTROLLERS.get("ares").fn, cfg)]
    back = from_state_dicts(methods, torch.load(tmp_path / "s.pt", weights_only=False), StepInfo(0, 4, 2, 1.0))
    assert back == {"ares": state}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm.ares.enable=true"], "algorithm.ares.adaptive_kl .* algorithm.kl_coef"),
        (["algorithm.ares.window_size=8"], "algorithm.ares.window_size is set, but algorithm.ares.enable is false"),
        (["algorithm.ares.enable=true", "algorithm.kl_coef=0.01", "algorithm.sampling=[aepo]"], "cannot be combined"),
        (["algorithm.ares.enable=true", "algorithm.kl_coef=0.01", "rollout.n=1"], "rollout.n >= 2"),
        (["algorithm.ares.enable=true", "algorithm.ares.adaptive_kl=false", "algorithm.ares.entropy=top10"],
         "algorithm.ares.entropy"),
    ],
)
def test_config_rules(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)
    assert load_config(overrides=["algorithm.ares.enable=true", "algorithm.ares.adaptive_kl=false"]).algorithm.ares.enable
