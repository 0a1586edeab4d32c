"""A reward that reports which environment variables it can see (tests/rewards/test_reward_env_security.py)."""

import os

WATCHED = ("WANDB_API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY", "PATH", "HOME", "RAY_JOB_ID")


def spy(sample):
    """Score 1; for each watched variable, ``env_<NAME>`` 1 if ``os.environ`` holds it and
    ``initial_<NAME>`` 1 if ``/proc/self/environ`` does (the environment the process started
    with, which clearing ``os.environ`` would not change)."""
    with open("/proc/self/environ", "rb") as f:
        initial = {item.split(b"=", 1)[0].decode() for item in f.read().split(b"\0") if b"=" in item}
    out = {"score": 1.0}
    for name in WATCHED:
        out[f"env_{name}"] = float(name in os.environ)
        out[f"initial_{name}"] = float(name in initial)
    return out
