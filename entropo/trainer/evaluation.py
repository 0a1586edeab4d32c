"""Evaluation: pass@1, pass@k and maj@k at a given temperature, overall and per data source.

- pass@k: the unbiased estimator of Chen et al. (arXiv 2107.03374, Eq. 1) from n samples of
  which c are correct: ``1 − C(n−c, k)/C(n, k)``, averaged over prompts.
- maj@k: the answer given most often among the first k samples (ties: the one seen first)
  is checked; correct if any sample with that answer was scored correct. Answers are the
  text after the last ``</think>`` (or the whole response when there is none), stripped.

Validation reports plain correctness (the reward functions' ``acc``), never a shaped reward
such as PEAR's: a shaped reward mixes correctness with what it shapes (length, entropy).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from entropo.config import TrainConfig
from entropo.trainer.engine import SamplingParams

EVAL_SEED = 20_250_101
"""Evaluations reuse one seed so that successive evaluations differ only by the policy."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c correct) is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def answer_key(response: str) -> str:
    return response.rsplit("</think>", 1)[-1].strip()


def majority_correct(answers: list[str], correct: list[bool]) -> bool:
    counts = Counter(answers)
    best = max(counts.values())
    winner = next(a for a in answers if counts[a] == best)
    return any(c for a, c in zip(answers, correct) if a == winner)


def evaluate(cfg: TrainConfig, cluster, rows: list, tokenizer, score) -> dict[str, float]:
    """Generate ``evaluation.n`` samples for each row and score them.

    Args:
        cfg: the run config (``evaluation`` and ``rollout`` sections).
        cluster: the actors (only the rollout workers are used).
        rows: the evaluation prompts.
        tokenizer: the policy's tokenizer.
        score: ``score(batch) -> (correct [N], error_frac)``: plain correctness (0/1) and the
            share of reward calls that fell back.
    """
    ev = cfg.evaluation
    params = SamplingParams(n=ev.n, temperature=ev.temperature, top_p=1.0,
                            max_new_tokens=cfg.rollout.max_new_tokens, stop=tuple(cfg.rollout.stop), seed=EVAL_SEED)
    batch = cluster.rollout(rows, params, tokenizer)
    correct_t, error_frac = score(batch)
    correct = correct_t.bool().tolist()
    groups: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(batch.group_ids.tolist()):
        groups[g].append(i)
    by_source: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for g, idx in groups.items():
        source = rows[g].data_source
        c = [correct[i] for i in idx]
        answers = [answer_key(batch.response_text[i]) for i in idx]
        for scope in ("all", source):
            stats = by_source[scope]
            stats["pass@1"].append(sum(c) / len(c))
            for k in ev.k:
                if k > 1:
                    stats[f"pass@{k}"].append(pass_at_k(len(c), sum(c), k))
                stats[f"maj@{k}"].append(float(majority_correct(answers[:k], c[:k])))
    out: dict[str, float] = {}
    for scope, stats in by_source.items():
        prefix = "eval" if scope == "all" else f"eval/{scope}"
        for name, values in stats.items():
            out[f"{prefix}/{name}"] = sum(values) / len(values)
    out["eval/response_length/mean"] = float(batch.mask.sum(-1).mean())
    out["eval/prompts"] = float(len(groups))
    out["eval/reward_error_frac"] = float(error_frac)
    return out
