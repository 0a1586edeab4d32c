"""The math of spec/ALGORITHMS.md as pure functions of tensors.

This package imports torch only (a test enforces it). Anything distributed reaches these
functions as an injected :class:`~entropo.algorithms.reduce.Reducer`.
"""
