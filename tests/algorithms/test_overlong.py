"""DAPO overlong reward shaping and filtering (arXiv 2503.14476)."""

from __future__ import annotations

import pytest
import torch

from entropo.algorithms.aggregate import loss_norm
from entropo.algorithms.configs.dapo import OverlongConfig
from entropo.algorithms.overlong import filter_truncated, overlong_metrics, overlong_penalty

L_MAX = 20480
DAPO = OverlongConfig(enable=True, cache_len=4096, penalty_factor=1.0)


def test_spec_numbers():
    # L_max − L_cache = 16384. 16000 and 16384 are not over it; 18432 is 2048 over → −2048/4096
    # = −0.5; 20480 is 4096 over → −1.0.
    lengths = torch.tensor([16000, 16384, 18432, 20480])
    penalty = overlong_penalty(lengths, L_MAX, DAPO)
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -0.5, -1.0]), rtol=0, atol=1e-7)
    assert penalty.dtype == torch.float32


def test_penalty_factor_and_loop_reference():
    cfg = OverlongConfig(cache_len=40, penalty_factor=0.5)
    lengths = torch.arange(0, 101)
    expected = torch.tensor([min(-(n - 60) / 40 * 0.5, 0.0) for n in range(101)])
    torch.testing.assert_close(overlong_penalty(lengths, 100, cfg), expected, rtol=0, atol=1e-7)


def test_float_lengths_keep_dtype():
    penalty = overlong_penalty(torch.tensor([18432.0], dtype=torch.float64), L_MAX, DAPO)
    assert penalty.dtype == torch.float64
    torch.testing.assert_close(penalty, torch.tensor([-0.5], dtype=torch.float64))


def test_filter_truncated_zeros_rows_and_drops_them_from_seq_count():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    truncated = torch.tensor([True, False, False])
    filtered = filter_truncated(mask, truncated)
    assert torch.equal(filtered, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    norm = loss_norm(filtered)
    assert (norm.num_tokens, norm.num_seqs) == (3.0, 2.0)
    bool_mask = filter_truncated(mask.bool(), truncated)
    assert bool_mask.dtype == torch.bool and torch.equal(bool_mask, filtered.bool())


def test_metrics():
    lengths = torch.tensor([16000, 16384, 18432, 20480])
    metrics = overlong_metrics(lengths, L_MAX, DAPO, truncated=torch.tensor([False, False, False, True]))
    # Over 16384: 18432 and 20480 → 2/4; mean R_len = (0 + 0 − 0.5 − 1)/4 = −0.375.
    expected = {
        "reward/overlong_frac": 0.5,
        "reward/overlong_penalty_mean": -0.375,
        "reward/truncated_frac": 0.25,
    }
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(metrics[key], torch.tensor(value), msg=key)
    assert "reward/truncated_frac" not in overlong_metrics(lengths, L_MAX, DAPO)


def test_config_validation():
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(torch.tensor([1]), 100, OverlongConfig(cache_len=200))
    with pytest.raises(ValueError, match="algorithm.overlong.cache_len"):
        OverlongConfig(cache_len=0)
    with pytest.raises(ValueError, match="algorithm.overlong.penalty_factor"):
        OverlongConfig(cache_len=10, penalty_factor=-1.0)


def test_meta_wrong_value_fails():
    penalty = overlong_penalty(torch.tensor([18432]), L_MAX, DAPO)
    # Dividing by L_max instead of L_cache gives −0.1; the test's tolerance must reject it.
    with pytest.raises(AssertionError):
        torch.testing.assert_close(penalty, torch.tensor([-2048 / 20480]), rtol=0, atol=1e-7)
