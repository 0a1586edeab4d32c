"""Reward functions with variance for a random tiny model (loaded by path in tests)."""


def digit_fraction(sample):
    """Native convention: the fraction of digits in the response; ``acc`` = it closed its thinking."""
    text = sample.response
    return {"score": sum(c.isdigit() for c in text) / max(len(text), 1), "acc": float("</think>" in text)}


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl convention: 1 when the response contains the first digit of the ground truth."""
    return {"score": float(bool(ground_truth) and ground_truth[0] in solution_str)}


def length_penalty(prompts, completions, **columns):
    """TRL convention: a small penalty growing with the completion length."""
    return [-len(c) / 1000.0 for c in completions]
