"""``reward.fns`` entries: syntax, custom files in each convention, start-up errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from entropo.rewards import RewardManager, RewardSpecError
from entropo.rewards.loader import parse_entries, parse_entry
from tests.rewards.helpers import reward_cfg, sample

CUSTOM = Path(__file__).parent / "custom"
REL = os.path.relpath(CUSTOM, Path.cwd())  # entries are relative to the working directory


def test_entry_syntax():
    s = parse_entry("math")
    assert (s.label, s.target, s.weight, s.is_builtin) == ("math", "math", 1.0, True)
    assert parse_entry("format*0.1").weight == 0.1
    assert parse_entry("format*-1").weight == -1.0
    assert parse_entry("math*1e-1").weight == 0.1
    s = parse_entry("strict=rewards/a.py:score*2")
    assert s.label == "strict" and s.weight == 2.0 and s.target == f"{os.path.abspath('rewards/a.py')}:score"
    s = parse_entry("pkg.mod:fn")
    assert (s.label, s.target, s.is_builtin) == ("fn", "pkg.mod:fn", False)
    s = parse_entry({"fn": "math", "weight": 0.5, "name": "m"})
    assert (s.label, s.weight) == ("m", 0.5)


@pytest.mark.parametrize(
    ("entry", "message"),
    [("math*lots", "'math\\*lots': weight"), ("", "no function"), ("a.py:", "module:function"),
     ("bad label=math", "label")],
)
def test_bad_entries_name_themselves(entry, message):
    with pytest.raises(RewardSpecError, match=message):
        parse_entry(entry)


def test_duplicate_labels_ask_for_a_label():
    with pytest.raises(RewardSpecError, match="both named 'score'.*other="):
        parse_entries(["a.py:score", "b.py:score"])
    assert [s.label for s in parse_entries(["a.py:score", "b=b.py:score"])] == ["score", "b"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("nosuch", "'nosuch': unknown reward 'nosuch'; built-ins: .*math"),
        ("no_such_module_xyz:f", "'no_such_module_xyz:f': cannot load no_such_module_xyz: ModuleNotFoundError"),
        (f"{REL}/missing.py:f", "missing.py:f': cannot load .*no file"),
        (f"{REL}/native_style.py:nothing", "native_style.py:nothing': .* has no function 'nothing'"),
        (f"{REL}/native_style.py:two_args", "two_args': cannot tell the calling convention"),
        ("tests.rewards.custom.native_style:_LEAK", "has no function '_LEAK'"),
    ],
)
def test_start_up_errors_name_the_entry(entry, message):
    with pytest.raises(RewardSpecError, match=message):
        RewardManager(reward_cfg([entry]))


def test_syntax_error_in_a_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(sample):\n  return (\n")
    with pytest.raises(RewardSpecError, match="bad.py:f': cannot load .*SyntaxError"):
        RewardManager(reward_cfg([f"{bad}:f"]))


def test_each_convention_loaded_by_path():
    fns = [f"{REL}/verl_style.py:compute_score", f"{REL}/trl_style.py:length_match",
           f"{REL}/native_style.py:score", f"native_async={REL}/async_style.py:native",
           f"verl_async={REL}/async_style.py:compute_score", f"trl_async={REL}/async_style.py:trl",
           f"{REL}/native_style.py:group_share"]
    samples = [sample("ab", "ab", group=0), sample("xy", "ab", group=0), sample("ab", "ab", group=1),
               sample("abc", None, group=1)]
    with RewardManager(reward_cfg(fns, workers=2)) as rm:
        res = rm.score(samples)
    c = {k: v.tolist() for k, v in res.components.items()}
    assert c["compute_score"] == [1, 0, 1, 0]
    assert c["length_match"] == [1, 1, 1, 0]  # None for the sample without ground truth -> fallback 0
    assert c["score"] == [1, 0, 1, 0]
    assert c["native_async"] == [1, 0, 1, 0]
    assert c["verl_async"] == [1, 0, 1, 0]
    assert c["trl_async"] == [2, 2, 2, 3]
    assert c["group_share"] == [0.5, 0.5, 0.5, 0.5]
    assert res.metrics["reward/skipped"] == 1.0 and res.metrics["reward/errors"] == 0.0
    assert res.correct.tolist() == [1, 0, 1, 0]  # native 'score' is the first to report acc
    assert res.rewards.tolist() == pytest.approx([sum(c[k][i] for k in c) for i in range(4)])


def test_module_entries_weights_dict_extras_and_columns():
    fns = ["tests.rewards.custom.verl_style:compute_score*0.5",
           "tests.rewards.custom.trl_style:uses_columns"]
    samples = [sample("a", "a", data_source="as_dict", extra_info={"level": 3}),
               sample("b", "a", data_source="x", extra_info={"level": 1})]
    with RewardManager(reward_cfg(fns)) as rm:
        res = rm.score(samples)
    assert res.components["compute_score"].tolist() == [1.0, 0.0]  # 0.5 * {2.0, 0.0}
    assert res.components["uses_columns"].tolist() == [3.0, 1.0]
    assert res.correct.tolist() == [1.0, 1.0]  # first: acc from the dict; second: reward 1 > 0
    assert res.metrics["reward/compute_score/bonus"] == 0.5  # numeric extras are averaged
