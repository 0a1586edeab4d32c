"""The embedded verifiable reasoning task ``addition``: small sums with a checkable answer.

Why: the default run needs a task that a tiny model can learn on CPU in minutes, whose answer
a reward function can verify exactly, and whose responses have a thinking phase and an
answer phase (phase-entropy methods such as PEAR split on ``</think>``). Every string here
is in the alphabet of the embedded tokenizer (:mod:`entropo.models.tiny`).

Format, for ``12+345``::

    prompt    12+345=?
    solution  <think>2+5+0=7,1+4+0=5,0+3+0=3</think>357

The think trace has one ``x+y+c=s`` step per column, units first: ``x`` and ``y`` are the
column's digits (a shorter number is padded with 0), ``c`` the carry into the column (always
written, 0 or 1), ``s`` the column sum (one or two digits; its tens digit is the next carry).
There are ``max(len(a), len(b))`` columns; a carry out of the last column is the answer's
leading 1. Example with carries: ``678+456=?`` → ``<think>8+6+0=14,7+5+1=13,6+4+1=11</think>1134``.
The answer is the sum in decimal without leading zeros. EOS is appended by whoever tokenizes.

Train/eval disjointness: a prompt belongs to the eval split iff the first 8 bytes of its
SHA-256, as an integer, are ≡ 0 (mod 10) (:func:`split_of`), so about 10% of all problems are
eval problems. Each split only ever draws its own problems, so train and eval never overlap,
whatever their seeds and sizes.
"""

from __future__ import annotations

import hashlib
import random

DATA_SOURCE = "embedded/addition"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EVAL_MODULUS = 10
"""One problem in ``EVAL_MODULUS`` (by prompt hash) is an eval problem."""

SPLITS = ("train", "eval")
DIGITS = 3
"""Operand digits of the task as shipped: ``embedded:addition`` and the warm-started model
(``embedded:tiny-qwen2-addition``); ``embedded:addition?digits=N`` asks for others."""


def split_of(prompt: str) -> str:
    """The split a prompt belongs to (hash partition, see the module docstring).

    Args:
        prompt: the prompt string.

    Returns:
        ``"eval"`` or ``"train"``.
    """
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    return "eval" if h % EVAL_MODULUS == 0 else "train"


def make_problem(rng: random.Random, digits: int = DIGITS) -> dict:
    """Draw one addition problem with operands uniform in ``[0, 10**digits)``.

    Args:
        rng: the random source (two ``randrange`` calls per problem).
        digits: the maximum number of digits of each operand.

    Returns:
        ``{"prompt", "ground_truth", "data_source", "extra_info": {"a", "b", "digits"}}``.
    """
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    a, b = rng.randrange(10**digits), rng.randrange(10**digits)
    return {
        "prompt": f"{a}+{b}=?",
        "ground_truth": str(a + b),
        "data_source": DATA_SOURCE,
        "extra_info": {"a": a, "b": b, "digits": digits},
    }


def solution_text(problem: dict) -> str:
    """A correct response: the column-by-column think trace, then the answer.

    Args:
        problem: a problem from :func:`make_problem` (reads ``extra_info["a"]`` and ``["b"]``).

    Returns:
        ``<think>…</think><sum>`` with no EOS.
    """
    a, b = problem["extra_info"]["a"], problem["extra_info"]["b"]
    xs, ys = str(a), str(b)
    width = max(len(xs), len(ys))
    xs, ys = xs.zfill(width), ys.zfill(width)
    steps, carry = [], 0
    for x, y in zip(reversed(xs), reversed(ys)):
        s = int(x) + int(y) + carry
        steps.append(f"{x}+{y}+{carry}={s}")
        carry = s // 10
    return f"{THINK_OPEN}{','.join(steps)}{THINK_CLOSE}{a + b}"


def extract_answer(response: str) -> str | None:
    """The answer phase of a response.

    Args:
        response: the decoded response (special tokens such as EOS already dropped).

    Returns:
        The text after the last ``</think>``, stripped of surrounding whitespace; None when
        the response has no ``</think>``.
    """
    _, sep, tail = response.rpartition(THINK_CLOSE)
    return tail.strip() if sep else None


def score(response: str, ground_truth: str) -> float:
    """Exact-match reward of the addition task.

    Args:
        response: the decoded response.
        ground_truth: the expected sum, as a string.

    Returns:
        1.0 when :func:`extract_answer` equals ``ground_truth`` exactly, else 0.0 (also when
        there is no ``</think>``).
    """
    return 1.0 if extract_answer(response) == ground_truth else 0.0


def make_split(n: int, seed: int, digits: int = DIGITS, split: str = "train") -> list[dict]:
    """Draw ``n`` distinct problems of one split, deterministically.

    Args:
        n: number of problems.
        seed: seed of the draw (``random.Random(seed)``); the same arguments give the same list.
        digits: as for :func:`make_problem`.
        split: ``"train"`` or ``"eval"``; only problems whose :func:`split_of` matches are kept.

    Returns:
        ``n`` problems with distinct prompts, in draw order.

    Raises:
        ValueError: a bad split, or fewer than ``n`` distinct problems of that split exist
            (small ``digits``).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    rng = random.Random(seed)
    out: list[dict] = []
    seen: set[str] = set()
    # Small `digits` can have fewer distinct problems than asked for: give up after many
    # fruitless draws rather than loop forever (at digits=1 there are 100 problems in all).
    max_draws = 100 * n + 10_000
    for _ in range(max_draws):
        if len(out) == n:
            break
        problem = make_problem(rng, digits)
        prompt = problem["prompt"]
        if prompt in seen or split_of(prompt) != split:
            continue
        seen.add(prompt)
        out.append(problem)
    if len(out) < n:
        raise ValueError(
            f"could only draw {len(out)} distinct {split} problems with digits={digits} "
            f"(there are {10 ** (2 * digits)} problems in all, about "
            f"{'1/' if split == 'eval' else f'{EVAL_MODULUS - 1}/'}{EVAL_MODULUS} of them {split}); "
            f"ask for fewer"
        )
    return out
