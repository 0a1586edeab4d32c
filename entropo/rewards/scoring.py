"""Score a step batch with the configured reward functions (in the controller's process).

Each entry of ``reward.fns`` is a registered built-in name. The total reward is the sum of
the components' scores; ``acc`` is taken from the first function that reports one (else
``score > 0``). A function that raises or returns a non-finite score gives
``reward.fallback_score``, and the error is counted, never fatal.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable

import torch

from entropo.data import embedded
from entropo.rewards.api import RewardFn, Sample

BUILTINS: dict[str, RewardFn] = {}
MAX_LOGGED_TRACEBACKS = 3


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    def deco(fn: RewardFn) -> RewardFn:
        BUILTINS[name] = fn
        return fn

    return deco


@register("embedded")
def embedded_reward(sample: Sample) -> dict[str, float]:
    """The embedded addition task: 1 for the exact sum after ``</think>``, else 0."""
    acc = embedded.score(sample.response, sample.ground_truth or "")
    return {"score": acc, "acc": acc}


def resolve(names: list[str]) -> list[tuple[str, RewardFn]]:
    out = []
    for name in names:
        if name not in BUILTINS:
            raise ValueError(f"reward.fns: unknown reward '{name}'; built-ins: {', '.join(sorted(BUILTINS))}")
        out.append((name, BUILTINS[name]))
    return out


def score_samples(samples: list[Sample], fns: list[tuple[str, RewardFn]], fallback: float
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, dict[str, float]]:
    """``(rewards [N], components name -> [N], correct [N], metrics)``."""
    n = len(samples)
    comps = {name: torch.zeros(n) for name, _ in fns}
    correct = torch.full((n,), float("nan"))
    errors = 0
    logged = 0
    for i, sample in enumerate(samples):
        for name, fn in fns:
            try:
                out = fn(sample)
                score = float(out["score"] if isinstance(out, dict) else out)
                if not math.isfinite(score):
                    raise ValueError(f"reward '{name}' returned {score}")
                if isinstance(out, dict) and "acc" in out and math.isnan(correct[i]):
                    correct[i] = float(out["acc"])
            except Exception:
                score = fallback
                errors += 1
                if logged < MAX_LOGGED_TRACEBACKS:
                    logged += 1
                    print(f"[reward] '{name}' failed on sample {i}:\n{traceback.format_exc()}", flush=True)
            comps[name][i] = score
    rewards = sum(comps.values()) if comps else torch.zeros(n)
    correct = torch.where(torch.isnan(correct), (rewards > 0).float(), correct)
    metrics = {"reward/errors": float(errors)}
    return rewards, comps, correct, metrics
