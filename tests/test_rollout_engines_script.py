"""The pure parts of benchmarks/rollout_engines.py: its arguments and model sizes (the run
itself, a few minutes, is the benchmark's)."""

from __future__ import annotations

import pytest

from tests.script_module import load


@pytest.fixture(scope="module")
def bench():
    return load("benchmarks/rollout_engines.py")


def test_defaults_are_the_issues_measurement(bench):
    a = bench.parse_args([])
    assert (a.prompts, a.n, a.temperature, a.max_new_tokens) == (24, 8, 0.7, 64)
    assert a.sizes.split(",") == ["tiny", "25M", "100M"]


def test_model_sizes_are_about_what_they_are_named(bench, tmp_path):
    from transformers import AutoConfig

    for size, params in (("25M", 25e6), ("100M", 100e6)):
        kw = bench.SIZES[size]
        h, i, n = kw["hidden_size"], kw["intermediate_size"], kw["num_layers"]
        # per layer: q, k, v, o (h x h each, no grouped heads) and the MLP's 3 h x i matrices
        assert abs(n * (4 * h * h + 3 * h * i) / params - 1) < 0.1
        assert h // kw["num_heads"] >= 32  # vLLM's CPU attention
    path = bench.model_path("25M", tmp_path)
    assert AutoConfig.from_pretrained(path).hidden_size == 512


def test_unknown_size_is_refused(bench, capsys):
    assert bench.main(["--sizes", "tiny,7B"]) == 2
    assert "7B" in capsys.readouterr().err
