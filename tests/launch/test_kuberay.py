"""configs/kuberay/rayjob.yaml: a RayJob with a head and a GPU worker group whose entrypoint
trains with a config that loads (STYLE 17: every YAML in configs/ is validated)."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from entropo.config import load_config
from entropo.launch import TRAIN_COMMAND

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "configs" / "kuberay" / "rayjob.yaml"


def test_rayjob_manifest_is_a_head_and_a_gpu_worker_group():
    job = yaml.safe_load(MANIFEST.read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the driver only
    assert {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]} >= {6379, 8265}
    (workers,) = cluster["workerGroupSpecs"]
    container = workers["template"]["spec"]["containers"][0]
    gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus >= 1 and workers["replicas"] >= 1
    assert container["image"] == head["template"]["spec"]["containers"][0]["image"]


def test_rayjob_entrypoint_trains_a_valid_config():
    spec = yaml.safe_load(MANIFEST.read_text())["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert tuple(argv[: len(TRAIN_COMMAND)]) == TRAIN_COMMAND
    config, overrides = argv[len(TRAIN_COMMAND)], argv[len(TRAIN_COMMAND) + 1:]
    assert (ROOT / config).is_file()
    cfg = load_config(ROOT / config, overrides)  # every override is a config field
    by_key = dict(o.split("=", 1) for o in overrides)
    gpus = yaml.safe_load(MANIFEST.read_text())["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    total_gpus = gpus["replicas"] * int(gpus["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    # one GPU per learner rank and per rollout worker (the default gpus_per_* on a GPU cluster)
    assert cfg.learner.ranks + cfg.rollout.workers <= total_gpus, by_key
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
