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
    assert (a.reps, a.steps) == (3, 4)


def test_a_wrong_exit_code_is_an_error_not_a_number(bench):
    assert bench.timed([sys.executable, "-c", "raise SystemExit(2)"], expect=2) > 0
    with pytest.raises(SystemExit, match="exited 3, expected 0"):
        bench.timed([sys.executable, "-c", "raise SystemExit(3)"])
