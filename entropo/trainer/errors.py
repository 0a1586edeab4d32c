"""Errors shared by the run (:mod:`entropo.trainer.run`) and the modules it drives, kept apart
so that each imports them without importing the other."""

from __future__ import annotations


class RunError(RuntimeError):
    """A run that cannot start (bad model path, empty dataset, ...); the message says why."""
