"""The ``countdown`` reward: reach a target number with the given numbers (TinyZero task).

Ground truth: a JSON object ``{"target": 24, "numbers": [3, 5, 7, 9]}`` (a dict is taken
as is; when the ground truth is None, ``extra_info["target"]`` and ``["numbers"]`` are used).

The response's equation is the last ``<answer>…</answer>`` of the answer phase (after the
last ``</think>``), else the last non-empty line of it; a trailing ``= <number>`` is
dropped. It may use ``+ - * /``, parentheses and integers only; with ``use_all_numbers``
(TinyZero) the integers it contains must be exactly the given numbers as a multiset, else a
sub-multiset. It is evaluated exactly (fractions, no ``eval``); division by zero is wrong.

``score = correct_score`` when it evaluates to the target, ``format_score`` when an equation
was found but is wrong or breaks the rules (TinyZero: 0.1), 0 when there is none.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from fractions import Fraction
from typing import Any

from entropo.rewards.api import Sample
from entropo.rewards.configs import CountdownConfig
from entropo.rewards.math_answer import answer_phase
from entropo.rewards.registry import RewardContext, register

_TAG = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S)
_ALLOWED = re.compile(r"[\d+\-*/().\s]+")
MAX_EXPR_CHARS = 200
"""Longer equations are not evaluated (a guard against pathological inputs)."""


def parse_ground_truth(ground_truth: Any, extra_info: dict | None = None) -> tuple[Fraction, list[int]]:
    """``(target, numbers)`` from a JSON string, a dict or ``extra_info``.

    Args:
        ground_truth: ``'{"target": 24, "numbers": [...]}'``, the same as a dict, or None.
        extra_info: used when ``ground_truth`` is None.

    Returns:
        The target and the numbers.

    Raises:
        ValueError: the ground truth has no target or numbers.
    """
    gt = ground_truth
    if gt is None:
        gt = extra_info or {}
    if isinstance(gt, str):
        gt = json.loads(gt)
    if not isinstance(gt, dict) or "target" not in gt or "numbers" not in gt:
        raise ValueError(f"countdown ground truth must hold 'target' and 'numbers', got {ground_truth!r}")
    return Fraction(gt["target"]), [int(n) for n in gt["numbers"]]


def extract_equation(response: str) -> str | None:
    """The candidate equation of a response (see the module docstring), or None."""
    text = answer_phase(response)
    tags = _TAG.findall(text)
    if tags:
        eq = tags[-1].strip()
    else:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        eq = lines[-1] if lines else ""
    eq = re.sub(r"=\s*-?\d+(\.\d+)?\s*$", "", eq).strip()
    return eq or None


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        return a / b  # ZeroDivisionError is caught by the caller
    raise ValueError(f"not allowed in a countdown equation: {ast.dump(node)[:60]}")


def check(equation: str, target: Fraction, numbers: list[int], use_all_numbers: bool) -> bool:
    """Whether ``equation`` follows the rules and evaluates to ``target``.

    Args:
        equation: the candidate, e.g. ``"(9 - 5) * (7 - 3)"``.
        target: the number to reach.
        numbers: the given numbers.
        use_all_numbers: require every number exactly once (else each at most once).

    Returns:
        True when it is a valid solution.
    """
    if len(equation) > MAX_EXPR_CHARS or not _ALLOWED.fullmatch(equation):
        return False
    used = Counter(int(n) for n in re.findall(r"\d+", equation))
    given = Counter(numbers)
    if (used != given) if use_all_numbers else (used - given):
        return False
    try:
        return _eval(ast.parse(equation, mode="eval")) == target
    except (SyntaxError, ValueError, ZeroDivisionError):
        return False


@register("countdown", options=CountdownConfig, reads_policy=False)
def build_countdown(cfg: CountdownConfig, ctx: RewardContext):
    """The ``countdown`` per-sample scorer: ``{"score", "acc"}``."""

    def countdown_reward(sample: Sample) -> dict[str, float]:
        target, numbers = parse_ground_truth(sample.ground_truth, sample.extra_info)
        eq = extract_equation(sample.response)
        if eq is None:
            return {"score": 0.0, "acc": 0.0}
        ok = check(eq, target, numbers, cfg.use_all_numbers)
        return {"score": cfg.correct_score if ok else cfg.format_score, "acc": float(ok)}

    return countdown_reward
