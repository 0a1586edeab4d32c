"""No variable of the trainer's environment reaches a reward function on a Ray worker unless
``reward.pass_env`` lists it (issue 17, item 9); local mode passes everything, as documented.

The secrets are set in the driver's environment *before* the local Ray instance starts, as
when a user exports them in the shell that runs ``entropo train``: then the raylet, and every
Ray worker it starts in the usual way, holds them (the control test). The session's instance
(``ray_session``) is shut down first and started again afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from entropo.config import ConfigError, load_config
from entropo.worker_env import allowed_env
from tests.rewards.custom.env_spy import WATCHED
from tests.rewards.helpers import reward_cfg, sample

slow_ray = [pytest.mark.distributed, pytest.mark.slow]
SECRETS = {name: f"secret-{name}" for name in ("WANDB_API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY")}
assert set(WATCHED) >= set(SECRETS), "env_spy.WATCHED must report every secret the tests plant"
SPY = f"{os.path.relpath(Path(__file__).parent / 'custom', Path.cwd())}/env_spy.py:spy"


@pytest.fixture(scope="module")
def secret_ray():
    ray = pytest.importorskip("ray")
    from tests.conftest import start_local_ray

    was_up = ray.is_initialized()
    ray.shutdown()
    saved = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)
    try:
        start_local_ray()
        yield ray
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if was_up:
            start_local_ray()


def seen(pass_env=(), mode="ray") -> dict[str, float]:
    """What the spy reward reports, as ``{"env_X": 0/1, "initial_X": 0/1}``."""
    from entropo.rewards import RewardManager

    with RewardManager(reward_cfg([SPY], mode=mode, workers=1, timeout_s=60.0, worker_cpus=0.5,
                                  pass_env=list(pass_env))) as rm:
        metrics = rm.score([sample("x")]).metrics
    return {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("reward/spy/")}


@pytest.mark.distributed
@pytest.mark.slow
def test_control_plain_ray_workers_hold_the_secrets(secret_ray):
    """Control: a Ray task started the usual way holds the driver's secrets (so the tests below can fail)."""

    @secret_ray.remote
    def environ() -> dict[str, str]:
        return dict(os.environ)

    env = secret_ray.get(environ.remote())
    assert {k: env.get(k) for k in SECRETS} == SECRETS


@pytest.mark.distributed
@pytest.mark.slow
def test_reward_workers_get_none_of_the_secrets(secret_ray):
    """A reward function on a Ray worker sees none of the driver's secrets (WANDB_API_KEY, HF_TOKEN, AWS_*, OPENAI_API_KEY), in os.environ or /proc/self/environ."""
    got = seen()
    for name in SECRETS:
        assert (got[f"env_{name}"], got[f"initial_{name}"]) == (0.0, 0.0), name
    # the base set (PATH, HOME: set wherever the tests run) and Ray's own variables pass
    for name in ("PATH", "HOME", "RAY_JOB_ID"):
        assert (got[f"env_{name}"], got[f"initial_{name}"]) == (1.0, 1.0), name


@pytest.mark.distributed
@pytest.mark.slow
def test_reward_workers_get_the_variables_pass_env_lists(secret_ray):
    """A reward function on a Ray worker sees exactly the secrets reward.pass_env lists (a name and a pattern)."""
    got = seen(pass_env=["HF_TOKEN", "OPENAI_*"])
    assert {n: got[f"env_{n}"] for n in SECRETS} == {"WANDB_API_KEY": 0.0, "HF_TOKEN": 1.0,
                                                     "AWS_SECRET_ACCESS_KEY": 0.0, "OPENAI_API_KEY": 1.0}


@pytest.mark.distributed
@pytest.mark.slow
def test_local_mode_passes_the_whole_environment(secret_ray):
    """reward.mode=local runs reward functions in the trainer's threads: they see every secret (the documented limit)."""
    got = seen(mode="local")
    assert all(got[f"env_{name}"] == 1.0 for name in SECRETS)


def test_the_allow_list_keeps_listed_names_patterns_and_ray_variables():
    env = {"PATH": "/bin", "LC_ALL": "C", "RAY_JOB_ID": "01", "HF_TOKEN": "t", "AWS_KEY": "k", "AWS_SECRET": "s",
           "PATHX": "no"}
    assert allowed_env(env, ["PATH", "LC_*", "AWS_SECRET"]) == {"PATH": "/bin", "LC_ALL": "C", "RAY_JOB_ID": "01",
                                                               "AWS_SECRET": "s"}


def test_pass_env_entries_are_checked_at_load():
    assert load_config(overrides=["reward.pass_env=OPENAI_API_KEY"]).reward.pass_env == ["OPENAI_API_KEY"]
    assert load_config(overrides=["reward.pass_env=[AWS_*,HF_TOKEN]"]).reward.pass_env == ["AWS_*", "HF_TOKEN"]
    with pytest.raises(ConfigError, match=r"reward.pass_env: 'A=B' is not a variable name"):
        load_config(overrides=["reward.pass_env=[A=B]"])
