"""``countdown``, ``format`` and ``embedded``: hand-made cases, edge cases included."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from entropo.data import embedded
from entropo.rewards.configs import CountdownConfig, FormatConfig
from entropo.rewards.countdown import build_countdown, check, extract_equation, parse_ground_truth
from entropo.rewards.embedded import embedded_reward
from entropo.rewards.registry import RewardContext, get, names
from entropo.rewards.think_format import build_format, well_formed
from tests.rewards.helpers import sample

GT = json.dumps({"target": 24, "numbers": [3, 5, 7, 9]})


@pytest.mark.parametrize(
    ("equation", "ok"),
    [
        ("(9 - 5) * (7 - 3)", False),  # every number once, but = 16
        ("(9 - 7) * (5 + 3) + 0", False),  # 0 is not given
        ("(7 - 5) * 9 + 3 * 2", False),  # 2 is not given
        ("3 * (9 - 7 + 5) + 3", False),  # 3 twice
        ("9 * 3 - 7 + 5", False),  # 27 - 7 + 5 = 25
        ("(9 + 7) * 3 / 2", False),
        ("9 + 7 + 5 + 3", True),  # = 24
        ("3 * (5 + 7) - 9 - 3", False),
        ("(5 - 3) ** 9", False),  # ** is not allowed
        ("__import__('os')", False),
        ("9 / (5 - 5) + 7 + 3", False),
    ],
)
def test_countdown_rules(equation, ok):
    target, numbers = parse_ground_truth(GT)
    assert check(equation, target, numbers, use_all_numbers=True) is ok


def test_countdown_exact_fractions_and_subsets():
    # 8 / (3 - 8/3) = 24 only in exact arithmetic
    assert check("8 / (3 - 8 / 3)", Fraction(24), [8, 3, 8, 3], use_all_numbers=True)
    assert not check("9 + 7 + 5", Fraction(21), [3, 5, 7, 9], use_all_numbers=True)  # 3 unused
    assert check("9 + 7 + 5", Fraction(21), [3, 5, 7, 9], use_all_numbers=False)
    assert not check("9 + 9 + 3", Fraction(21), [3, 5, 7, 9], use_all_numbers=False)  # 9 twice


def test_countdown_extraction_and_scores():
    fn = build_countdown(CountdownConfig(format_score=0.1), RewardContext())
    assert extract_equation("<think>try</think><answer>9 + 7 + 5 + 3 = 24</answer>") == "9 + 7 + 5 + 3"
    assert extract_equation("<think>x</think>\n9 + 7 + 5 + 3\n") == "9 + 7 + 5 + 3"
    assert extract_equation("<think>x</think>") is None
    assert fn(sample("<answer>9+7+5+3</answer>", GT)) == {"score": 1.0, "acc": 1.0}
    assert fn(sample("<answer>9+7+5-3</answer>", GT)) == {"score": 0.1, "acc": 0.0}
    assert fn(sample("<think>no answer</think>", GT)) == {"score": 0.0, "acc": 0.0}
    # the ground truth may come as extra_info columns instead
    s = sample("<answer>9+7+5+3</answer>", None, extra_info={"target": 24, "numbers": [3, 5, 7, 9]})
    assert fn(s)["acc"] == 1.0
    with pytest.raises(ValueError, match="target"):
        parse_ground_truth('{"numbers": [1]}')


@pytest.mark.parametrize(
    ("response", "prompt", "answer_tag", "ok"),
    [
        ("<think>reason</think>42", "", False, True),
        ("  <think>reason</think>\n42\n", "", False, True),
        ("<think>reason</think>   ", "", False, False),  # empty answer
        ("<think>reason 42", "", False, False),  # never closed
        ("reason</think>42", "", False, False),  # never opened...
        ("reason</think>42", "Q: 1+1?\n<think>", False, True),  # ...unless the prompt opened it
        ("<think>a</think>b</think>c", "", False, False),  # two closes
        ("<think>a<think>b</think>c", "", False, False),  # two opens
        ("<think>r</think><answer>42</answer>", "", True, True),
        ("<think>r</think><answer> </answer>", "", True, False),
        ("<think>r</think><answer>42</answer> and more", "", True, False),
        ("<think>r</think>42", "", True, False),
    ],
)
def test_format(response, prompt, answer_tag, ok):
    assert well_formed(response, prompt, answer_tag) is ok
    fn = build_format(FormatConfig(answer_tag=answer_tag), RewardContext())
    assert fn(sample(response, prompt=prompt)) == float(ok)


def test_embedded_matches_the_task():
    problem = embedded.make_split(1, seed=0)[0]
    good = embedded.solution_text(problem)
    assert embedded_reward(sample(good, problem["ground_truth"])) == {"score": 1.0, "acc": 1.0}
    assert embedded_reward(sample(good + "0", problem["ground_truth"]))["acc"] == 0.0


def test_registry_lists_names_on_unknown():
    assert {"math", "countdown", "embedded", "format", "code", "pear", "empo"} <= set(names())
    with pytest.raises(KeyError, match="built-ins: .*countdown"):
        get("maths")
