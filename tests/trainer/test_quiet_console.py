"""Issue 16 item 9, a quiet console: the actors draw no third-party progress bars, and starting
a local Ray does not print Ray's token-authentication notice (its other warnings stay)."""

from __future__ import annotations

import logging

import pytest

from entropo.config import load_config
from entropo.trainer import cluster
from entropo.trainer.cluster import PROGRESS_BAR_ENV, RAY_AUTH_LOGGER, actor_env
from entropo.trainer.placement import Slot
from tests.log_capture import LogMessages


def test_actors_draw_no_progress_bars_unless_the_driver_asks(monkeypatch):
    cfg = load_config(overrides=["learner.ranks=1", "rollout.workers=1"])
    for key in PROGRESS_BAR_ENV:
        monkeypatch.delenv(key, raising=False)
    for gpus in (0.0, 1.0):
        env = actor_env(cfg, Slot(0, 0, 1.0, gpus), single_node=True)
        assert {k: env[k] for k in PROGRESS_BAR_ENV} == {
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # a user who wants the bars gets them
    assert actor_env(cfg, Slot(0, 0, 1.0, 0.0), single_node=True)["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"


def test_the_progress_switches_turn_off_transformers_and_tqdm_bars():
    """The variables do what PROGRESS_BAR_ENV says, in a fresh process as an actor's is."""
    import subprocess
    import sys

    code = ("import huggingface_hub.constants as c, transformers.utils.logging as t, tqdm;"
            "print(c.HF_HUB_DISABLE_PROGRESS_BARS, t.is_progress_bar_enabled(), tqdm.tqdm(range(1)).disable)")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", **dict.fromkeys(PROGRESS_BAR_ENV, "1")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "True"]


def test_ray_token_auth_notice_is_the_one_record_dropped():
    pytest.importorskip("ray")
    from ray._private.authentication import authentication_token_setup as ray_auth

    # the filter is tied to Ray's own logger and text: if a Ray upgrade moves either, this fails
    assert ray_auth.logger.name == RAY_AUTH_LOGGER
    records = LogMessages()
    ray_auth.logger.addHandler(records)
    ray_auth.logger.addFilter(cluster._drop_token_auth_notice)
    try:
        ray_auth._warn_token_auth_enabled()  # the notice every local start logs
        ray_auth._warn_token_auth_disabled()  # a security warning: it must stay
    finally:
        ray_auth.logger.removeFilter(cluster._drop_token_auth_notice)
        ray_auth.logger.removeHandler(records)
    assert len(records.messages) == 1 and records.messages[0].startswith("Token authentication is disabled")


def test_connect_filters_only_around_its_local_ray_init(monkeypatch):
    ray = pytest.importorskip("ray")
    cfg = load_config(overrides=["learner.ranks=1", "rollout.workers=1"])
    auth_log = logging.getLogger(RAY_AUTH_LOGGER)
    import ray._private.ray_constants as ray_constants

    seen: list[tuple[dict, bool, bool]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(
        (kw, cluster._drop_token_auth_notice in auth_log.filters, ray_constants.ENABLE_RAY_CLUSTER)))
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: cluster.LOOPBACK)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster.connect(cfg)
    assert seen[0][0]["address"] == "local" and seen[0][1]  # filtered while the local Ray starts
    assert cluster._drop_token_auth_notice not in auth_log.filters  # and only then
    # the node IP is 127.0.0.1 while the local Ray starts (start_local), and Ray's flag is back after
    assert seen[0][2] is False and ray_constants.ENABLE_RAY_CLUSTER is True
    monkeypatch.setenv("RAY_ADDRESS", "ray://elsewhere:10001")
    cluster.connect(cfg)
    assert seen[1][0]["address"] == "ray://elsewhere:10001" and not seen[1][1]  # attaching: Ray's notices stay


def test_only_deepspeeds_shm_op_notice_is_dropped():
    from entropo.trainer.strategy import is_shm_op_notice

    assert is_shm_op_notice("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
    assert not is_shm_op_notice("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op failed to build")
    assert not is_shm_op_notice("ninja: building 3 targets")
