"""UloRL DMMPT token mask (arXiv 2507.19766): hand-computed numbers, gate, σ validation, denominator exclusion."""

from __future__ import annotations

import math

import pytest
import torch

from entropo.algorithms.aggregate import aggregate, loss_norm
from entropo.algorithms.configs.losses import PPOClipConfig
from entropo.algorithms.configs.masks import DmmptConfig
from entropo.algorithms.losses.base import TokenLossInputs
from entropo.algorithms.masks.dmmpt import dmmpt_mask
from entropo.algorithms.objective import micro_objective
from entropo.algorithms.registry import TOKEN_MASKS
from tests.objectives import objective


def _inp(p, adv, step_entropy, mask=None):
    logp = torch.tensor([p], dtype=torch.float64).log()
    mask = torch.ones_like(logp) if mask is None else mask
    return TokenLossInputs(logp, logp.clone(), torch.tensor([adv], dtype=torch.float64), mask,
                           step_entropy=step_entropy)


# Hand case: τ = 0.99, σ = 0.3. Two positive-response tokens with p = [0.995, 0.5] and one
# negative-response token with p = 0.999.
SPEC_P = [0.995, 0.5, 0.999]
SPEC_A = [1.0, 1.0, -1.0]
CFG = DmmptConfig(tau=0.99, sigma=0.3)


def test_spec_l7_gate_on():
    # H̄ = 0.25 < σ: the gate is on. 0.995 ≥ 0.99 and A > 0 → masked; 0.5 < τ → kept;
    # 0.999 is in a negative response → kept.
    keep, metrics = dmmpt_mask(_inp(SPEC_P, SPEC_A, 0.25), CFG)
    assert keep.keep.tolist() == [[False, True, True]]
    assert keep.exclude_from_denominator
    assert metrics["dmmpt/gate_active"].item() == 1.0
    assert metrics["dmmpt/masked_frac"].item() == pytest.approx(1 / 3)
    assert metrics["dmmpt/step_entropy"].item() == pytest.approx(0.25)
    assert metrics["dmmpt/sigma"].item() == pytest.approx(0.3)


def test_spec_l7_gate_off():
    # H̄ = 0.35 ≥ σ: nothing is masked.
    keep, metrics = dmmpt_mask(_inp(SPEC_P, SPEC_A, 0.35), CFG)
    assert keep.keep.tolist() == [[True, True, True]]
    assert metrics["dmmpt/gate_active"].item() == 0.0
    assert metrics["dmmpt/masked_frac"].item() == 0.0
    assert metrics["dmmpt/mastered_frac"].item() == pytest.approx(1 / 3)


def test_boundaries_and_padding():
    # p = τ exactly counts as mastered (≥); H̄ = σ does not open the gate (strict <); A = 0 is
    # not positive; padding is never kept.
    tau = 0.5
    keep, _ = dmmpt_mask(_inp([tau, 0.9], [1.0, 0.0], 0.1), DmmptConfig(tau=tau, sigma=0.3))
    assert keep.keep.tolist() == [[False, True]]
    keep, _ = dmmpt_mask(_inp([tau], [1.0], 0.3), DmmptConfig(tau=tau, sigma=0.3))
    assert keep.keep.tolist() == [[True]]
    keep, metrics = dmmpt_mask(_inp(SPEC_P, SPEC_A, 0.25, mask=torch.tensor([[1, 1, 0.0]])), CFG)
    assert keep.keep.tolist() == [[False, True, False]]
    # All masked: nothing kept, finite metrics.
    keep, metrics = dmmpt_mask(_inp(SPEC_P, SPEC_A, 0.25, mask=torch.zeros(1, 3)), CFG)
    assert not keep.keep.any() and all(torch.isfinite(v) for v in metrics.values())


def test_mask_carries_no_gradient():
    inp = _inp(SPEC_P, SPEC_A, 0.25)
    inp.logp.requires_grad_(True)
    keep, _ = dmmpt_mask(inp, CFG)
    assert not keep.keep.requires_grad


def test_excluded_tokens_leave_the_denominator():
    # ℓ = [1, 2, 3]; the first token is masked and excluded: token-mean = (2 + 3)/2 = 2.5.
    keep, _ = dmmpt_mask(_inp(SPEC_P, SPEC_A, 0.25), CFG)
    loss = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    denom = torch.ones(1, 3).bool() & keep.keep
    assert aggregate(loss * keep.keep, denom, "token-mean", loss_norm(denom)).item() == pytest.approx(2.5)


def test_composes_in_the_objective():
    # ppo_clip at r = 1: ℓ = −A = [−1, −1, 1]; DMMPT drops token 0 from numerator and
    # denominator: L = (−1 + 1)/2 = 0 (without the mask: (−1 − 1 + 1)/3 = −1/3).
    inp = _inp(SPEC_P, SPEC_A, 0.25)
    obj = objective(loss="ppo_clip", loss_cfg=PPOClipConfig(), masks=(("dmmpt", CFG),))
    loss, _ = micro_objective(inp, obj)  # global scope: the mask's metrics stay in Prepared
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    off, _ = micro_objective(_inp(SPEC_P, SPEC_A, 0.35), obj)
    assert off.item() == pytest.approx(-1 / 3)


def test_sigma_has_no_default_and_is_checked_at_use():
    cfg = DmmptConfig()  # the config schema builds every method's defaults: must not raise
    assert cfg.sigma is None and cfg.tau == 0.99
    with pytest.raises(ValueError, match=r"algorithm\.dmmpt\.sigma must be set"):
        cfg.validate()
    with pytest.raises(ValueError, match=r"algorithm\.dmmpt\.sigma must be set"):
        dmmpt_mask(_inp(SPEC_P, SPEC_A, 0.25), cfg)
    CFG.validate()  # set: fine
    with pytest.raises(ValueError, match="inputs.step_entropy"):
        dmmpt_mask(_inp(SPEC_P, SPEC_A, None), CFG)
    with pytest.raises(ValueError, match=r"algorithm\.dmmpt\.tau"):
        DmmptConfig(tau=0.0)
    with pytest.raises(ValueError, match=r"algorithm\.dmmpt\.sigma must be >= 0"):
        DmmptConfig(sigma=-1.0)


def test_registered():
    entry = TOKEN_MASKS.get("dmmpt")
    assert entry.fn is dmmpt_mask and entry.config_cls is DmmptConfig


def test_step_entropy_may_be_a_tensor():
    keep, _ = dmmpt_mask(_inp(SPEC_P, SPEC_A, torch.tensor(0.25)), CFG)
    assert keep.keep.tolist() == [[False, True, True]]


def test_meta_a_wrong_value_fails():
    keep, _ = dmmpt_mask(_inp([math.nextafter(0.99, 0.0)], [1.0], 0.25), CFG)
    with pytest.raises(AssertionError):
        assert keep.keep.tolist() == [[False]]  # just below τ is kept, so this must fail
