"""AEPO (arXiv 2510.08141): temperature switch, number of injected samples, the row replacement plan."""

from __future__ import annotations

import pytest
import torch

from entropo.algorithms.aepo import (
    AEPO_INITIAL_ENTROPY,
    aepo_entropy_estimate,
    aepo_mix,
    aepo_num_injected,
    aepo_num_prompts,
    aepo_temperature,
)
from entropo.algorithms.configs.sampling import AepoConfig
from tests.fake_ranks import run_split


def test_temperature_spec_cases():
    # Ĥ = 0.4 ≤ 0.5 → T' = 1.2; Ĥ = 0.6 > 0.5 → T' = 0.8; Ĥ = H_tgt counts as low (code: <=).
    assert aepo_temperature(0.4, 0.5, T_high=1.2, T_low=0.8) == 1.2
    assert aepo_temperature(0.6, 0.5, T_high=1.2, T_low=0.8) == 0.8
    assert aepo_temperature(0.5, 0.5, T_high=1.2, T_low=0.8) == 1.2
    # Before the first update the code's Ĥ is 0: T_high.
    assert aepo_temperature(AEPO_INITIAL_ENTROPY, 0.5, T_high=1.5, T_low=0.8) == 1.5
    with pytest.raises(ValueError, match="finite"):
        aepo_temperature(float("nan"), 0.5, T_high=1.2, T_low=0.8)


def test_num_injected():
    # Ĥ = 0.6 > 0.5, 90 positives: ⌊min(60, 90)/2⌋ = 30.
    assert aepo_num_injected(0.6, 0.5, 60, 90) == 30
    assert aepo_num_injected(0.4, 0.5, 60, 90) == 60
    assert aepo_num_injected(0.4, 0.5, 60, 41) == 41
    assert aepo_num_injected(0.6, 0.5, 60, 41) == 20  # ⌊41/2⌋
    assert aepo_num_injected(0.6, 0.5, 60, 0) == 0


def test_spec_mix_512_rows():
    # 200 re-generated responses (40 prompts × 5): the 90 even rows 0..178 have A > 0.05.
    # Exactly 0.05 is not positive (strict >).
    adv = torch.full((200,), -0.3)
    positive_rows = torch.arange(0, 180, 2)  # 90 rows
    adv[positive_rows] = 0.7
    adv[1] = 0.05
    n_s = aepo_num_injected(0.6, 0.5, 60, int((adv > 0.05).sum()))
    assert n_s == 30
    plan, m = aepo_mix(512, adv, n_s, positive_threshold=0.05)
    assert torch.equal(plan.target_rows, torch.arange(30))  # rows 0–29 are replaced
    assert torch.equal(plan.source_rows, positive_rows[:30])  # by the first 30 positives
    assert torch.equal(plan.advantages, torch.ones(30))  # with A ≡ 1
    assert m["aepo/n_positive"] == 90 and m["aepo/n_injected"] == 30
    torch.testing.assert_close(m["aepo/injected_frac"], torch.tensor(30 / 512))


def test_mix_edge_cases():
    plan, _ = aepo_mix(8, torch.zeros(5), 0, positive_threshold=0.05)  # no positives: nothing replaced
    assert plan.target_rows.numel() == 0 and plan.source_rows.numel() == 0
    with pytest.raises(ValueError, match="n_s"):
        aepo_mix(8, torch.tensor([1.0, 1.0]), 3, positive_threshold=0.05)  # more than the positives
    with pytest.raises(ValueError, match="n_s"):
        aepo_mix(2, torch.ones(5), 3, positive_threshold=0.05)  # more than the batch


def test_num_prompts():
    assert aepo_num_prompts(128, 0.25) == 32
    assert aepo_num_prompts(130, 0.25) == 32  # the code's len // 4
    assert aepo_num_prompts(10, 1.0) == 10


def test_entropy_estimate_and_two_ranks():
    # −mean log π over valid tokens: logp = [−1, −2 | −4, (pad)] → (1 + 2 + 4)/3 = 7/3.
    logp = torch.tensor([[-1.0, -2.0], [-4.0, -50.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    torch.testing.assert_close(aepo_entropy_estimate(logp, mask), torch.tensor(7 / 3, dtype=torch.float64))
    results = run_split(lambda s, r: aepo_entropy_estimate(*s, reducer=r), [(logp[:1], mask[:1]), (logp[1:], mask[1:])])
    for value in results:
        torch.testing.assert_close(value, torch.tensor(7 / 3, dtype=torch.float64), rtol=0, atol=1e-15)


def test_config():
    cfg = AepoConfig()
    assert (cfg.T_high, cfg.T_low, cfg.entropy_target, cfg.reinforce_sample_num) == (1.2, 0.8, 0.5, 60)
    assert (cfg.positive_threshold, cfg.prompt_fraction) == (0.05, 0.25)
    for bad in ({"T_low": 0.0}, {"reinforce_sample_num": -1}, {"prompt_fraction": 0.0}):
        with pytest.raises(ValueError, match="algorithm.aepo"):
            AepoConfig(**bad)


def test_meta_wrong_value_fails():
    # Halving before the cap (min(60, 90/2) = 45) instead of after (30) must be caught.
    with pytest.raises(AssertionError):
        assert aepo_num_injected(0.6, 0.5, 60, 90) == min(60, 90 // 2)
