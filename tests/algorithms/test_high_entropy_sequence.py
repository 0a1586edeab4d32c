"""EARL's per-response high-entropy mask: ``algorithm.high_entropy.stat_scope=sequence``."""

import pytest
import torch

from entropo.algorithms.configs.losses import PPOClipConfig
from entropo.algorithms.configs.masks import EntropyMaskConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.masks.high_entropy import high_entropy_mask, per_response_top_mask
from entropo.algorithms.objective import micro_objective, prepare_minibatch
from entropo.algorithms.reduce import LOCAL
from entropo.algorithms.select import top_count
from tests.fake_ranks import run_split
from tests.objectives import objective

PAD = 99.0  # padding holds a huge entropy: selecting it would be visible

# row 0: 6 valid tokens, ρ = 0.2: k = ⌊1.2 + 0.9999⌋ = 2 → H = 3.0 (pos 3) and 2.0 (pos 1)
# row 1: 1 valid token: k = max(1, ⌊0.2 + 0.9999⌋) = 1 → kept
# row 2: 5 tied tokens: k = ⌊1.0 + 0.9999⌋ = 1 → the earliest (pos 0)
# row 3: no valid token → nothing
H = torch.tensor([
    [0.5, 2.0, 1.0, 3.0, 0.1, 0.7, PAD, PAD],
    [0.05, PAD, PAD, PAD, PAD, PAD, PAD, PAD],
    [1.0, 1.0, 1.0, 1.0, 1.0, PAD, PAD, PAD],
    [PAD] * 8,
])
LENGTHS = torch.tensor([6, 1, 5, 0])
MASK = (torch.arange(8) < LENGTHS[:, None]).float()


def _mask(entropy, mask, reducer=LOCAL, **cfg):
    z = torch.zeros_like(entropy)
    inp = TokenLossInputs(z, z, z, mask, entropy=entropy, reducer=reducer)
    return high_entropy_mask(inp, EntropyMaskConfig(stat_scope="sequence", **cfg))


def test_hand_computed_with_padding_single_token_and_ties():
    keep, m = _mask(H, MASK, rho=0.2)
    assert keep.keep.nonzero().tolist() == [[0, 1], [0, 3], [1, 0], [2, 0]]
    assert keep.exclude_from_denominator
    # thresholds 2.0, 0.05, 1.0 (row 3 has none): mean 3.05 / 3
    assert m["entropy_mask/threshold"].item() == pytest.approx(3.05 / 3)
    assert m["entropy_mask/keep_frac"].item() == pytest.approx(4 / 12)
    # kept: 2.0, 3.0, 0.05, 1.0; dropped: 0.5, 1.0, 0.1, 0.7, 1.0 ×4
    assert m["entropy_mask/kept_entropy_mean"].item() == pytest.approx(6.05 / 4)
    assert m["entropy_mask/dropped_entropy_mean"].item() == pytest.approx(6.3 / 8)
    # ρ = 0.4: row 0 k = ⌊2.4 + 0.9999⌋ = 3 (adds H = 1.0 at pos 2), row 2 k = 2 (pos 0, 1)
    keep, _ = _mask(H, MASK, rho=0.4)
    assert keep.keep.nonzero().tolist() == [[0, 1], [0, 2], [0, 3], [1, 0], [2, 0], [2, 1]]
    # ρ = 1 keeps every valid token and no padding
    assert torch.equal(_mask(H, MASK, rho=1.0)[0].keep, MASK.bool())


def test_per_response_is_not_the_batch_selection():
    # the 80/20 rule's contrast: per response top-20% gives {6} and {0.5}; pooled would give {6, 5}
    h = torch.tensor([[2.0, 3.0, 4.0, 5.0, 6.0], [0.1, 0.2, 0.3, 0.4, 0.5]])
    keep, _ = _mask(h, torch.ones(2, 5), rho=0.2)
    assert keep.keep.nonzero().tolist() == [[0, 4], [1, 4]]


def _reference(entropy, mask, rho):
    """Slow reference: one response at a time, stable sort (earliest first among ties)."""
    keep = torch.zeros_like(mask, dtype=torch.bool)
    for i in range(len(mask)):
        idx = mask[i].bool().nonzero().flatten().tolist()
        ranked = sorted(idx, key=lambda j: -float(entropy[i, j]))  # sorted() is stable
        for j in ranked[:top_count(rho, len(idx))]:
            keep[i, j] = True
    return keep


@pytest.mark.parametrize("rho", [0.05, 0.2, 0.5, 1.0])
def test_fast_equals_the_slow_reference(rho):
    torch.manual_seed(7)
    h = torch.rand(9, 31).round(decimals=1)  # many ties on purpose
    lengths = torch.tensor([0, 1, 2, 5, 31, 17, 3, 30, 9])
    mask = (torch.arange(31) < lengths[:, None]).float()
    keep, _ = per_response_top_mask(h, mask, rho)
    assert torch.equal(keep, _reference(h, mask, rho))
    assert torch.equal(keep.sum(-1), torch.tensor([top_count(rho, int(n)) for n in lengths]))


class _NoCollective:
    """A reducer that fails if used: the sequence scope must need no cross-rank statistic."""

    def sum(self, x):
        raise AssertionError("sequence scope called reducer.sum")

    def gather(self, x):
        raise AssertionError("sequence scope called reducer.gather")


def test_rank_split_equals_whole_batch_without_collectives():
    torch.manual_seed(3)
    h = torch.rand(7, 20).round(decimals=1)
    mask = (torch.rand(7, 20) > 0.3).float()
    whole = _mask(h, mask, reducer=_NoCollective(), rho=0.2)[0].keep
    parts = run_split(lambda rows, reducer: _mask(h[rows], mask[rows], reducer=reducer, rho=0.2)[0].keep,
                      [slice(0, 4), slice(4, 7)])
    assert torch.equal(torch.cat(parts), whole)


def test_prepared_once_per_minibatch_with_global_denominators():
    # sequence scope is decided in prepare_minibatch, so norm=selected counts |S| over the whole
    # mini-batch and the micro-batch shares add up to the whole loss (no objective/micro_norm)
    torch.manual_seed(0)
    n, t = 6, 10
    mask = (torch.arange(t) < torch.tensor([10, 3, 7, 1, 8, 5])[:, None]).float()
    old = -torch.rand(n, t)
    theta = (old + 0.1 * torch.randn(n, t)).requires_grad_()
    adv = torch.randn(n, 1).expand(n, t)
    h = torch.rand(n, t)
    obj = objective(loss="ppo_clip", loss_cfg=PPOClipConfig(),
                    masks=(("high_entropy", EntropyMaskConfig(stat_scope="sequence")),))
    assert obj.needs_policy_prepass and obj.inert_at_zero_advantage
    inp = TokenLossInputs(logp=theta, old_logp=old, advantages=adv, mask=mask, entropy=h)
    prepared = prepare_minibatch(inp, obj)
    assert prepared.mask_keeps[0] is not None and prepared.norm is not None
    assert prepared.norm.num_tokens == float(per_response_top_mask(h, mask, 0.2)[0].sum())
    whole, _ = micro_objective(inp, obj)
    shares = 0.0
    for rows in (slice(0, 2), slice(2, 6)):
        mb = TokenLossInputs(logp=theta[rows], old_logp=old[rows], advantages=adv[rows], mask=mask[rows],
                             entropy=h[rows])
        share, metrics = micro_objective(mb, obj, prepared.rows(rows))
        assert "objective/micro_norm" not in metrics
        shares += share.item()
    assert shares == pytest.approx(whole.item(), rel=1e-6)


def test_config_accepts_sequence_and_names_the_key():
    assert EntropyMaskConfig(stat_scope="sequence").stat_scope == "sequence"
    with pytest.raises(ValueError, match="algorithm.high_entropy.stat_scope"):
        EntropyMaskConfig(stat_scope="group")


def test_config_loads_the_sequence_scope():
    from entropo.config import ConfigError, load_config

    cfg = load_config(overrides=["algorithm.token_mask=[high_entropy]", "algorithm.high_entropy.stat_scope=sequence"])
    assert cfg.objective().masks[0][1].stat_scope == "sequence"
    with pytest.raises(ConfigError, match="algorithm.high_entropy.stat_scope"):
        load_config(overrides=["algorithm.high_entropy.stat_scope=step"])
