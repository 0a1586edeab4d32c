"""The math of the entropy-control methods as pure functions of tensors (docs/algorithms.md).

This package imports torch only (a test enforces it). Anything distributed reaches these
functions as an injected :class:`~entropo.algorithms.reduce.Reducer`.
"""
