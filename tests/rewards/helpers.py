"""Small builders shared by the reward tests."""

from __future__ import annotations

import torch

from entropo.config import RewardConfig
from entropo.rewards.api import Sample


def sample(response: str, ground_truth: str | None = "0", group: int = 0, data_source: str = "test/math",
           ids: list[int] | None = None, entropy=None, prompt: str = "p", extra_info: dict | None = None) -> Sample:
    ids = list(range(len(response))) if ids is None else ids
    if entropy is not None:
        entropy = torch.as_tensor(entropy, dtype=torch.float32)
    return Sample(prompt=prompt, response=response, response_ids=ids, ground_truth=ground_truth,
                  data_source=data_source, extra_info=extra_info or {}, group=group, entropy=entropy)


def reward_cfg(fns, mode: str = "local", timeout_s: float = 5.0, fallback_score: float = 0.0, **kw) -> RewardConfig:
    """A ``RewardConfig`` (built-in option sections may be given as dicts)."""
    return RewardConfig(fns=list(fns), fallback_score=fallback_score, timeout_s=timeout_s, mode=mode, **kw)
