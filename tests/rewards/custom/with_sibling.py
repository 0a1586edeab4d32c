"""A reward file that imports a module beside it, as reward files written for verl do."""

from sibling_helpers import digits_in


def score(sample):
    return float(digits_in(sample.response))
