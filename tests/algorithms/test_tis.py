"""Rollout importance sampling weights (TIS / token MIS), by hand."""


import pytest
import torch

from entropo.algorithms.configs.losses import PPOClipConfig
from entropo.algorithms.configs.weights import TisConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.objective import micro_objective
from entropo.algorithms.registry import TOKEN_WEIGHTS
from entropo.algorithms.weights.tis import rollout_is_weights
from tests.fake_ranks import run_split
from tests.objectives import objective

# π_old / π_roll per token: 0.5, 1, 1.5, 3, 10 (the last one masked out)
RATIO = [0.5, 1.0, 1.5, 3.0, 10.0]


def _inp(mask=(1, 1, 1, 1, 0)):
    roll = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1, 0.05]], dtype=torch.float64))
    old = roll + torch.log(torch.tensor([RATIO], dtype=torch.float64))
    m = torch.tensor([mask], dtype=torch.float64)
    return TokenLossInputs(logp=old.clone(), old_logp=old, advantages=torch.ones_like(old), mask=m, rollout_logp=roll)


def test_truncate_by_hand():
    w, m = rollout_is_weights(_inp(), TisConfig(cap=2.0))
    torch.testing.assert_close(w, torch.tensor([[0.5, 1.0, 1.5, 2.0, 0.0]], dtype=torch.float64), atol=1e-12, rtol=0)
    assert float(m["tis/weight_mean"]) == pytest.approx((0.5 + 1 + 1.5 + 2) / 4)
    assert float(m["tis/ratio_mean"]) == pytest.approx((0.5 + 1 + 1.5 + 3) / 4)
    assert float(m["tis/over_cap_frac"]) == pytest.approx(0.25)


def test_mask_by_hand():
    w, m = rollout_is_weights(_inp(), TisConfig(cap=2.0, mode="mask"))
    torch.testing.assert_close(w, torch.tensor([[0.5, 1.0, 1.5, 0.0, 0.0]], dtype=torch.float64), atol=1e-12, rtol=0)
    assert float(m["tis/weight_mean"]) == pytest.approx(3.0 / 4)


def test_equal_policies_give_unit_weights_and_huge_ratios_stay_finite():
    inp = _inp()
    same = TokenLossInputs(inp.logp, inp.old_logp, inp.advantages, inp.mask, rollout_logp=inp.old_logp)
    w, _ = rollout_is_weights(same, TisConfig())
    torch.testing.assert_close(w, inp.mask)
    far = TokenLossInputs(inp.logp, inp.old_logp + 500.0, inp.advantages, inp.mask, rollout_logp=inp.rollout_logp)
    for mode in ("truncate", "mask"):
        w, m = rollout_is_weights(far, TisConfig(mode=mode))
        assert torch.isfinite(w).all() and all(torch.isfinite(v) for v in m.values())


def test_objective_multiplies_the_token_loss():
    """On-policy π_θ = π_old: ppo_clip's token loss is −A; weighted: −A·w, token-mean over 4 tokens."""
    obj = objective(loss="ppo_clip", loss_cfg=PPOClipConfig(), weights=(("tis", TisConfig(cap=2.0)),))
    loss, metrics = micro_objective(_inp(), obj)
    assert float(loss) == pytest.approx(-(0.5 + 1.0 + 1.5 + 2.0) / 4)
    assert "tis/weight_mean" in metrics
    assert "rollout_logp" in obj.needs


def test_rank_split_equals_whole():
    inp = _inp(mask=(1, 1, 1, 1, 1))
    rows = torch.cat([inp.old_logp] * 3)
    roll = torch.cat([inp.rollout_logp] * 3)
    mask = torch.ones_like(rows)

    def run(s, reducer):
        x = TokenLossInputs(rows[s], rows[s], torch.ones_like(rows[s]), mask[s], reducer=reducer, rollout_logp=roll[s])
        return rollout_is_weights(x, TisConfig())[0]

    whole = run(slice(0, 3), None)
    parts = run_split(run, [slice(0, 1), slice(1, 3)])
    torch.testing.assert_close(torch.cat(parts), whole, atol=0, rtol=0)


def test_registered_and_validated():
    entry = TOKEN_WEIGHTS.get("tis")
    assert entry.fn is rollout_is_weights and entry.needs == frozenset({"rollout_logp"})
    with pytest.raises(ValueError, match="cap"):
        TisConfig(cap=0.0)
    with pytest.raises(ValueError, match="mode"):
        TisConfig(mode="clip")
    with pytest.raises(ValueError, match="rollout log-probs"):
        inp = _inp()
        rollout_is_weights(TokenLossInputs(inp.logp, inp.old_logp, inp.advantages, inp.mask), TisConfig())
