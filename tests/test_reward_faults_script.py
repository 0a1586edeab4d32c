"""The pure parts of benchmarks/reward_faults.py and its faulty functions (the runs themselves
are the benchmark's)."""

from __future__ import annotations

import math

import pytest

from tests.script_module import load


@pytest.fixture(scope="module")
def bench():
    return load("benchmarks/reward_faults.py")


@pytest.fixture(scope="module")
def faulty():
    return load("benchmarks/faulty_rewards.py")


def test_every_kind_has_a_function_and_misbehaves_on_about_one_in_eight(bench, faulty):
    assert all(callable(getattr(faulty, kind)) for kind in bench.KINDS)
    texts = [f"<think>{i}</think>{i * 7}" for i in range(4000)]
    share = sum(faulty._hit(t) for t in texts) / len(texts)
    assert abs(share - 0.125) < 0.02  # CRC-32 spreads the responses evenly
    hit = next(t for t in texts if faulty._hit(t))
    miss = next(t for t in texts if not faulty._hit(t))
    with pytest.raises(ValueError):
        faulty.raises("s", hit, "1")
    assert faulty.raises("s", miss, "1") == 0.0 and math.isnan(faulty.nan("s", hit, "1"))
    assert faulty.string("s", hit, "1") == "0.5" and faulty.inf("s", hit, "1") == math.inf


def test_the_table_gives_each_kind_its_ratio_to_the_well_behaved_run(bench):
    errors = {k.split("/")[-1]: 0.0 for k in bench.ERROR_KEYS}
    results = [{"kind": "ok", "rc": 0, "steps": 3, "seconds": 2.0, "wall": 40.0, "errors": errors, "line": ""},
               {"kind": "hangs", "rc": 0, "steps": 3, "seconds": 5.0, "wall": 50.0, "errors": {**errors, "timeout": 8.0},
                "line": ""},
               {"kind": "most", "rc": 2, "steps": 0, "seconds": 0.0, "wall": 30.0, "errors": errors,
                "line": "entropo: reward 'most' failed on 58/64 samples of step 1"}]
    lines = bench.table(results)
    assert lines[2].startswith("| ok | 0 | 3 | 2.0 | 1.00 | 40.0 | 1.00 |")
    assert lines[3].startswith("| hangs | 0 | 3 | 5.0 | 2.50 | 50.0 | 1.25 |") and "| 8 |" in lines[3]
    assert "| nan |" in lines[4] and "failed on 58/64" in lines[4]  # a stopped run has no ratio


def test_unknown_kinds_are_refused(bench):
    with pytest.raises(SystemExit, match="unknown bogus"):
        bench.main(["--kinds", "raises,bogus"])
