"""The ``pear`` reward: PEAR, Phase Entropy Aware Reward.

Paper: Huang, Lu, Zhang, "PEAR: Phase Entropy Aware Reward for Efficient Reasoning",
arXiv 2510.08026, Eqs. 5–7. Official code (github.com/iNLP-Lab/PEAR) was not available;
the formula is not verified against the paper's text: it comes from a paper-note write-up
quoting Eqs. 5–7, and the OpenReview reviews confirm its max(·) term, the α on H̄_answer, the
π_old entropies and the rule for a missing ``</think>``.

    k          = position of the first ``</think>`` token in the response ids
    H̄_think   = mean_{t<k} H_t          (the ``</think>`` token itself is in neither phase)
    H̄_answer  = mean_{t>k} H_t
    P(y)       = max(0, H̄_think − α·H̄_answer)
    r(y)       = min(1, s − P(y))   if the answer is correct
               = r_fmt              otherwise (wrong or unparseable)

``H_t`` is the π_old token entropy at the rollout temperature (``Sample.entropy``, computed
by the learner forward before the reward stage). Edge cases: no
``</think>`` → every token is "think" and ``H̄_answer = 0``; ``</think>`` last →
``H̄_answer = 0``; ``</think>`` first → ``H̄_think = 0``. ``r`` goes below 0 when ``P > 1``
(faithful mode); ``pear_clip_min`` clips it from below.

The ``</think>`` token: the tokenizer's single ``</think>`` id (Qwen3's special token, the
embedded tokenizer's added token), as the derivative code's
``convert_ids_to_tokens(...).index("</think>")``. Deviation (an extension): when
``</think>`` is not one token, the tokens whose decoded text spans the first ``</think>``
are found by decoding prefixes (binary search) and excluded from both phases.

Correctness comes from an inner per-sample checker: ``inner="auto"`` uses ``embedded`` for
``data_source`` starting with ``embedded`` and ``math`` otherwise; any per-sample built-in
name can be given. Its ``acc`` (else ``score > 0``) is the correctness. Validation should
report plain accuracy (``correct``), not ``r``.
"""

from __future__ import annotations

import math

import torch

from entropo.rewards.api import Sample
from entropo.rewards.configs import PEARConfig
from entropo.rewards.registry import RewardContext, get, make_options, register

THINK_CLOSE = "</think>"


def find_close(response_ids: list[int], ctx: RewardContext) -> tuple[int, int] | None:
    """The token span ``[start, end)`` of the first ``</think>``, or None when absent.

    Args:
        response_ids: the response token ids (valid tokens).
        ctx: the reward context (``think_close_id``, or a tokenizer to decode with).

    Returns:
        ``(k, k + 1)`` for a single-token ``</think>`` at ``k``; the covering tokens when it
        spans several; None when the response has none.
    """
    if ctx.think_close_id is not None:
        try:
            k = response_ids.index(ctx.think_close_id)
        except ValueError:
            return None
        return k, k + 1
    tok = ctx.tokenizer
    if tok is None:
        raise ValueError("reward 'pear' needs the tokenizer to find '</think>'")

    def text(j: int) -> str:
        return tok.decode(response_ids[:j], skip_special_tokens=False)

    pos = text(len(response_ids)).find(THINK_CLOSE)
    if pos < 0:
        return None

    def first(pred) -> int:  # smallest j in [0, T] with pred(j); pred is monotone in j
        lo, hi = 0, len(response_ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if pred(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    end = first(lambda j: THINK_CLOSE in text(j))
    start = first(lambda j: len(text(j + 1)) > pos)
    return min(start, end - 1), end


def phase_entropies(entropy: torch.Tensor, span: tuple[int, int] | None) -> tuple[float, float]:
    """``(H̄_think, H̄_answer)`` of one response.

    Args:
        entropy: ``[T]`` π_old token entropies.
        span: the ``</think>`` token span from :func:`find_close`, or None.

    Returns:
        The two phase means; an empty phase has mean 0.
    """
    h = entropy.detach().to(torch.float64).flatten()  # [T]
    think, answer = (h, h[:0]) if span is None else (h[: span[0]], h[span[1]:])
    mean = lambda x: float(x.mean()) if x.numel() else 0.0  # noqa: E731
    return mean(think), mean(answer)


def pear_reward(h_think: float, h_answer: float, correct: bool, cfg: PEARConfig) -> tuple[float, float]:
    """``(r, P)`` from the phase entropies and the correctness (formula in the module docstring).

    Args:
        h_think: H̄_think.
        h_answer: H̄_answer.
        correct: whether the extracted answer equals the ground truth.
        cfg: α, s, r_fmt, pear_clip_min.

    Returns:
        The reward r and the penalty P.
    """
    p = max(0.0, h_think - cfg.alpha * h_answer)
    r = min(1.0, cfg.s - p) if correct else cfg.r_fmt
    if cfg.pear_clip_min is not None:
        r = max(r, cfg.pear_clip_min)
    return r, p


def _inner_checker(cfg: PEARConfig, ctx: RewardContext):
    def build(name: str):
        b = get(name)
        if b.level != "sample" or name == "pear":
            raise ValueError(f"reward.pear.inner: '{name}' is not a per-sample correctness reward")
        return b.build(make_options(b, None), ctx)

    if cfg.inner == "auto":
        embedded, maths = build("embedded"), build("math")
        return lambda s: (embedded if s.data_source.startswith("embedded") else maths)(s)
    return build(cfg.inner)


def _acc(out) -> float:
    if isinstance(out, dict):
        return float(out["acc"]) if "acc" in out else float(float(out["score"]) > 0)
    return float(float(out) > 0)


def summarise(extras: dict[str, torch.Tensor], acc: torch.Tensor, group_ids: torch.Tensor) -> dict[str, float]:
    """PEAR's metrics over the responses it scored (docs/metrics.md).

    Args:
        extras: ``h_think``, ``h_answer``, ``p`` as ``[N]`` (NaN where a call failed).
        acc: ``[N]`` correctness.
        group_ids: ``[N]`` (unused).

    Returns:
        ``h_think_correct``, ``h_think_wrong``, ``h_answer_correct``, ``h_answer_wrong``
        (means; NaN with no such response), ``p_mean``, ``p_pos_frac_correct`` (correct
        responses with P > 0), ``p_gt1_frac`` (responses with P > 1, whose r < 0 if correct).
    """
    p = extras.get("p")
    if p is None:
        return {}
    ok = ~torch.isnan(p)
    correct, wrong = ok & (acc > 0), ok & ~(acc > 0)

    def mean(x: torch.Tensor, m: torch.Tensor) -> float:
        return float(x[m].mean()) if m.any() else math.nan

    return {
        "h_think_correct": mean(extras["h_think"], correct),
        "h_think_wrong": mean(extras["h_think"], wrong),
        "h_answer_correct": mean(extras["h_answer"], correct),
        "h_answer_wrong": mean(extras["h_answer"], wrong),
        "p_mean": mean(p, ok),
        "p_pos_frac_correct": mean((p > 0).double(), correct),
        "p_gt1_frac": mean((p > 1).double(), ok),
    }


@register("pear", options=PEARConfig, summarise=summarise)
def build_pear(cfg: PEARConfig, ctx: RewardContext):
    """The ``pear`` per-sample scorer: ``{"score", "acc", "h_think", "h_answer", "p"}``."""
    if not ctx.has_tokenizer:
        raise ValueError("reward 'pear' needs the tokenizer (to find the '</think>' token); "
                         "pass tokenizer= to RewardManager")
    inner = _inner_checker(cfg, ctx)

    def pear(sample: Sample) -> dict[str, float]:
        if sample.entropy is None:
            raise ValueError("reward 'pear' needs sample.entropy (π_old token entropies)")
        entropy = torch.as_tensor(sample.entropy)
        if entropy.numel() != len(sample.response_ids):
            raise ValueError(f"sample.entropy has {entropy.numel()} values for "
                             f"{len(sample.response_ids)} response tokens")
        h_think, h_answer = phase_entropies(entropy, find_close(list(sample.response_ids), ctx))
        acc = _acc(inner(sample))
        r, p = pear_reward(h_think, h_answer, acc > 0, cfg)
        return {"score": r, "acc": acc, "h_think": h_think, "h_answer": h_answer, "p": p}

    return pear
