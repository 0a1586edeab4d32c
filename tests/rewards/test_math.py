"""The ``math`` checker against hand-written cases: extraction, equivalence, look-alikes."""

from __future__ import annotations

import pytest

from entropo.rewards.configs import MathConfig
from entropo.rewards.math_answer import (
    build_math,
    check,
    extract_answer,
    extract_ground_truth,
    last_boxed,
)
from entropo.rewards.registry import RewardContext
from tests.rewards.helpers import sample

# (response, ground truth, expected acc)
CASES = [
    # --- \boxed{} and LaTeX fractions
    ("So the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", 1),
    ("\\boxed{\\frac12}", "\\frac{1}{2}", 1),
    ("\\boxed{\\dfrac{3}{4}}", "3/4", 1),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1),
    ("\\boxed{\\tfrac{2}{4}}", "\\frac{1}{2}", 1),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\sqrt{2}/2", 1),
    ("\\boxed{-\\frac{7}{3}}", "-7/3", 1),
    ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", 0),
    ("\\boxed{\\frac{2}{1}}", "\\frac{1}{2}", 0),
    ("\\boxed{0.333}", "\\frac{1}{3}", 0),
    ("nested \\boxed{\\frac{a+1}{\\sqrt{b}}}", "\\frac{a+1}{\\sqrt{b}}", 1),
    ("\\boxed{2} at first, then finally \\boxed{3}", "3", 1),
    ("\\boxed{2} at first, then finally \\boxed{3}", "2", 0),
    ("\\fbox{42}", "42", 1),
    ("The answer: \\boxed 7", "7", 1),
    # --- units, dollars, percent, degrees, thousands separators
    ("\\boxed{12\\text{ cm}}", "12", 1),
    ("\\boxed{12 \\mbox{cm}}", "12", 1),
    ("The total is \\boxed{\\$18}.", "18", 1),
    ("\\boxed{18.00}", "18", 1),
    ("\\boxed{50\\%}", "50", 1),
    ("\\boxed{90^\\circ}", "90", 1),
    ("\\boxed{1,000}", "1000", 1),
    ("\\boxed{1{,}000}", "1000", 1),
    ("\\boxed{12\\text{ cm}}", "120", 0),
    # --- equivalent forms
    ("\\boxed{x=5}", "5", 1),
    ("\\boxed{(x+1)^2}", "x^2+2x+1", 1),
    ("\\boxed{2\\pi}", "6.283185307", 1),
    ("\\boxed{\\{1,2\\}}", "\\{2,1\\}", 1),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", 1),
    ("\\boxed{10^{3}}", "1000", 1),
    ("\\boxed{(1,2)}", "(1,2)", 1),
    ("\\boxed{\\left(3, 4\\right)}", "(3,4)", 1),
    ("\\boxed{\\text{Monday}}", "Monday", 1),
    ("\\boxed{[0,1)}", "[0,1)", 1),
    # --- wrong answers that look right
    ("\\boxed{-3}", "3", 0),
    ("\\boxed{12}", "120", 0),
    ("\\boxed{0.05}", "0.5", 0),
    ("\\boxed{\\sqrt{2}}", "2", 0),
    ("\\boxed{(2,1)}", "(1,2)", 0),
    ("\\boxed{[0,1]}", "[0,1)", 0),
    ("\\boxed{\\pi}", "3.14", 0),
    ("\\boxed{x^2+2x}", "x^2+2x+1", 0),
    ("\\boxed{}", "0", 0),
    ("I am not sure.", "7", 0),
    # --- <answer> tags
    ("<think>1+1=2, so 2</think><answer>2</answer>", "2", 1),
    ("<answer>\\boxed{\\frac{1}{4}}</answer>", "0.25", 1),
    ("<answer> 17 </answer>", "17", 1),
    ("<answer>17", "17", 1),
    ("<answer>16</answer> but actually \\boxed{17}", "17", 0),
    # --- GSM8K: #### and the last number; GSM8K-style ground truths
    ("She has 3 + 4 = 7 apples.\n#### 7", "#### 7", 1),
    ("Natalia sold 48/2 = 24 clips in May. 48+24 = 72.\n#### 72",
     "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", 1),
    ("The answer is 1,234 apples.", "1234", 1),
    ("First 5 then 9, so the total is 14.", "14", 1),
    ("First 5 then 9, so the total is 14.", "9", 0),
    ("It costs -2.5 dollars", "-2.5", 1),
    ("#### 72 dollars.", "72", 1),
    ("#### 71", "72", 0),
    # --- the answer phase is after </think>
    ("<think>maybe \\boxed{5}</think>The answer is \\boxed{6}", "6", 1),
    ("<think>maybe \\boxed{5}</think>The answer is \\boxed{6}", "5", 0),
    ("<think>the answer is 5</think>", "5", 0),
    # --- MATH-style ground truth: a full solution with a boxed answer
    ("\\boxed{\\frac{\\pi}{2}}", "We integrate ... so the area is $\\boxed{\\frac{\\pi}{2}}$.", 1),
    ("\\boxed{\\frac{\\pi}{3}}", "We integrate ... so the area is $\\boxed{\\frac{\\pi}{2}}$.", 0),
    # --- a response cut off inside its box has no answer (not the number left in it)
    ("\\boxed{8", "8", 0),
    ("So the answer is \\boxed{8", "8", 0),
    ("<answer>\\boxed{8", "8", 0),
    ("\\boxed{3}, no wait: \\boxed{8", "3", 0),
    ("The answer is \\boxed", "5", 0),
    # --- scientific notation is a number, not Euler's e
    ("\\boxed{1e-3}", "0.001", 1),
    ("\\boxed{0.001}", "1e-3", 1),
    ("so it is 1e-3", "0.001", 1),
    ("\\boxed{2.5E2}", "250", 1),
    ("\\boxed{1e-3}", "\\frac{1}{1000}", 1),
    ("\\boxed{6.02e23}", "6.02\\times10^{23}", 1),
    ("\\boxed{1e-3}", "0.002", 0),
    ("\\boxed{2e-10}", "3e-10", 0),  # math_verify's 6-decimal rounding would call these equal
    ("\\boxed{1e-3}", "-0.2817", 0),  # 1·e − 3
    # --- an inequality and the interval it denotes, either one the reference
    ("\\boxed{x > 2}", "(2, \\infty)", 1),
    ("\\boxed{(2, \\infty)}", "x > 2", 1),
    ("\\boxed{x \\geq 2}", "[2, \\infty)", 1),
    ("\\boxed{1 < x < 3}", "(1, 3)", 1),
    ("\\boxed{x \\le 5}", "(-\\infty, 5]", 1),
    ("\\boxed{x > 2}", "[2, \\infty)", 0),
    ("\\boxed{x > 2}", "(3, \\infty)", 0),
]


def test_there_are_enough_cases():
    assert len(CASES) >= 50


@pytest.mark.parametrize(("response", "ground_truth", "expected"), CASES)
def test_math_checker(response, ground_truth, expected):
    acc, pred = check(response, ground_truth)
    assert acc == expected, f"extracted {pred!r} vs {extract_ground_truth(ground_truth)!r}"


@pytest.mark.parametrize(
    ("text", "boxed"),
    [("\\boxed{a{b}c}", "a{b}c"), ("\\boxed{unclosed", None), ("no box", None), ("\\boxed 5.", "5"),
     ("\\boxed{1} and \\fbox{2}", "2")],
)
def test_last_boxed(text, boxed):
    assert last_boxed(text) == boxed


def test_extraction_order_and_tail():
    assert extract_answer("<answer>x \\boxed{3} y</answer>") == "3"
    assert extract_answer("#### 5\nthen 6") == "5"  # #### beats the last number
    assert extract_answer("nothing here") is None
    # DAPO scores only the tail: the boxed answer 300+ characters back is not seen.
    text = "\\boxed{9}" + " filler" * 60
    assert extract_answer(text) == "9"
    assert extract_answer(text, tail_chars=300) is None


def test_ground_truth_forms():
    assert extract_ground_truth("solution ... #### 1,000") == "1,000"
    assert extract_ground_truth("$\\boxed{\\frac{1}{2}}$") == "\\frac{1}{2}"
    assert extract_ground_truth(" 42 ") == "42"


def test_builtin_scores_and_dapo_style_options():
    plain = build_math(MathConfig(), RewardContext())
    dapo = build_math(MathConfig(wrong_score=-1.0, tail_chars=300), RewardContext())
    right, wrong = sample("\\boxed{4}", "4"), sample("\\boxed{5}", "4")
    assert plain(right) == {"score": 1.0, "acc": 1.0}
    assert plain(wrong) == {"score": 0.0, "acc": 0.0}
    assert dapo(wrong) == {"score": -1.0, "acc": 0.0}
    with pytest.raises(ValueError, match="ground truth"):
        plain(sample("\\boxed{4}", None))


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="reward.math.tail_chars"):
        MathConfig(tail_chars=0)
