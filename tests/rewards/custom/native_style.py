"""Custom rewards in entropo's native convention: fn(sample) and @group_reward fn(samples)."""

import math
import os
import threading
import time

from entropo.rewards import group_reward

_LEAK = []


def score(sample):
    return {"score": float(sample.response == sample.ground_truth), "acc": float(sample.response == sample.ground_truth)}


def flaky(sample):
    """Misbehaves as the response asks: raise, hang (blocks, no CPU), spin (busy loop), nan,
    none, leak (keeps extra_info['leak_mb'] MiB per call), die (ends the process: Ray only),
    die_leaving_child (forks a child that blocks, then ends the process: fork isolation only),
    hang_writing_pid (writes its pid to extra_info['pid_file'], then hangs), sleep (for
    extra_info['sleep_s'] seconds), log (sleeps as sleep, then appends extra_info['tag'] and its
    pid to extra_info['log']);
    else 1."""
    r = sample.response
    if r == "raise":
        raise ValueError("boom")
    if r == "hang":
        threading.Event().wait()
    if r in ("sleep", "log"):
        time.sleep(float(sample.extra_info.get("sleep_s", 0.0)))
    if r == "log":  # says that it ran, and where
        with open(sample.extra_info["log"], "a") as f:
            f.write(f"{sample.extra_info['tag']} {os.getpid()}\n")
    if r == "hang_writing_pid":  # says which process hangs
        with open(sample.extra_info["pid_file"], "w") as f:
            f.write(str(os.getpid()))
        threading.Event().wait()
    if r == "spin":
        while True:
            pass
    if r == "nan":
        return math.nan
    if r == "none":
        return None
    if r == "die":
        os._exit(1)
    if r == "die_leaving_child":  # its child keeps the parent's files open, then the call's process exits
        if os.fork() == 0:
            threading.Event().wait()
        os._exit(3)
    if r == "leak":
        _LEAK.append(bytearray(b"\x01") * (int(sample.extra_info.get("leak_mb", 1)) << 20))  # touched pages
    return 1.0


@group_reward
def group_share(samples):
    """Each response gets the share of its group that gave the same response."""
    return [sum(t.response == s.response for t in samples) / len(samples) for s in samples]


def two_args(sample, other):
    return 0.0
