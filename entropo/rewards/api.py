"""What a reward function sees and returns.

A reward function scores one sample: ``fn(sample: Sample) -> float | dict``; a dict carries
``"score"`` (the reward) and optionally ``"acc"`` (1 for a verified-correct answer, the
metric dynamic sampling filters on) and other numeric components, each logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Sample:
    """One response to score.

    Attributes:
        prompt: the prompt as given to the policy (rendered text).
        response: the response text (special tokens kept, e.g. ``</think>``).
        response_ids: the response token ids (valid tokens only).
        ground_truth: the dataset's reference answer, or None.
        data_source: the dataset name (verl convention).
        extra_info: any other per-row data.
        group: index of the prompt this response answers within the step.
        entropy: π_old token entropies at the rollout temperature (valid tokens), for rewards
            that ask for them (PEAR).
        old_logp: π_old log-probs of the response tokens.
    """

    prompt: str
    response: str
    response_ids: list[int]
    ground_truth: str | None
    data_source: str
    extra_info: dict[str, Any] = field(default_factory=dict)
    group: int = 0
    entropy: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None


RewardFn = Callable[[Sample], "float | dict[str, float]"]
