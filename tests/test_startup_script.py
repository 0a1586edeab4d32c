"""The pure parts of benchmarks/startup.py (the timings themselves are the benchmark's)."""

from __future__ import annotations

import sys

import pytest

from tests.script_module import load


@pytest.fixture(scope="module")
def bench():
    return load("benchmarks/startup.py")


def test_defaults_are_the_issues_measurement(bench):
    a = bench.parse_args([])
    assert (a.reps, a.steps, a.config_only) == (3, 4, False)


def test_the_config_cases_are_the_issues_errors_and_a_valid_recipe(bench, tmp_path):
    cases = bench.config_cases(tmp_path)
    assert sum(expect == 2 for _, expect in cases.values()) == 6
    assert (tmp_path / "syntax.yaml").is_file() and (tmp_path / "list.yaml").is_file()
    assert not (tmp_path / "missing.yaml").exists()


def test_a_wrong_exit_code_is_an_error_not_a_number(bench):
    assert bench.timed([sys.executable, "-c", "raise SystemExit(2)"], expect=2) > 0
    with pytest.raises(SystemExit, match="exited 3, expected 0"):
        bench.timed([sys.executable, "-c", "raise SystemExit(3)"])
