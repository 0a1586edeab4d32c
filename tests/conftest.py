"""Shared fixtures: offline hub, a tiny local model, one local Ray instance per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """The embedded tiny Qwen2 (random init) saved with ``save_pretrained`` in a temp dir."""
    from entropo.models.tiny import save_tiny

    return str(save_tiny(tmp_path_factory.mktemp("tiny-model")))


def start_local_ray():
    """The session's local Ray instance (also restarted by modules that replace it for a while,
    e.g. tests/trainer/test_multinode.py's simulated cluster), started as a run starts its own:
    on 127.0.0.1, with token authentication (entropo.trainer.cluster.start_local)."""
    import ray

    from entropo.trainer.cluster import start_local

    os.environ.pop("RAY_ADDRESS", None)
    start_local(num_cpus=8, log_to_driver=False)
    return ray


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every test that needs actors."""
    ray = pytest.importorskip("ray")
    start_local_ray()
    yield ray
    ray.shutdown()
