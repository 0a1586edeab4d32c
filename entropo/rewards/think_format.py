"""The ``format`` reward: a think phase, then a non-empty answer.

``score = 1`` when the response is ``<think>…</think>`` followed by a non-empty answer,
with exactly one ``<think>`` and one ``</think>`` (leading whitespace allowed), else 0. When
the prompt already ends with ``<think>`` (chat templates that open the think block for the
model), the response may start inside it. With ``answer_tag`` the answer must be
``<answer>…</answer>`` with non-empty content and nothing after it (DeepSeek-R1's format
reward ``^<think>.*?</think>\\s*<answer>.*?</answer>$``).

It reports no ``acc``: correctness comes from the other functions of ``reward.fns``.
"""

from __future__ import annotations

import re

from entropo.rewards.api import Sample
from entropo.rewards.configs import FormatConfig
from entropo.rewards.registry import RewardContext, register

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_ANSWER = re.compile(r"\s*<answer>(.*?)</answer>\s*", re.S)


def well_formed(response: str, prompt: str, answer_tag: bool) -> bool:
    """Whether a response has the think/answer structure.

    Args:
        response: the decoded response.
        prompt: the rendered prompt (an open ``<think>`` at its end counts as the response's).
        answer_tag: require ``<answer>…</answer>`` as the answer.

    Returns:
        True when well formed.
    """
    text = response.lstrip()
    if prompt.rstrip().endswith(THINK_OPEN) and not text.startswith(THINK_OPEN):
        text = THINK_OPEN + text
    if not text.startswith(THINK_OPEN) or text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
        return False
    answer = text.split(THINK_CLOSE, 1)[1]
    if answer_tag:
        m = _ANSWER.fullmatch(answer)
        return bool(m and m.group(1).strip())
    return bool(answer.strip())


@register("format", options=FormatConfig, reads_policy=False)
def build_format(cfg: FormatConfig, ctx: RewardContext):
    """The ``format`` per-sample scorer: a float."""

    def format_reward(sample: Sample) -> float:
        return float(well_formed(sample.response, sample.prompt, cfg.answer_tag))

    return format_reward
