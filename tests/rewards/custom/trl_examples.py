"""The example reward functions of TRL's GRPO documentation, in the form it gives them.

TRL ("Using a custom reward function", GRPOTrainer docs) shows an accuracy reward that parses
the dataset's ``solution`` column and each completion with math-verify, and a format reward
that matches a regex on ``completion[0]["content"]`` of a conversational completion. These are
written to that documented interface (keyword names, argument shapes, return values) so that a
test can load them unchanged, as a TRL user would.
"""

import re

from math_verify import LatexExtractionConfig, parse, verify


def accuracy_reward(completions, solution, **kwargs):
    """1.0 when the completion's answer equals the solution's (math-verify); None when the
    solution cannot be parsed (TRL skips such samples)."""
    contents = [completion[0]["content"] for completion in completions]
    rewards = []
    for content, sol in zip(contents, solution):
        gold = parse(sol, extraction_mode="first_match", extraction_config=[LatexExtractionConfig()])
        if len(gold) == 0:
            rewards.append(None)
            continue
        answer = parse(content, extraction_mode="first_match")
        rewards.append(float(verify(gold, answer)))
    return rewards


def format_reward(completions, **kwargs):
    """1.0 when the completion is ``<think>...</think><answer>...</answer>``, else 0.0."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    contents = [completion[0]["content"] for completion in completions]
    return [1.0 if re.match(pattern, content, re.DOTALL) else 0.0 for content in contents]
