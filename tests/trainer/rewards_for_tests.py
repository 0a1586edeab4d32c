"""Reward functions with variance for a random tiny model (loaded by path in tests)."""


def digit_fraction(sample):
    """Native convention: the fraction of digits in the response; ``acc`` = it closed its thinking."""
    text = sample.response
    return {"score": sum(c.isdigit() for c in text) / max(len(text), 1), "acc": float("</think>" in text)}
