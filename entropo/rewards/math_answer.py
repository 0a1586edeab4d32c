"""The ``math`` reward: extract a final answer and check it against the ground truth (spec R1).

``score = correct_score`` when the extracted answer is equivalent to the ground truth, else
``wrong_score`` (PEAR, SEED: 1/0; DAPO's ``math_dapo``: +1/−1 on the last 300 characters,
``reward.math.wrong_score=-1 reward.math.tail_chars=300``).

Answer extraction (:func:`extract_answer`), on the answer phase of the response (the text
after the last ``</think>``, or all of it when there is none), first rule that matches:

1. the last ``<answer>…</answer>`` (an unclosed ``<answer>`` runs to the end); a ``\\boxed{}``
   inside it wins over the rest of its text;
2. the last ``\\boxed{…}`` / ``\\fbox{…}`` (balanced braces; ``\\boxed 5`` too);
3. the last ``#### …`` (GSM8K), to the end of its line;
4. the last number (``-1,234.5``, ``3/4``, ``\\frac{3}{4}``).

Ground truths (:func:`extract_ground_truth`): a bare answer (``72``, ``\\frac{1}{2}``), a
GSM8K solution ending ``#### 72``, or a MATH solution with a ``\\boxed{}`` answer.

Equivalence (:func:`equivalent`): equal after light normalisation (spaces, ``$``, ``\\left``,
``dfrac``, trailing period), else ``math_verify`` (HF Math-Verify: LaTeX and plain
expressions, fractions = decimals to 6 significant digits, ``\\text{}`` units and ``\\%``
dropped, sets, intervals, equations ``x=5`` ~ ``5``), also on the number alone when the
answer is a number followed by plain words (``72 dollars``). Each ``math_verify`` parse/verify gets
``check_timeout_s`` via its own ``signal.alarm``, which only works in a main thread; in a
thread (the in-process reward mode) it runs without one and ``reward.timeout_s`` is the
only limit.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from entropo.rewards.api import Sample
from entropo.rewards.registry import RewardContext, register

THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class MathConfig:
    """Options of the ``math`` reward (``reward.math``)."""

    check_timeout_s: int = 5
    """Seconds allowed to each math_verify parse / comparison (whole seconds; 0 = none)."""

    tail_chars: int | None = None
    """Score only the last this many characters of the answer phase; DAPO uses 300."""

    correct_score: float = 1.0
    """Score of an equivalent answer."""

    wrong_score: float = 0.0
    """Score of a wrong or missing answer; DAPO uses −1."""

    def __post_init__(self) -> None:
        if self.check_timeout_s < 0:
            raise ValueError(f"reward.math.check_timeout_s: must be >= 0, got {self.check_timeout_s}")
        if self.tail_chars is not None and self.tail_chars < 1:
            raise ValueError(f"reward.math.tail_chars: must be >= 1 or None, got {self.tail_chars}")


# ---------------------------------------------------------------------------------------
# extraction

_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.S)
_HASHES = re.compile(r"####\s*([^\n]*)")
_NUMBER = re.compile(
    r"-?\\d?frac\{\s*-?\d+\s*\}\{\s*-?\d+\s*\}"  # \frac{3}{4}, \dfrac{3}{4}
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
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
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


def extract_answer(response: str, tail_chars: int | None = None) -> str | None:
    """The final answer of a response (rules in the module docstring).

    Args:
        response: the decoded response.
        tail_chars: look only at the last this many characters of the answer phase.

    Returns:
        The answer text, stripped (possibly ``""`` for an empty ``<answer></answer>``), or
        None when no rule matches.
    """
    text = answer_phase(response)
    if tail_chars is not None:
        text = text[-tail_chars:]
    tags = _ANSWER_TAG.findall(text)
    if tags:
        inner = tags[-1]
        boxed = last_boxed(inner)
        return boxed if boxed is not None else inner.strip()
    boxed = last_boxed(text)
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


def parse_answer(answer: str, timeout_s: int = 5) -> list[Any]:
    """``math_verify.parse`` of one extracted answer (LaTeX first, then plain expressions).

    Args:
        answer: an extracted answer (without ``$``; they are added here).
        timeout_s: math_verify's parsing time limit in whole seconds (main thread only).

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


def verify_parsed(gold: list[Any], pred: list[Any], timeout_s: int = 5) -> bool:
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


def equivalent(pred: str | None, gold: str, timeout_s: int = 5) -> bool:
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
    if normalise(pred) == normalise(gold):
        return True
    parsed_gold = parse_answer(gold, timeout_s)
    if verify_parsed(parsed_gold, parse_answer(pred, timeout_s), timeout_s):
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


@register("math", options=MathConfig)
def build_math(cfg: MathConfig, ctx: RewardContext):
    """The ``math`` per-sample scorer: ``{"score", "acc"}``."""

    def math_reward(sample: Sample) -> dict[str, float]:
        if sample.ground_truth is None:
            raise ValueError("reward 'math' needs a ground truth; this sample has none")
        acc, _ = check(sample.response, sample.ground_truth, cfg)
        return {"score": cfg.correct_score if acc else cfg.wrong_score, "acc": acc}

    return math_reward
