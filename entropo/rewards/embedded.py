"""The ``embedded`` reward: the embedded addition task's exact-match check (0/1).

``score = acc = 1`` when the text after the last ``</think>`` is exactly the sum (see
:mod:`entropo.data.embedded`), else 0, also when ``</think>`` is missing.
"""

from __future__ import annotations

from entropo.data import embedded
from entropo.rewards.api import Sample
from entropo.rewards.registry import RewardContext, register


def embedded_reward(sample: Sample) -> dict[str, float]:
    """The embedded addition task: 1 for the exact sum after ``</think>``, else 0."""
    acc = embedded.score(sample.response, sample.ground_truth or "")
    return {"score": acc, "acc": acc}


@register("embedded", reads_policy=False)
def build_embedded(cfg: None, ctx: RewardContext):
    """The ``embedded`` per-sample scorer (no options)."""
    return embedded_reward
