"""The ``math`` reward: extract a final answer and check it against the ground truth.

``score = correct_score`` when the extracted answer is equivalent to the ground truth, else
``wrong_score`` (PEAR, SEED: 1/0; DAPO's ``math_dapo``: +1/−1 on the last 300 characters,
``reward.math.wrong_score=-1 reward.math.tail_chars=300``).

Answer extraction (:func:`extract_answer`), on the answer phase of the response (the text
after the last ``</think>``, or all of it when there is none), first rule that matches:

1. the last ``<answer>…</answer>`` (an unclosed ``<answer>`` runs to the end); a ``\\boxed{}``
   inside it wins over the rest of its text;
2. the last ``\\boxed{…}`` / ``\\fbox{…}`` (balanced braces; ``\\boxed 5`` too);
3. the last ``#### …`` (GSM8K), to the end of its line;
4. the last number (``-1,234.5``, ``3/4``, ``\\frac{3}{4}``, ``1e-3``).

A last box that never closes (``\\boxed{8`` — a response cut off inside its answer) is no
answer: the rules after it are not tried, in the ``<answer>`` tag or outside it.

Ground truths (:func:`extract_ground_truth`): a bare answer (``72``, ``\\frac{1}{2}``), a
GSM8K solution ending ``#### 72``, or a MATH solution with a ``\\boxed{}`` answer.

Equivalence (:func:`equivalent`): equal after light normalisation (spaces, ``$``, ``\\left``,
``dfrac``, trailing period), else ``math_verify`` (HF Math-Verify: LaTeX and plain
expressions, fractions = decimals to 6 significant digits, ``\\text{}`` units and ``\\%``
dropped, sets, intervals, equations ``x=5`` ~ ``5``), also on the number alone when the
answer is a number followed by plain words (``72 dollars``). Two refinements of math_verify:
a plain number in scientific notation (``1e-3``, ``2.5E2``) is compared with another plain
number by value (to 6 significant digits) and is otherwise rewritten as ``1\\times10^{-3}``
before parsing, where math_verify would read ``e`` as Euler's number; and a
one-variable inequality (``x > 2``, ``1 < x \\le 3``) is compared with the interval it
denotes (``(2, \\infty)``) in both directions, as math_verify's ``verify`` maps an
inequality onto an interval only when the inequality is the reference. Each ``math_verify`` parse/verify gets
``check_timeout_s`` via its own ``signal.alarm``, which only works in a main thread; in a
thread (the in-process reward mode) it runs without one and ``reward.timeout_s`` is the
only limit.
"""

from __future__ import annotations

import logging
import re
import threading
from decimal import Decimal
from typing import Any

from entropo.rewards.api import Sample
from entropo.rewards.configs import MathConfig
from entropo.rewards.registry import RewardContext, register

THINK_CLOSE = "</think>"


# ---------------------------------------------------------------------------------------
# extraction

_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S)
_HASHES = re.compile(r"####\s*([^\n]*)")
_NUMBER = re.compile(
    r"-?\\d?frac\{\s*-?\d+\s*\}\{\s*-?\d+\s*\}"  # \frac{3}{4}, \dfrac{3}{4}
    r"|-?\d+(?:\.\d+)?[eE][+-]?\d+"  # 1e-3, 2.5E2
    r"|-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?"  # -1,234.5 and 3/4
    r"|-?\.\d+"
)


def answer_phase(response: str) -> str:
    """The text after the last ``</think>``, or the whole response when there is none.

    Args:
        response: the decoded response.

    Returns:
        The answer phase (not stripped).
    """
    _, sep, tail = response.rpartition(THINK_CLOSE)
    return tail if sep else response


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` or ``\\fbox{…}`` (balanced braces).

    Args:
        text: any text.

    Returns:
        The content, stripped; the next token for ``\\boxed 5``; None when there is no box
        or its braces do not close.
    """
    start = _last_box_start(text)
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    j = i
    while j < len(text) and text[j] == " ":
        j += 1
    if j < len(text) and text[j] == "{":
        depth = 0
        for k in range(j, len(text)):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    return text[j + 1 : k].strip()
        return None
    if j > i:  # "\boxed 5"
        m = re.match(r"[^\s$]+", text[j:])
        return m.group(0).rstrip(".") if m else None
    return None


def _last_box_start(text: str) -> int:
    return max(text.rfind("\\boxed"), text.rfind("\\fbox"))


def _boxed_or_unfinished(text: str) -> tuple[str | None, bool]:
    """``(content of the last box, whether a last box is there but never closes)``."""
    content = last_boxed(text)
    return content, content is None and _last_box_start(text) >= 0


def extract_answer(response: str, tail_chars: int | None = None) -> str | None:
    """The final answer of a response (rules in the module docstring).

    Args:
        response: the decoded response.
        tail_chars: look only at the last this many characters of the answer phase.

    Returns:
        The answer text, stripped (possibly ``""`` for an empty ``<answer></answer>``), or
        None when no rule matches or the last box never closes.
    """
    text = answer_phase(response)
    if tail_chars is not None:
        text = text[-tail_chars:]
    tags = _ANSWER_TAG.findall(text)
    if tags:
        boxed, unfinished = _boxed_or_unfinished(tags[-1])
        if unfinished:
            return None
        return boxed if boxed is not None else tags[-1].strip()
    boxed, unfinished = _boxed_or_unfinished(text)
    if unfinished:
        return None
    if boxed is not None:
        return boxed
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip().rstrip(".").strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def extract_ground_truth(ground_truth: str) -> str:
    """The reference answer of a bare, GSM8K (``#### x``) or MATH (``\\boxed{x}``) ground truth.

    Args:
        ground_truth: the dataset's ground-truth string.

    Returns:
        The answer, stripped.
    """
    boxed = last_boxed(ground_truth)
    if boxed is not None:
        return boxed
    hashes = _HASHES.findall(ground_truth)
    if hashes:
        return hashes[-1].strip()
    return ground_truth.strip()


# ---------------------------------------------------------------------------------------
# equivalence


def normalise(answer: str) -> str:
    """A light canonical form for the exact-match fast path (never used to reject)."""
    s = answer.strip().strip("$").strip()
    if s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2]
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""),
                     ("dfrac", "frac"), ("tfrac", "frac"), (" ", "")):
        s = s.replace(old, new)
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"[A-Za-z]+", s):
        s = s.lower()
    return s


_SCIENTIFIC = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))[eE]([+-]?\d+)")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INEQUALITY = re.compile(r"[<>≤≥]|\\[lg]eq?(?![a-zA-Z])|\\[lg]t(?![a-zA-Z])")
SCIENTIFIC_REL_TOL = 1e-6  # two plain numbers, one in scientific notation: equal to 6 significant digits


def _bare(answer: str) -> str:
    return answer.strip().strip("$").strip()


def scientific_as_latex(answer: str) -> str:
    """``"1\\times10^{-3}"`` for ``"1e-3"``: a plain number in scientific notation in the form
    math_verify reads as a number (it reads the ``e`` of ``1e-3`` as Euler's number); any other
    answer unchanged."""
    m = _SCIENTIFIC.fullmatch(_bare(answer))
    return f"{m.group(1)}\\times10^{{{int(m.group(2))}}}" if m else answer


def scientific_equal(pred: str, gold: str) -> bool | None:
    """Whether two plain numbers, at least one in scientific notation, agree to a relative
    :data:`SCIENTIFIC_REL_TOL` (math_verify rounds to 6 decimals, which makes ``2e-10`` equal
    ``3e-10``); None when that does not apply."""
    a, b = _bare(pred), _bare(gold)
    if not (_PLAIN_NUMBER.fullmatch(a) and _PLAIN_NUMBER.fullmatch(b)):
        return None
    if not (_SCIENTIFIC.fullmatch(a) or _SCIENTIFIC.fullmatch(b)):
        return None
    x, y = Decimal(a), Decimal(b)
    return abs(x - y) <= Decimal(SCIENTIFIC_REL_TOL) * max(abs(x), abs(y))


_NUMBER_WITH_UNIT = re.compile(r"\\?\$?\s*(-?(?:\d[\d,]*)?\.?\d+(?:/\d+)?)\s*[A-Za-z][A-Za-z .]*")


def strip_unit(answer: str) -> str | None:
    """``"72"`` for ``"72 dollars"`` / ``"$18 each"``: a number followed by plain words, else None."""
    m = _NUMBER_WITH_UNIT.fullmatch(answer.strip())
    return m.group(1) if m else None


def _timeout(seconds: int) -> int | None:
    # math_verify times out with signal.alarm, which raises ValueError outside the main thread.
    return seconds if seconds > 0 and threading.current_thread() is threading.main_thread() else None


def _quiet() -> None:
    # math_verify warns on every call made without a timeout (the threaded case).
    logging.getLogger("math_verify").setLevel(logging.ERROR)


def parse_answer(answer: str, timeout_s: int) -> list[Any]:
    """``math_verify.parse`` of one extracted answer (LaTeX first, then plain expressions).

    Args:
        answer: an extracted answer (without ``$``; they are added here).
        timeout_s: math_verify's parsing time limit in whole seconds (main thread only;
            ``reward.math.check_timeout_s`` or ``reward.empo.check_timeout_s``).

    Returns:
        The parsed forms (empty when nothing parses).
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    _quiet()
    s = answer.strip().strip("$").strip()
    if not s:
        return []
    return parse(f"${s}$", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                 parsing_timeout=_timeout(timeout_s))


def verify_parsed(gold: list[Any], pred: list[Any], timeout_s: int) -> bool:
    """``math_verify.verify`` of two parsed answers; False when either is empty.

    Args:
        gold: parsed reference (from :func:`parse_answer`).
        pred: parsed prediction.
        timeout_s: time limit per comparison in whole seconds (main thread only).

    Returns:
        Whether math_verify finds them equivalent.
    """
    from math_verify import verify

    _quiet()
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=_timeout(timeout_s)))


def equivalent(pred: str | None, gold: str, timeout_s: int) -> bool:
    """Whether an extracted answer equals a reference answer (fast path, then math_verify).

    Args:
        pred: the extracted answer, or None (never equivalent).
        gold: the reference answer (already extracted from the ground truth).
        timeout_s: math_verify's per-call limit in whole seconds.

    Returns:
        True when equivalent.
    """
    if pred is None or not pred.strip():
        return False
    numeric = scientific_equal(pred, gold)
    if numeric is not None:
        return numeric
    pred, gold = scientific_as_latex(pred), scientific_as_latex(gold)
    if normalise(pred) == normalise(gold):
        return True
    parsed_gold, parsed_pred = parse_answer(gold, timeout_s), parse_answer(pred, timeout_s)
    if verify_parsed(parsed_gold, parsed_pred, timeout_s):
        return True
    # an inequality meets its interval only as verify's reference: try the other order
    if (_INEQUALITY.search(pred) or _INEQUALITY.search(gold)) and verify_parsed(parsed_pred, parsed_gold, timeout_s):
        return True
    number = strip_unit(pred)  # "72 dollars": math_verify reads the words as symbols
    return number is not None and verify_parsed(parsed_gold, parse_answer(number, timeout_s), timeout_s)


def check(response: str, ground_truth: str, cfg: MathConfig | None = None) -> tuple[float, str | None]:
    """``(acc, extracted answer)`` of a response against a ground truth.

    Args:
        response: the decoded response.
        ground_truth: the dataset's ground truth (bare, GSM8K or MATH style).
        cfg: the options (defaults when None).

    Returns:
        ``acc`` in {0, 1} and the extracted answer (None when none was found).
    """
    cfg = cfg or MathConfig()
    pred = extract_answer(response, cfg.tail_chars)
    ok = equivalent(pred, extract_ground_truth(ground_truth), cfg.check_timeout_s)
    return (1.0 if ok else 0.0), pred


@register("math", options=MathConfig, reads_policy=False)
def build_math(cfg: MathConfig, ctx: RewardContext):
    """The ``math`` per-sample scorer: ``{"score", "acc"}``."""

    def math_reward(sample: Sample) -> dict[str, float]:
        if sample.ground_truth is None:
            raise ValueError("reward 'math' needs a ground truth; this sample has none")
        acc, _ = check(sample.response, sample.ground_truth, cfg)
        return {"score": cfg.correct_score if acc else cfg.wrong_score, "acc": acc}

    return math_reward
