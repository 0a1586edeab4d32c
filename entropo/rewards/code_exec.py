"""The ``code`` reward: run the response's program against test cases in the sandbox.

Ground truth: JSON (a string, or the same as a dict/list), one of

- ``{"inputs": ["1 2\\n", ...], "outputs": ["3\\n", ...]}``: stdin/stdout programs (APPS,
  TACO, CodeContests); the program runs as ``__main__`` once per case;
- ``{"fn_name": "add", "inputs": [[1, 2], ...], "outputs": [3, ...]}``: call-based (APPS,
  LeetCode: ``Solution().add`` also works); each input is the argument list;
- ``{"asserts": ["assert add(1, 2) == 3", ...]}`` or a plain list of such strings (MBPP,
  HumanEval-style), run after the program in its namespace. An assert ``X == L`` (or
  ``L == X``) whose ``L`` is a literal that JSON can carry is split: the sandbox returns the
  value of ``X``, and the parent compares it with ``L`` after a JSON round trip (so tuples equal
  lists, and dict keys compare as strings). ``L`` never enters the sandbox, so a program
  cannot forge a pass without ``L`` (which hard-coding the answer would need as well). Any other
  assert (``assert f(x)``, ``assert f(x) > 2``, ``assert math.isclose(...)``) runs in the
  sandbox, whose word on it is trusted: a hostile program can forge its pass (it shares the
  process, and so the result pipe, with the runner).

The program is the last fenced code block (```python, ```py or ```) of the answer phase
(after the last ``</think>``); none gives score 0. Outputs match after stripping trailing
whitespace per line and trailing blank lines, or token by token; call results match after a
JSON round trip (tuples = lists), also when the expected value is the result wrapped in a
one-element list (an APPS quirk), and floats to 1e-6 relative. Expected outputs never enter
the sandbox.

``score = acc = 1`` when every case passes (``partial``: ``score`` = the fraction passed;
``acc`` stays all-pass). A sandbox that cannot start raises (the reward stage counts an
error and uses the fallback score). Guarantees of the sandbox: :mod:`entropo.rewards.sandbox`.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from entropo.rewards import sandbox
from entropo.rewards.api import Sample
from entropo.rewards.configs import CodeConfig
from entropo.rewards.math_answer import answer_phase
from entropo.rewards.registry import RewardContext, register

_FENCE = re.compile(r"```(?:python3?|py)?[ \t]*\n(.*?)```", re.S)
FLOAT_RTOL = 1e-6
"""Relative tolerance of float call results (rounding of printed decimals)."""


@dataclass(frozen=True)
class Tests:
    kind: str  # stdio | call | assert
    cases: list[dict]  # what the sandbox gets
    expected: list[Any]  # what the parent compares with (asserts: L of a split ``X == L``, else None)
    fn_name: str | None = None


def parse_tests(ground_truth: Any) -> Tests:
    """The test cases of a ground truth (formats in the module docstring).

    Args:
        ground_truth: JSON text, or the decoded dict / list.

    Returns:
        The tests.

    Raises:
        ValueError: not one of the formats.
    """
    gt = json.loads(ground_truth) if isinstance(ground_truth, str) else ground_truth
    if isinstance(gt, list) and all(isinstance(a, str) for a in gt):
        gt = {"asserts": gt}
    if isinstance(gt, dict) and "asserts" in gt:
        split = [_assert_case(a) for a in gt["asserts"]]
        return Tests("assert", [case for case, _ in split], [value for _, value in split])
    if isinstance(gt, dict) and "inputs" in gt and "outputs" in gt:
        ins, outs = list(gt["inputs"]), list(gt["outputs"])
        if len(ins) != len(outs):
            raise ValueError(f"code ground truth: {len(ins)} inputs but {len(outs)} outputs")
        if gt.get("fn_name"):
            return Tests("call", [{"args": a if isinstance(a, list) else [a]} for a in ins], outs, gt["fn_name"])
        return Tests("stdio", [{"input": str(a)} for a in ins], [str(o) for o in outs])
    raise ValueError("code ground truth must be {inputs, outputs[, fn_name]}, {asserts} or a list of asserts")


def _assert_case(src: str) -> tuple[dict, Any]:
    """The sandbox case of one assert and the value the parent expects (module docstring)."""
    try:
        body = ast.parse(src).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {"src": src}, None
    test = body[0].test if len(body) == 1 and isinstance(body[0], ast.Assert) else None
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        for expr, literal in ((test.left, test.comparators[0]), (test.comparators[0], test.left)):
            try:
                value = ast.literal_eval(literal)
                json.dumps(value)  # sets, bytes and complex numbers stay with the sandbox
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            return {"expr": ast.unparse(expr)}, value
    return {"src": src}, None


def extract_code(response: str) -> str | None:
    """The last fenced code block of the answer phase, or None."""
    blocks = _FENCE.findall(answer_phase(response))
    return blocks[-1] if blocks else None


def _lines(s: str) -> list[str]:
    out = [line.rstrip() for line in s.replace("\r\n", "\n").split("\n")]
    while out and not out[-1]:
        out.pop()
    return out


def stdout_matches(got: str, expected: str) -> bool:
    """Equal after trimming trailing whitespace per line and trailing blank lines, or token by token."""
    return _lines(got) == _lines(expected) or got.split() == expected.split()


def result_matches(got: Any, expected: Any) -> bool:
    """Equal after a JSON round trip, or wrapped in a one-element list, or close floats."""
    expected = json.loads(json.dumps(expected))
    if got == expected or [got] == expected:
        return True
    if isinstance(got, (int, float)) and isinstance(expected, (int, float)) and not isinstance(got, bool):
        return math.isclose(got, expected, rel_tol=FLOAT_RTOL, abs_tol=FLOAT_RTOL)
    return False


def grade(tests: Tests, records: list[dict]) -> list[bool]:
    """Pass/fail of every case from the sandbox's records (missing records fail)."""
    passed = [False] * len(tests.cases)
    for rec in records:
        i = rec["i"]
        if rec.get("error") is not None:
            continue
        if tests.kind == "stdio":
            passed[i] = stdout_matches(rec.get("stdout", ""), tests.expected[i])
        elif tests.kind == "call":
            passed[i] = "result" in rec and result_matches(rec["result"], tests.expected[i])
        elif "expr" in tests.cases[i]:
            passed[i] = "result" in rec and rec["result"] == json.loads(json.dumps(tests.expected[i]))
        else:
            passed[i] = True  # the sandbox ran the assert
    return passed


@register("code", options=CodeConfig, reads_policy=False)
def build_code(cfg: CodeConfig, ctx: RewardContext):
    """The ``code`` per-sample scorer: ``{"score", "acc", "pass_frac", "isolated"}``."""
    limits = cfg.limits()
    sandbox.resolve_isolation(limits)  # isolation="namespace" without namespaces fails at start-up

    def code_reward(sample: Sample) -> dict[str, float]:
        if sample.ground_truth is None:
            raise ValueError("reward 'code' needs test cases as the ground truth; this sample has none")
        tests = parse_tests(sample.ground_truth)
        if cfg.max_cases is not None:
            n = cfg.max_cases
            tests = Tests(tests.kind, tests.cases[:n], tests.expected[:n], tests.fn_name)
        program = extract_code(sample.response)
        if program is None or not tests.cases:
            return {"score": 0.0, "acc": 0.0, "pass_frac": 0.0}
        res = sandbox.run(program, tests.kind, tests.cases, tests.fn_name, limits)
        if res.status == "setup_error":
            raise RuntimeError(f"sandbox did not start: {res.detail}")
        passed = grade(tests, res.records)
        frac = sum(passed) / len(passed)
        acc = float(all(passed))
        return {"score": frac if cfg.partial else acc, "acc": acc, "pass_frac": frac,
                "isolated": float(res.isolation == "namespace")}

    return code_reward
