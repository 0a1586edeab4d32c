"""Placement over a simulated 3-node Ray cluster (``ray.cluster_utils.Cluster``), a request
the cluster cannot hold, and a rollout worker lost between steps.

Nodes: the head (2 CPUs) and two workers (2 CPUs and a ``node_k`` resource each), all
processes on this machine. The reference run is colocated and ``STRICT_PACK`` (every actor
on one node); the other runs spread learner ranks over nodes and must give the same
numbers: placement moves processes, never the algorithm.

The module shuts down any Ray instance of the session first (``ray_session``) and brings the
session's local instance back when it is done (``tests/conftest.py: start_local_ray``).
"""

from __future__ import annotations

import math
import os
import time

import pytest

from entropo.config import load_config
from entropo.trainer.cluster import CPU_MALLOC_KEEP_BYTES, actor_env
from entropo.trainer.placement import (
    CONFIG_FIELDS,
    Placement,
    PlacementError,
    Slot,
    check_capacity,
    plan_placement,
)

slow = pytest.mark.slow
distributed = pytest.mark.distributed

STEPS = 2
COMPARED = ("entropy/mean", "actor/pg_loss", "actor/grad_norm", "reward/mean", "response_length/mean")


@pytest.fixture(scope="module")
def sim_cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster as RayCluster

    from tests.conftest import start_local_ray

    was_up = ray.is_initialized()
    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    cluster = RayCluster(initialize_head=True, head_node_args={"num_cpus": 2})
    for k in (1, 2):
        cluster.add_node(num_cpus=2, resources={f"node_{k}": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if was_up:
        start_local_ray()


def digit_fraction(sample):
    """A reward with variance for a random model: the fraction of digits in the response."""
    text = sample.response
    return {"score": sum(c.isdigit() for c in text) / max(len(text), 1), "acc": float("</think>" in text)}


def _cfg(model_dir, out, *overrides):
    return load_config(overrides=[
        f"model.path={model_dir}", f"trainer.output_dir={out}", "trainer.prompts_per_step=4",
        "rollout.n=4", "rollout.max_new_tokens=12", "learner.micro_batch_size=8", "learner.lr=1e-3",
        "learner.ranks=2", "learner.zero_stage=2", "rollout.workers=2",
        # rewards in the driver: the test is about the learner and rollout actors
        "reward.fns=[tests.trainer.test_multinode:digit_fraction]", "reward.mode=local",
        "logger.backends=[jsonl]", f"trainer.total_steps={STEPS}", *overrides,
    ])


def _train(cfg, kill_worker_after_step=None):
    """``STEPS`` controller steps; optionally kills a rollout worker after a step.

    Returns (per-step metrics, node ids of the actors, the cluster's restart count).
    """
    import ray

    from entropo.data.loading import load_rows
    from entropo.data.sampler import PromptSampler
    from entropo.models.loading import load_tokenizer
    from entropo.rewards import RewardManager
    from entropo.trainer.cluster import Cluster
    from entropo.trainer.controller import Controller

    tokenizer = load_tokenizer(cfg.model.path)
    rewards = RewardManager(cfg.reward, tokenizer)
    cluster = Cluster(cfg)
    try:
        ctl = Controller(cfg, cluster, PromptSampler(load_rows("embedded:addition"), 4, cfg.trainer.seed),
                         tokenizer, rewards, sinks=None)
        steps = []
        for step in range(1, STEPS + 1):
            steps.append(ctl.train_step())
            if step == kill_worker_after_step:
                ray.kill(cluster.workers[0], no_restart=True)
        return steps, cluster.node_ids(), cluster.restarts
    finally:
        cluster.shutdown()
        rewards.close()


@pytest.fixture(scope="module")
def single_node_run(sim_cluster, tiny_model_dir, tmp_path_factory):
    """Every actor on one node: colocated bundles (learner i + worker i), STRICT_PACK."""
    cfg = _cfg(tiny_model_dir, tmp_path_factory.mktemp("single"), "trainer.placement=STRICT_PACK",
               "trainer.colocate=true", "learner.cpus_per_rank=0.5", "rollout.cpus_per_worker=0.5")
    return _train(cfg)


def _assert_same_numbers(steps, reference):
    assert len(steps) == len(reference) == STEPS
    for got, want in zip(steps, reference):
        for key in COMPARED:
            assert math.isfinite(want[key]), key
            # the same seeded computation on other processes; gloo sums in the same order
            assert got[key] == pytest.approx(want[key], abs=1e-4, rel=1e-4), key
    assert reference[0]["actor/grad_norm"] > 0  # a real update, not a no-op


@slow
@distributed
def test_single_node_reference_is_on_one_node(single_node_run):
    _, nodes, restarts = single_node_run
    assert len(set(nodes["learner"] + nodes["rollout"])) == 1
    assert restarts == 0


@slow
@distributed
def test_spread_learners_land_on_different_nodes_and_match_one_node(sim_cluster, single_node_run, tiny_model_dir,
                                                                    tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path, "trainer.placement=SPREAD")
    steps, nodes, restarts = _train(cfg)
    assert len(set(nodes["learner"])) == 2, nodes
    assert len(set(nodes["rollout"])) == 2, nodes
    assert restarts == 0
    assert all(s["rollout/worker_restarts"] == 0 for s in steps)
    _assert_same_numbers(steps, single_node_run[0])


@slow
@distributed
def test_lost_rollout_worker_is_restarted_and_the_step_retried(sim_cluster, single_node_run, tiny_model_dir,
                                                               tmp_path, capsys):
    cfg = _cfg(tiny_model_dir, tmp_path, "trainer.placement=SPREAD")
    steps, nodes, restarts = _train(cfg, kill_worker_after_step=1)
    assert restarts == 1
    assert [s["rollout/worker_restarts"] for s in steps] == [0, 1]
    assert "rollout worker 0 lost" in capsys.readouterr().out
    # the recreated worker got the learner's step-1 weights and reran step 2's rollout with its seeds
    assert steps[1]["rollout/weight_version"] == 1
    _assert_same_numbers(steps, single_node_run[0])
    assert len(nodes["rollout"]) == 2


@slow
@distributed
def test_too_large_requests_fail_fast_naming_the_shortfall(sim_cluster, tiny_model_dir, tmp_path):
    import ray

    from entropo.trainer.cluster import Cluster

    cases = [
        (["learner.gpus_per_rank=1", "rollout.gpus_per_worker=1"],
         r"needs 4 GPUs for learner.ranks=2 × learner.gpus_per_rank=1 \+ rollout.workers=2 × "
         r"rollout.gpus_per_worker=1, cluster has 0"),
        (["learner.cpus_per_rank=4"],
         r"needs 10 CPUs for learner.ranks=2 × learner.cpus_per_rank=4 \+ rollout.workers=2 × "
         r"rollout.cpus_per_worker=1, cluster has 6"),
        (["learner.cpus_per_rank=2.5", "rollout.cpus_per_worker=0.5"],
         r"a learner bundle needs 2.5 CPU on one node .*largest node has 2 CPU"),
        (["trainer.placement=STRICT_PACK", "learner.cpus_per_rank=1.5"], r"STRICT_PACK needs 3 CPU on one node"),
        (["trainer.nodes=4"], r"trainer.nodes=4, but the Ray cluster has 3 alive node"),
        (["learner.ranks=4", "rollout.workers=1", "trainer.placement=STRICT_SPREAD", "rollout.cpus_per_worker=0.5"],
         r"STRICT_SPREAD needs 4 distinct nodes .* only 3 node"),
    ]
    for overrides, message in cases:
        with pytest.raises(PlacementError, match=message):
            Cluster(_cfg(tiny_model_dir, tmp_path, *overrides))
    # nothing was left reserved (the resource view lags by up to a heartbeat)
    deadline = time.time() + 10
    while ray.available_resources().get("CPU") != 6 and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU") == 6


@slow
@distributed
def test_placement_timeout_names_what_is_missing(sim_cluster, tiny_model_dir, tmp_path):
    import ray
    from ray.util import placement_group, remove_placement_group

    from entropo.trainer.cluster import Cluster

    # another job holds 5 of the 6 CPUs: the request fits the cluster, not what is free
    other = placement_group([{"CPU": 2}, {"CPU": 2}, {"CPU": 1}], strategy="SPREAD")
    ray.get(other.ready(), timeout=30)
    try:
        with pytest.raises(PlacementError, match=r"not ready after trainer.placement_timeout_s=2 s.*"
                                                 r"needs 4 CPUs .* available/total now: 1/6 CPU"):
            Cluster(_cfg(tiny_model_dir, tmp_path, "trainer.placement_timeout_s=2"))
    finally:
        remove_placement_group(other)


# ---- the plan and the capacity check alone (no Ray) ------------------------------------------

NODES = [{"CPU": 2.0}, {"CPU": 2.0, "node_1": 1.0}, {"CPU": 2.0, "node_2": 1.0}]
GPU_NODES = [{"CPU": 8.0}, {"CPU": 32.0, "GPU": 4.0}, {"CPU": 32.0, "GPU": 4.0}]


def _placement(*overrides):
    """The placement of the default config with these overrides (validated, GPUs not resolved)."""
    return Placement.from_config(load_config(overrides=list(overrides)))


def _plan(ranks, workers, *overrides):
    return plan_placement(ranks, workers, _placement(*overrides).resolved(cluster_has_gpus=False))


def test_separate_roles_get_one_group_each_and_one_bundle_per_actor():
    plan = plan_placement(2, 3, _placement("trainer.placement=SPREAD", "learner.cpus_per_rank=4",
                                           "learner.gpus_per_rank=1", "rollout.cpus_per_worker=2",
                                           "rollout.gpus_per_worker=1"))
    assert plan.names == ("learner", "rollout") and plan.strategy == "SPREAD"
    assert plan.groups == (({"CPU": 4.0, "GPU": 1.0},) * 2, ({"CPU": 2.0, "GPU": 1.0},) * 3)
    assert [(s.group, s.bundle, s.gpus) for s in plan.learners] == [(0, 0, 1.0), (0, 1, 1.0)]
    assert [(s.group, s.bundle) for s in plan.workers] == [(1, 0), (1, 1), (1, 2)]
    assert plan.total("CPU") == 14 and plan.total("GPU") == 5


def test_colocated_pairs_share_a_bundle_and_its_gpu():
    plan = plan_placement(2, 3, _placement("trainer.colocate=true", "learner.cpus_per_rank=4",
                                           "learner.gpus_per_rank=1", "rollout.cpus_per_worker=2",
                                           "rollout.gpus_per_worker=1"))
    # bundle i = learner i + worker i; worker 2 alone in bundle 2
    assert plan.groups == (({"CPU": 6.0, "GPU": 1.0},) * 2 + ({"CPU": 2.0, "GPU": 1.0},),)
    assert [(s.bundle, s.cpus, s.gpus) for s in plan.learners] == [(0, 4.0, 0.5), (1, 4.0, 0.5)]
    assert [(s.bundle, s.gpus) for s in plan.workers] == [(0, 0.5), (1, 0.5), (2, 1.0)]
    assert plan.total("GPU") == 3


def test_gpus_default_to_one_per_actor_on_a_gpu_cluster():
    p = _placement().resolved(cluster_has_gpus=True)
    assert (p.learner_gpus, p.rollout_gpus) == (1.0, 1.0)
    assert _placement("learner.gpus_per_rank=0").resolved(cluster_has_gpus=True).learner_gpus == 0.0
    assert _placement().resolved(cluster_has_gpus=False).rollout_gpus == 0.0
    assert "GPU" not in _plan(1, 1).groups[0][0]


def test_capacity_messages_name_the_fields_and_the_shortfall():
    gpu = plan_placement(4, 4, _placement("learner.gpus_per_rank=1", "rollout.gpus_per_worker=1"))
    with pytest.raises(PlacementError, match=r"needs 8 GPUs for learner.ranks=4 × learner.gpus_per_rank=1 "
                                             r"\+ rollout.workers=4 × rollout.gpus_per_worker=1, cluster has 0"):
        check_capacity(gpu, {"CPU": 72.0}, {"CPU": 72.0}, NODES, min_nodes=1)
    with pytest.raises(PlacementError, match=r"needs 8 CPUs for .* cluster has 6; needs 8 GPUs .* cluster has 0$"):
        check_capacity(gpu, {"CPU": 6.0}, {"CPU": 6.0}, NODES, min_nodes=1)
    with pytest.raises(PlacementError, match=r"needs 8 GPUs .* cluster has 4"):
        check_capacity(gpu, {"CPU": 72.0, "GPU": 4.0}, {}, GPU_NODES[:2], min_nodes=1)
    big = plan_placement(1, 1, _placement("learner.gpus_per_rank=8", "rollout.gpus_per_worker=0"))
    with pytest.raises(PlacementError, match=r"a learner bundle needs 1 CPU, 8 GPU on one node .*largest node has 32 CPU, 4 GPU"):
        check_capacity(big, {"CPU": 72.0, "GPU": 8.0}, {}, GPU_NODES, min_nodes=1)
    colo = plan_placement(2, 2, _placement("trainer.colocate=true", "learner.gpus_per_rank=1",
                                           "rollout.gpus_per_worker=1"))
    with pytest.raises(PlacementError, match=r"needs 2 GPUs for max\(learner.ranks=2, rollout.workers=2\) colocated"):
        check_capacity(colo, {"CPU": 8.0, "GPU": 1.0}, {}, [{"CPU": 8.0, "GPU": 1.0}], min_nodes=1)
    with pytest.raises(PlacementError, match=r"trainer.nodes=4, but the Ray cluster has 3"):
        check_capacity(_plan(1, 1), {"CPU": 6.0}, {"CPU": 6.0}, NODES, min_nodes=4)


def test_strict_strategies_are_checked_per_node():
    pack = _plan(3, 1, "trainer.placement=STRICT_PACK")
    with pytest.raises(PlacementError, match=r"STRICT_PACK needs 3 CPU on one node for the 3 learner bundles"):
        check_capacity(pack, {"CPU": 6.0}, {"CPU": 6.0}, NODES, min_nodes=1)
    assert check_capacity(_plan(2, 2, "trainer.placement=STRICT_PACK"), {"CPU": 6.0}, {"CPU": 6.0}, NODES,
                          min_nodes=1) == []
    spread = _plan(4, 1, "trainer.placement=STRICT_SPREAD", "rollout.cpus_per_worker=0.5")
    with pytest.raises(PlacementError, match=r"STRICT_SPREAD needs 4 distinct nodes .* only 3 node"):
        check_capacity(spread, {"CPU": 6.0}, {"CPU": 6.0}, NODES, min_nodes=1)
    # only the two GPU nodes can hold a GPU bundle: the CPU head does not count
    gpu_spread = plan_placement(3, 1, _placement("trainer.placement=STRICT_SPREAD", "learner.gpus_per_rank=1",
                                                 "rollout.gpus_per_worker=0"))
    with pytest.raises(PlacementError, match=r"needs 3 distinct nodes .* only 2 node"):
        check_capacity(gpu_spread, {"CPU": 72.0, "GPU": 8.0}, {"CPU": 72.0, "GPU": 8.0}, GPU_NODES, min_nodes=1)


def test_a_shortfall_of_free_resources_only_delays():
    notes = check_capacity(_plan(2, 2), {"CPU": 6.0}, {"CPU": 1.0}, NODES, min_nodes=1)
    assert notes == ["needs 4 CPUs, 1 available now: waiting for other work to release them"]


def test_cpu_actors_keep_freed_memory_unless_the_driver_says_otherwise(monkeypatch):
    cfg = load_config(overrides=["learner.ranks=1", "rollout.workers=1"])
    for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(key, raising=False)
    cpu = actor_env(cfg, Slot(0, 0, 1.0, 0.0), single_node=True)
    assert cpu["MALLOC_MMAP_THRESHOLD_"] == cpu["MALLOC_TRIM_THRESHOLD_"] == str(CPU_MALLOC_KEEP_BYTES) == "1073741824"
    assert cpu["DS_ACCELERATOR"] == "cpu" and cpu["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    gpu = actor_env(cfg, Slot(0, 0, 1.0, 1.0), single_node=True)
    assert gpu["DS_ACCELERATOR"] == "cuda" and not any(k.startswith("MALLOC_") for k in gpu)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "4096")
    assert actor_env(cfg, Slot(0, 0, 1.0, 0.0), single_node=True)["MALLOC_TRIM_THRESHOLD_"] == "4096"


def test_bad_placement_values_name_the_field():
    for override in ["trainer.placement=RANDOM", "learner.cpus_per_rank=0", "rollout.gpus_per_worker=-1",
                     "trainer.nodes=0", "trainer.placement_timeout_s=0"]:
        with pytest.raises(PlacementError, match=override.split("=")[0]):
            _placement(override)


def test_placement_is_read_from_the_config():
    overrides = ["trainer.placement=spread", "trainer.colocate=true", "trainer.nodes=3",
                 "trainer.placement_timeout_s=12.5", "learner.cpus_per_rank=2", "learner.gpus_per_rank=0.5",
                 "rollout.cpus_per_worker=3", "rollout.gpus_per_worker=0.25"]
    assert sorted(o.split("=")[0] for o in overrides) == sorted(CONFIG_FIELDS)
    cfg, default = load_config(overrides=overrides), load_config()
    p = Placement.from_config(cfg)
    for key, name in CONFIG_FIELDS.items():
        section, field_name = key.split(".")
        want = getattr(getattr(cfg, section), field_name)  # every placement field is a config field
        assert want != getattr(getattr(default, section), field_name), key  # not the default by chance
        assert getattr(p, name) == (want.upper() if name == "strategy" else want), key
    assert p.rollout_shards == 1  # the hf engine: one shard per worker
    vllm = _placement("rollout.engine=vllm", "rollout.vllm.tensor_parallel_size=2", "rollout.gpus_per_worker=2")
    assert vllm.rollout_shards == 2


@slow
@distributed
def test_slurm_wait_step_counts_the_nodes_of_the_cluster(sim_cluster):
    """``python -m entropo.launch.slurm wait N T``, the Slurm script's wait, against 3 nodes."""
    import subprocess
    import sys

    env = {**os.environ, "RAY_ADDRESS": sim_cluster.address}
    ok = subprocess.run([sys.executable, "-m", "entropo.launch.slurm", "wait", "3", "60"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "3 Ray node(s) alive" in ok.stdout
    short = subprocess.run([sys.executable, "-m", "entropo.launch.slurm", "wait", "4", "3"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert short.returncode == 1
    assert "only 3 of 4 Ray node(s) alive after 3 s" in short.stderr
