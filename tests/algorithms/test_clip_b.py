import math

import pytest
import torch

from entropo.algorithms.aggregate import aggregate, loss_norm
from entropo.algorithms.configs.losses import PPOClipConfig
from entropo.algorithms.configs.masks import ClipBConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.masks.clip_b import clip_b_mask
from entropo.algorithms.objective import micro_objective, prepare_minibatch
from entropo.algorithms.reduce import LOCAL
from tests.fake_ranks import run_split
from tests.objectives import objective

E2 = math.exp(-2.0)


def _inputs(old_logp, entropy, adv, mask, reducer=LOCAL, rollout_logp=None):
    old_logp, entropy, adv, mask = (torch.as_tensor(x, dtype=torch.float32) for x in (old_logp, entropy, adv, mask))
    return TokenLossInputs(logp=old_logp.clone(), old_logp=old_logp, advantages=adv, mask=mask,
                           old_entropy=entropy, reducer=reducer, rollout_logp=rollout_logp)


def _outlier_batch(outlier_adv=-1.0):
    """Two responses of 4 valid tokens + 1 padding. Seven tokens have p = 1, H = 0, so S = 0;
    the outlier (row 1, position 2) has log p = −2, H = 1: S = e^−2·(1 − 2) = −e^−2 ≈ −0.1353.
    Padding holds garbage (log p = −inf, H = NaN) that must be ignored."""
    logp = torch.zeros(2, 5)
    h = torch.zeros(2, 5)
    logp[1, 2], h[1, 2] = -2.0, 1.0
    logp[:, 4], h[:, 4] = -math.inf, math.nan
    adv = torch.tensor([[1.0] * 5, [outlier_adv] * 5])
    mask = torch.tensor([[1.0, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    return logp, h, adv, mask


def test_hand_computed_outlier_is_masked():
    keep, m = clip_b_mask(_inputs(*_outlier_batch()), ClipBConfig(mu=2.5))
    # N = 8, S = (0 ×7, −e^−2): S̄ = −e^−2/8; the outlier's z = −7e^−2/8;
    # σ² = (7·(e^−2/8)² + (7e^−2/8)²)/8 = 7e^−4/64, σ = √7·e^−2/8; z/σ = −√7 ≈ −2.646 < −2.5: masked
    expected = torch.tensor([[True, True, True, True, False], [True, True, False, True, False]])
    assert torch.equal(keep.keep, expected)
    assert keep.exclude_from_denominator
    assert m["clip_b/s_mean"].item() == pytest.approx(-E2 / 8, rel=1e-12)
    assert m["clip_b/s_std"].item() == pytest.approx(math.sqrt(7) * E2 / 8, rel=1e-12)
    assert m["clip_b/threshold"].item() == pytest.approx(-E2 / 8 - 2.5 * math.sqrt(7) * E2 / 8, rel=1e-12)
    assert m["clip_b/masked_frac"].item() == pytest.approx(1 / 8)
    assert m["clip_b/masked_frac_neg"].item() == pytest.approx(1 / 4)
    # μ = 2.7 > √7: the same token is kept
    keep, m = clip_b_mask(_inputs(*_outlier_batch()), ClipBConfig(mu=2.7))
    assert torch.equal(keep.keep, _outlier_batch()[3].bool())
    assert m["clip_b/masked_frac"].item() == 0.0


@pytest.mark.parametrize("adv", [1.0, 0.0])
def test_non_negative_advantage_is_always_kept(adv):
    # the same outlier with A > 0 (all kept) and with A = 0 (the code's keep_zero)
    keep, m = clip_b_mask(_inputs(*_outlier_batch(outlier_adv=adv)), ClipBConfig(mu=2.5))
    assert torch.equal(keep.keep, _outlier_batch()[3].bool())
    assert m["clip_b/masked_frac"].item() == 0.0
    torch.manual_seed(0)
    logp, h = -8 * torch.rand(6, 30), 3 * torch.rand(6, 30)
    mask = (torch.rand(6, 30) > 0.2).float()
    keep, _ = clip_b_mask(_inputs(logp, h, torch.full((6, 30), adv), mask), ClipBConfig(mu=0.1))
    assert torch.equal(keep.keep, mask.bool())


def test_a_response_masked_entirely_leaves_the_sequence_count():
    # row 0: 7 tokens with S = 0, A = +1; row 1: its one valid token is the outlier, A = −1
    logp, h = torch.zeros(2, 7), torch.zeros(2, 7)
    logp[1, 0], h[1, 0] = -2.0, 1.0
    mask = torch.zeros(2, 7)
    mask[0], mask[1, 0] = 1.0, 1.0
    adv = torch.tensor([[1.0] * 7, [-1.0] * 7])
    keep, m = clip_b_mask(_inputs(logp, h, adv, mask), ClipBConfig())
    assert not keep.keep[1].any() and m["clip_b/masked_frac"].item() == pytest.approx(1 / 8)
    denom = mask.bool() & keep.keep
    norm = loss_norm(denom)
    assert (norm.num_tokens, norm.num_seqs) == (7.0, 1.0)
    loss = torch.ones(2, 7)
    assert aggregate(loss * keep.keep, denom, "seq-mean-token-mean", norm).item() == pytest.approx(1.0)


def test_edge_cases():
    # no valid token: nothing kept, every statistic 0, nothing NaN
    logp, h, adv, _ = _outlier_batch()
    keep, m = clip_b_mask(_inputs(logp, h, adv, torch.zeros(2, 5)), ClipBConfig())
    assert not keep.keep.any()
    assert all(v.item() == 0.0 for v in m.values())
    # constant S (σ_S = 0 < 1e-12): every token kept, also with A < 0 and a tiny μ
    keep, m = clip_b_mask(_inputs(torch.full((1, 4), -0.5), torch.full((1, 4), 0.3), -torch.ones(1, 4),
                                  torch.ones(1, 4)), ClipBConfig(mu=1e-9))
    assert keep.keep.all() and m["clip_b/s_std"].item() < 1e-12
    # all_valid: masked tokens stay in the denominator
    keep, _ = clip_b_mask(_inputs(*_outlier_batch()), ClipBConfig(norm="all_valid"))
    assert not keep.exclude_from_denominator and int(keep.keep.sum()) == 7


def test_logp_source_rollout_reads_the_engine_logprobs():
    logp, h, adv, mask = _outlier_batch()
    rollout = logp.clone()
    logp[1, 2] = 0.0  # π_old sees no outlier, the rollout engine does
    inp = _inputs(logp, h, adv, mask, rollout_logp=rollout)
    assert clip_b_mask(inp, ClipBConfig())[0].keep.sum() == 8
    assert clip_b_mask(inp, ClipBConfig(logp_source="rollout"))[0].keep.sum() == 7
    with pytest.raises(ValueError, match="rollout_logp"):
        clip_b_mask(_inputs(*_outlier_batch()), ClipBConfig(logp_source="rollout"))


def test_needs_old_entropy_and_validates():
    inp = TokenLossInputs(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="old_entropy"):
        clip_b_mask(inp, ClipBConfig())
    for bad, key in (({"mu": 0.0}, "mu"), ({"norm": "kept"}, "norm"), ({"logp_source": "new"}, "logp_source"),
                     ({"stat_scope": "step"}, "stat_scope")):
        with pytest.raises(ValueError, match=f"algorithm.clip_b.{key}"):
            ClipBConfig(**bad)


def _random_batch(seed, n=7, t=25):
    # like a policy's tokens: 90% likely ones with low entropy (S ≈ 0 to +0.2), a tail of unlikely
    # ones (log p < −H: S < 0, down to −e^(−H−1)) from which the masked tokens come
    g = torch.Generator().manual_seed(seed)
    likely = torch.rand(n, t, generator=g) < 0.9
    logp = torch.where(likely, -0.05 * torch.rand(n, t, generator=g), -0.5 - 3 * torch.rand(n, t, generator=g))
    h = torch.where(likely, 0.2 * torch.rand(n, t, generator=g), 1.5 * torch.rand(n, t, generator=g))
    adv = torch.randn(n, 1, generator=g).expand(n, t).contiguous()
    mask = (torch.rand(n, t, generator=g) > 0.25).float()
    return logp, h, adv, mask


def test_rank_split_equals_whole_batch():
    logp, h, adv, mask = _random_batch(3)

    def run(rows, reducer):
        return clip_b_mask(_inputs(logp[rows], h[rows], adv[rows], mask[rows], reducer), ClipBConfig(mu=1.0))

    whole_keep, whole_m = run(slice(0, 7), LOCAL)
    parts = run_split(run, [slice(0, 3), slice(3, 7)])
    assert torch.equal(torch.cat([p[0].keep for p in parts]), whole_keep.keep)
    assert int((mask.bool() & ~whole_keep.keep).sum()) > 0  # the split is tested on a real selection
    for _, m in parts:  # gathered in shard order: bitwise the whole-batch statistics
        assert {k: v.item() for k, v in m.items()} == {k: v.item() for k, v in whole_m.items()}


def _official(LP, H, M, A, mu):
    """The official ClipBAdvantageFn's filtering, re-expressed (float32, population variance)."""
    S = LP.exp() * (H + LP)
    xS, m = S.to(torch.float32), M.to(torch.float32)
    n = m.sum().clamp_min(1.0)
    ES = (xS * m).sum() / n
    stdS = (((xS - ES) ** 2 * m).sum() / n).sqrt()
    z = xS - ES
    if stdS.item() < 1e-12:
        keep = torch.ones_like(M)
    else:
        keep = torch.where(A > 0, True, torch.where(A < 0, z >= -(mu * stdS), True)).to(M.dtype)
    Mc = M * keep
    return Mc, ES, stdS, 1.0 - (Mc.sum() / n).item()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_the_official_formula(seed):
    logp, h, adv, mask = _random_batch(seed, n=16, t=64)
    Mc, ES, stdS, frac = _official(logp, h, mask, adv, 2.5)
    keep, m = clip_b_mask(_inputs(logp, h, adv, mask), ClipBConfig())
    assert torch.equal(keep.keep, Mc.bool())
    assert frac > 0  # some tokens are masked
    # the official statistics are float32 sums over ~770 tokens: agreement to float32 rounding
    assert m["clip_b/s_mean"].item() == pytest.approx(ES.item(), rel=1e-6, abs=1e-7)
    assert m["clip_b/s_std"].item() == pytest.approx(stdS.item(), rel=1e-6)
    assert m["clip_b/masked_frac"].item() == pytest.approx(frac, abs=1e-6)
    # meta-test: a wrong μ changes the mask
    assert not torch.equal(clip_b_mask(_inputs(logp, h, adv, mask), ClipBConfig(mu=2.0))[0].keep, Mc.bool())


def test_objective_masks_and_the_micro_shares_add_up():
    logp, h, adv, mask = _random_batch(5, n=8, t=20)
    obj = objective(loss="ppo_clip", loss_cfg=PPOClipConfig(), masks=(("clip_b", ClipBConfig(mu=1.0)),))
    theta = (logp + 0.1 * torch.randn(8, 20)).requires_grad_()
    inp = TokenLossInputs(logp=theta, old_logp=logp, advantages=adv, mask=mask, old_entropy=h)
    whole, metrics = micro_objective(inp, obj)
    whole = whole.detach()
    keep = clip_b_mask(inp, ClipBConfig(mu=1.0))[0].keep
    denom = mask.bool() & keep
    ratio = torch.exp(theta - logp)
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    assert whole.item() == pytest.approx(float((per_token * denom).sum().detach() / denom.sum()), rel=1e-6)
    assert "clip_b/masked_frac" in metrics
    prepared = prepare_minibatch(inp, obj)
    shares = 0.0
    for rows in (slice(0, 3), slice(3, 8)):
        mb = TokenLossInputs(logp=theta[rows], old_logp=logp[rows], advantages=adv[rows], mask=mask[rows],
                             old_entropy=h[rows])
        shares += micro_objective(mb, obj, prepared.rows(rows))[0].item()
    assert shares == pytest.approx(whole.item(), rel=1e-6)


def test_config_wiring():
    from entropo.config import ConfigError, load_config

    cfg = load_config(overrides=["algorithm.token_mask=[clip_b]", "algorithm.clip_b.mu=3.0"])
    assert cfg.objective().masks == (("clip_b", ClipBConfig(mu=3.0)),)
    assert "old_entropy" in cfg.objective().needs  # keeps the separate π_old pass (not fused)
    with pytest.raises(ConfigError, match="algorithm.clip_b.mu is set, but clip_b is not in algorithm.token_mask"):
        load_config(overrides=["algorithm.clip_b.mu=3.0"])
    with pytest.raises(ConfigError, match="algorithm.clip_b.norm"):
        load_config(overrides=["algorithm.token_mask=[clip_b]", "algorithm.clip_b.norm=kept"])


def test_clip_b_reads_only_pi_old_so_needs_no_policy_prepass():
    from entropo.algorithms.configs.masks import EntropyMaskConfig

    only_clip_b = objective(loss="ppo_clip", loss_cfg=PPOClipConfig(), masks=(("clip_b", ClipBConfig()),))
    assert not only_clip_b.needs_policy_prepass  # S̄, σ_S come from π_old: no π_θ pass per mini-batch
    with_80_20 = objective(loss="ppo_clip", loss_cfg=PPOClipConfig(),
                           masks=(("clip_b", ClipBConfig()), ("high_entropy", EntropyMaskConfig())))
    assert with_80_20.needs_policy_prepass  # the 80/20 mask ranks π_θ's entropies
