"""The ``empo`` reward: EMPO semantic-cluster reward, fully unsupervised.

Paper: Zhang et al., "Right Question is Already Half the Answer: Fully Unsupervised LLM
Reasoning Incentivization", arXiv 2504.05812. Code: github.com/QingyangZhang/EMPO @ c5eccd4
(``trl/src/open_r1/rewards.py``, ``get_empo_math_reward``).

For the ``G`` responses of one prompt:

    â_i   = extracted final answer ('' when none)
    C     = clusters of {â_i} by semantic equivalence (math: rule-based math_verify)
    p(C)  = |C| / G          SE = −Σ_C p(C) ln p(C)
    R_i   = p(C(â_i))        if SE < ln G and â_i ≠ ''
          = empty_score      if â_i = ''          (0 in the math variant)
          = 0                if SE ≥ ln G         (all answers distinct: no signal)

Then standard GRPO advantages (docs/algorithms.md §4). The gate ``SE < ln G`` is evaluated as "fewer
clusters than responses", which is the same condition (SE reaches ln G only when all ``G``
answers are distinct) without floating-point ties. Empty answers form one cluster and count
in ``G``; ``G = 1`` is always gated off (``SE = 0 = ln 1``, so ``SE < ln G`` fails).

Clustering is greedy in batch order: an answer joins the first cluster whose first member
it is equivalent to (math: equal after normalisation, or ``math_verify.verify``; embedded:
exact string equality); cluster ids are 0, 1, … in order of first appearance and are also
returned as ``RewardResult.cluster_ids`` (SEED-GRPO reads them).

The reward never reads the ground truth. When a sample has one, ``acc`` is still reported,
from the matching checker, for monitoring (``reward/accuracy``); dynamic sampling on ``acc``
would then use ground truth, so EMPO recipes leave it off. Not implemented: the paper's
general-domain variant (verifier-model clustering, ROUGE-L restatement check).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from entropo.data import embedded
from entropo.rewards import math_answer
from entropo.rewards.api import Sample
from entropo.rewards.configs import EMPOConfig
from entropo.rewards.registry import RewardContext, register


def answer_mode(sample: Sample, mode: str) -> str:
    """``mode``, with ``auto`` resolved by ``data_source`` (embedded* -> embedded, else math)."""
    if mode != "auto":
        return mode
    return "embedded" if sample.data_source.startswith("embedded") else "math"


def extract(sample: Sample, mode: str) -> str:
    """The final answer of one response ('' when there is none).

    Args:
        sample: the response.
        mode: ``math`` or ``embedded`` (or ``auto``, resolved by ``data_source``).

    Returns:
        The stripped answer.
    """
    if answer_mode(sample, mode) == "embedded":
        return embedded.extract_answer(sample.response) or ""
    return (math_answer.extract_answer(sample.response) or "").strip()


def cluster(answers: list[str], same: Callable[[str, str], bool]) -> list[int]:
    """Greedy clustering by an equivalence test (module docstring).

    Args:
        answers: the group's answers, in batch order.
        same: ``same(representative, answer)``; called only on distinct strings.

    Returns:
        Cluster ids, 0, 1, … in order of first appearance.
    """
    reps: list[str] = []
    ids: list[int] = []
    for a in answers:
        for c, rep in enumerate(reps):
            if a == rep or same(rep, a):
                ids.append(c)
                break
        else:
            reps.append(a)
            ids.append(len(reps) - 1)
    return ids


def math_equivalence(timeout_s: int) -> Callable[[str, str], bool]:
    """``same(a, b)`` for math answers: normalised equality, else math_verify (parses cached)."""
    parsed: dict[str, list] = {}

    def parse(a: str) -> list:
        if a not in parsed:
            parsed[a] = math_answer.parse_answer(a, timeout_s) if a else []
        return parsed[a]

    def same(a: str, b: str) -> bool:
        if not a or not b:
            return a == b
        if math_answer.normalise(a) == math_answer.normalise(b):
            return True
        return math_answer.verify_parsed(parse(a), parse(b), timeout_s)

    return same


def empo_rewards(cluster_ids: list[int], empty: list[bool], empty_score: float
                 ) -> tuple[list[float], float, bool, float]:
    """EMPO rewards of one group from its cluster ids (the formula in the module docstring).

    Args:
        cluster_ids: ``[G]`` cluster id of each response.
        empty: ``[G]`` whether each response's answer is empty.
        empty_score: reward of an empty answer when the group is not gated off.

    Returns:
        ``(rewards [G], SE, gated, majority-cluster probability)``; ``gated`` is True when
        ``SE ≥ ln G`` (all answers distinct) and every reward is 0.
    """
    g = len(cluster_ids)
    sizes: dict[int, int] = {}
    for c in cluster_ids:
        sizes[c] = sizes.get(c, 0) + 1
    probs = {c: n / g for c, n in sizes.items()}
    se = -sum(p * math.log(p) for p in probs.values())
    gated = len(sizes) >= g  # ⇔ SE ≥ ln G (see the module docstring)
    if gated:
        rewards = [0.0] * g
    else:
        rewards = [empty_score if e else probs[c] for c, e in zip(cluster_ids, empty)]
    return rewards, se, gated, max(probs.values())


def summarise(extras: dict[str, torch.Tensor], acc: torch.Tensor, group_ids: torch.Tensor) -> dict[str, float]:
    """EMPO's metrics (docs/metrics.md), one value per group (each group's first response carries it).

    Args:
        extras: ``se``, ``gated``, ``majority_p`` as ``[N]`` (NaN where a call failed).
        acc: ``[N]`` (unused).
        group_ids: ``[N]`` prompt group of each response.

    Returns:
        ``se_mean`` (mean SE per prompt), ``gated_frac`` (prompts gated off) and
        ``majority_p_mean`` (mean majority-cluster probability).
    """
    se = extras.get("se")
    if se is None:
        return {}
    first = torch.zeros_like(se, dtype=torch.bool)
    seen: set[int] = set()
    for i, g in enumerate(group_ids.tolist()):
        if g not in seen and not math.isnan(float(se[i])):
            seen.add(g)
            first[i] = True
    if not first.any():
        return {}
    return {
        "se_mean": float(se[first].mean()),
        "gated_frac": float(extras["gated"][first].mean()),
        "majority_p_mean": float(extras["majority_p"][first].mean()),
    }


def _accuracy(sample: Sample, mode: str, timeout_s: int) -> float | None:
    if sample.ground_truth is None:
        return None
    if answer_mode(sample, mode) == "embedded":
        return embedded.score(sample.response, sample.ground_truth)
    acc, _ = math_answer.check(sample.response, sample.ground_truth,
                               math_answer.MathConfig(check_timeout_s=timeout_s))
    return acc


@register("empo", level="group", options=EMPOConfig, summarise=summarise)
def build_empo(cfg: EMPOConfig, ctx: RewardContext):
    """The ``empo`` group scorer: per response ``{"score", "cluster", "se", "gated",
    "majority_p"}`` (+ ``"acc"`` when there is a ground truth)."""

    def empo(samples: list[Sample]) -> list[dict[str, float]]:
        answers = [extract(s, cfg.answer) for s in samples]
        modes = {answer_mode(s, cfg.answer) for s in samples}
        same = math_equivalence(cfg.check_timeout_s) if "math" in modes else (lambda a, b: a == b)
        ids = cluster(answers, same)
        rewards, se, gated, majority = empo_rewards(ids, [not a for a in answers], cfg.empty_score)
        out = []
        for s, r, c in zip(samples, rewards, ids):
            d = {"score": r, "cluster": c, "se": se, "gated": float(gated), "majority_p": majority}
            acc = _accuracy(s, cfg.answer, cfg.check_timeout_s)
            if acc is not None:
                d["acc"] = acc
            out.append(d)
        return out

    return empo


def build_clusters(ctx: RewardContext, answer: str, check_timeout_s: int):
    """A group scorer that only clusters answers (``reward.cluster_answers`` without EMPO):
    per response ``{"score": 0, "cluster": id}``."""

    def answer_clusters(samples: list[Sample]) -> list[dict[str, float]]:
        answers = [extract(s, answer) for s in samples]
        math_mode = any(answer_mode(s, answer) == "math" for s in samples)
        same = math_equivalence(check_timeout_s) if math_mode else (lambda a, b: a == b)
        return [{"score": 0.0, "cluster": c} for c in cluster(answers, same)]

    return answer_clusters
