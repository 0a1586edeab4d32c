"""Reward functions that misbehave on a fixed share of the samples, for benchmarks/reward_faults.py.

Each function is verl-style (``compute_score(data_source, solution_str, ground_truth,
extra_info)``) and misbehaves on the responses whose CRC-32 falls in the first ``SHARE`` of its
range (the same responses in every run), returning 0.0 on the others. ``most`` misbehaves on 90%.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import zlib

from entropo.rewards import group_reward

SHARE = float(os.environ.get("ENTROPO_FAULT_SHARE", "0.125"))
SLOW_S = float(os.environ.get("ENTROPO_FAULT_SLOW_S", "10"))
_LEAK: list[bytearray] = []


def _hit(text: str, share: float = SHARE) -> bool:
    return zlib.crc32(text.encode()) < share * 2**32


def ok(data_source, solution_str, ground_truth, extra_info=None):
    return 0.0


def raises(data_source, solution_str, ground_truth, extra_info=None):
    if _hit(solution_str):
        raise ValueError("a reward function that raises")
    return 0.0


def hangs(data_source, solution_str, ground_truth, extra_info=None):
    if _hit(solution_str):
        threading.Event().wait()
    return 0.0


def slow(data_source, solution_str, ground_truth, extra_info=None):
    if _hit(solution_str):
        time.sleep(SLOW_S)
    return 0.0


def nan(data_source, solution_str, ground_truth, extra_info=None):
    return math.nan if _hit(solution_str) else 0.0


def inf(data_source, solution_str, ground_truth, extra_info=None):
    return math.inf if _hit(solution_str) else 0.0


def string(data_source, solution_str, ground_truth, extra_info=None):
    return "0.5" if _hit(solution_str) else 0.0


def leaks(data_source, solution_str, ground_truth, extra_info=None):
    if _hit(solution_str):
        _LEAK.append(bytearray(b"\x01") * (200 << 20))  # 200 MiB of touched pages per call
    return 0.0


def exits(data_source, solution_str, ground_truth, extra_info=None):
    if _hit(solution_str):
        os._exit(1)
    return 0.0


def prints(data_source, solution_str, ground_truth, extra_info=None):
    if _hit(solution_str):
        sys.stdout.write("x" * (4 << 20))  # 4 MiB per call
        sys.stdout.flush()
    return 0.0


def most(data_source, solution_str, ground_truth, extra_info=None):
    if _hit(solution_str, 0.9):
        raise ValueError("a reward function that fails on most samples")
    return 0.0


@group_reward
def wrong_length(samples):
    """A group reward that returns one score too few for a hit group."""
    out = [0.0] * len(samples)
    return out[:-1] if _hit(samples[0].response) else out
