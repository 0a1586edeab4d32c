"""The Ray side of a run: the actors themselves (learner ranks and rollout workers), placed
as :mod:`entropo.trainer.placement` plans, and the calls that fan work out to them and
gather results. The controller talks to this class only.

Placement groups that are not ready within ``trainer.placement_timeout_s`` (resources held
by other work, an autoscaler that does not deliver) fail with a :class:`PlacementError`
that names what is missing.

Fault tolerance. A rollout worker that dies (``RayActorError``) during a rollout or a
weight sync is recreated in its bundle; the weight-sync group, a torch.distributed group
with a fixed world size built from a ``TCPStore`` (:mod:`entropo.trainer.weight_sync`), is
then rebuilt on all members with a fresh store on a fresh port, the learner's current
weights are broadcast, and the failed call is retried (a rollout is retried with the same
seeds, so it reproduces what the lost worker would have generated). Restarts are counted
in ``rollout/worker_restarts`` and limited by ``rollout.max_restarts``.

A rollout worker that does not answer a call (a generation batch, a weight sync) within
``rollout.call_timeout_s`` counts as hung: it is killed (``ray.kill``) and recovered the same
way, and the call retried once; a worker that hangs again on the retry raises
:class:`WorkerHungError` naming it and the field.

A learner rank that dies is fatal: DeepSpeed's process group cannot lose a member. Its
peers may be blocked in a collective with it and never answer, so learner calls are read as
they finish, and the first error of one is followed by a liveness probe of every rank: a dead
one raises :class:`LearnerLostError` naming it, at once.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from entropo.config import TrainConfig
from entropo.trainer.batch import OLD_PASS_FIELDS, SEQUENCE_FIELDS, LearnerShard, StepBatch
from entropo.trainer.engine import RolloutOutput, SamplingParams
from entropo.trainer.errors import LearnerLostError, RunError, first_line
from entropo.trainer.learner import LearnerRank
from entropo.trainer.placement import (
    Placement,
    PlacementError,
    Plan,
    Slot,
    check_capacity,
    format_amount,
    format_resources,
    plan_placement,
)
from entropo.trainer.rollout import RolloutWorker
from entropo.trainer.weight_sync import DEFAULT_BUCKET_BYTES, check_receiver

# After a failed call, how long the calls still in flight may take to finish before the
# workers are pinged. Equal to the weight-sync group's gloo timeout (weight_sync.init_sync_group):
# a surviving worker blocked in a broadcast with a dead peer returns by then at the latest.
SETTLE_TIMEOUT_S = 600.0
# A live worker answers a ping at once once its calls have settled; one that does not
# within this time is treated as lost (killed and recreated).
PING_TIMEOUT_S = 60.0
# After a learner call fails, how long its ranks' pings may take to tell a dead rank from a live
# one. Ray fails calls to an actor whose process exited as soon as the raylet sees the exit
# (well under a second here); a live rank blocked in a collective with a failed peer never
# answers, and is waited for this long. A node lost as a whole takes Ray's health checks
# longer than this, and the failed call's own error is reported instead.
LEARNER_PROBE_S = 10.0


class WorkerLostError(RuntimeError):
    """Rollout workers died more often than ``rollout.max_restarts`` allows."""


class WorkerHungError(RuntimeError):
    """A rollout worker did not answer a call within ``rollout.call_timeout_s``, twice."""


class _Hung(Exception):
    """Rollout workers that did not answer within the call's time limit (handled in the cluster)."""

    def __init__(self, workers: list[int]) -> None:
        super().__init__(f"rollout worker(s) {workers} did not answer")
        self.workers = workers


Call = tuple[str, int, "ray.ObjectRef"]
"""A call in flight: who runs it (``learner`` or ``worker``), its index, its future."""


# ---------------------------------------------------------------------------------------
# Ray: connect, create placement groups


def connect(cfg: TrainConfig) -> None:
    """Attach to ``trainer.ray_address`` (else ``RAY_ADDRESS``) when set; otherwise start a
    local Ray sized for the actors (:func:`start_local`). A no-op when Ray is already initialised."""
    if ray.is_initialized():
        return
    address = cfg.trainer.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    p = Placement.from_config(cfg)
    need = cfg.learner.ranks * p.learner_cpus + cfg.rollout.workers * p.rollout_cpus  # colocated or not
    if cfg.reward.mode == "ray":
        need += (cfg.reward.workers + cfg.reward.standby_workers) * cfg.reward.worker_cpus
    start_local(max(math.ceil(need) + 1, os.cpu_count() or 1), log_to_driver=True,
                localhost_only=cfg.trainer.ray_localhost_only)


LOOPBACK = "127.0.0.1"


def start_local(num_cpus: int, log_to_driver: bool, localhost_only: bool = True) -> None:
    """Start a new local Ray instance (``address="local"``: never the last cluster recorded in
    /tmp/ray, which ``ray.init()`` with no address would attach to), without the dashboard,
    with Ray's token authentication (on by default in Ray 2.60; this never turns it off).

    ``localhost_only``: the node's IP is 127.0.0.1, and every port of the instance listens
    on 127.0.0.1 only: the GCS, the raylet, the dashboard and runtime-env agents, the gRPC
    server of the driver and of every worker (tests/trainer/test_ray_security.py measures it).
    How, in Ray 2.60 (measured): its servers listen on 127.0.0.1 when the node IP is exactly
    127.0.0.1, else on all interfaces (0.0.0.0 / ::), whatever the IP; ``ray.init`` turns a
    ``_node_ip_address`` of 127.0.0.1 into the machine's outward IP
    (``services.resolve_ip_for_localhost``), and picks 127.0.0.1 itself only where
    ``ray_constants.ENABLE_RAY_CLUSTER`` is false (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
    read once, when ``ray`` is imported). That flag is therefore false while ``ray.init`` runs
    here, and only then: attaching to a cluster later in the same process needs the real IP.
    Raises :class:`RunError` if the node IP is not 127.0.0.1 all the same (another Ray version).
    """
    import ray._private.ray_constants as ray_constants

    auth_log = logging.getLogger(RAY_AUTH_LOGGER)
    auth_log.addFilter(_drop_token_auth_notice)
    cluster_ip = ray_constants.ENABLE_RAY_CLUSTER
    if localhost_only:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
                 configure_logging=False)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_ip
        auth_log.removeFilter(_drop_token_auth_notice)
    ip = ray.util.get_node_ip_address()
    if localhost_only and ip != LOOPBACK:
        ray.shutdown()
        raise RunError(f"the local Ray instance took node IP {ip}, not {LOOPBACK}, so its ports would listen on "
                       f"all interfaces (ray {ray.__version__}); set trainer.ray_localhost_only=false to accept that")


RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_TOKEN_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"


def _drop_token_auth_notice(record: logging.LogRecord) -> bool:
    """Filter of :data:`RAY_AUTH_LOGGER` while :func:`start_local` starts a local Ray: drops Ray's
    notice "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to
    opt out" (ray 2.60, ``authentication_token_setup._warn_token_auth_enabled``), logged at every
    start of a local cluster when ``RAY_AUTH_MODE`` is unset, and keeps every other record.

    Why a filter and not the cause: the notice only says Ray enabled its secure default, and
    the one way to avoid it, setting ``RAY_AUTH_MODE=token`` ourselves, does not work once
    ``ray`` is imported (Ray reads the mode into its config at import and refreshes it only in
    a private call; ray.init then fails with InvalidAuthToken). ``RAY_AUTH_MODE=disabled``
    would turn the protection off. A user who sets ``RAY_AUTH_MODE`` never sees the notice, and
    Ray's warning that authentication is *disabled* is kept.
    """
    return not record.getMessage().startswith(RAY_TOKEN_AUTH_NOTICE)


def alive_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def create_placement_groups(plan: Plan, timeout_s: float) -> list:
    """One placement group per entry of ``plan.groups``, ready, or a :class:`PlacementError`."""
    from ray.util import placement_group, remove_placement_group

    # every group has >= 1 bundle (learner.ranks, rollout.workers >= 1): Slot.group indexes this list
    groups = [placement_group(list(bundles), strategy=plan.strategy) for bundles in plan.groups]
    try:
        ray.get([g.ready() for g in groups], timeout=timeout_s)
    except GetTimeoutError:
        for g in groups:
            remove_placement_group(g)
        avail, total = ray.available_resources(), ray.cluster_resources()
        have = ", ".join(f"{format_amount(avail.get(r, 0.0))}/{format_amount(total.get(r, 0.0))} {r}" for r in ("CPU", "GPU"))
        raise PlacementError(
            f"placement groups ({', '.join(f'{n}: {len(b)} × {format_resources(b[0])}' for n, b in zip(plan.names, plan.groups) if b)}, "
            f"trainer.placement={plan.strategy}) not ready after trainer.placement_timeout_s={format_amount(timeout_s)} s; "
            f"needs {format_amount(plan.total('CPU'))} CPUs and {format_amount(plan.total('GPU'))} GPUs, available/total now: {have}"
        ) from None
    return groups


def actor_threads(cfg: TrainConfig, cpus: float, single_node: bool) -> int:
    """Torch threads of one actor. On a one-node cluster (a laptop, CI) the machine's cores are
    shared among all actors, whatever fraction of a CPU each reserved; on many nodes an actor
    uses the CPUs it reserved."""
    if single_node:
        return max(1, (os.cpu_count() or 1) // (cfg.learner.ranks + cfg.rollout.workers))
    return max(1, int(cpus))


def actor_max_threads(cfg: TrainConfig, kind: str, slot: Slot, single_node: bool) -> int | None:
    """Ceiling of a CPU actor's elastic threads (:mod:`entropo.trainer.elastic_threads`): the
    node's cores over the actors of its ``kind`` (``learner`` or ``rollout``), so that ranks of
    one kind never oversubscribe the node together. None: fixed threads (the option is off,
    several nodes, where actors use the CPUs they reserved, or a GPU actor)."""
    if not cfg.trainer.elastic_threads or not single_node or slot.gpus > 0:
        return None
    peers = cfg.learner.ranks if kind == "learner" else cfg.rollout.workers
    return max(1, (os.cpu_count() or 1) // peers)


CPU_MALLOC_KEEP_BYTES = 1 << 30
"""glibc's mmap and trim thresholds in CPU actors: allocations below 1 GiB come from the heap and
up to 1 GiB of freed heap stays mapped. With glibc's defaults, every step's KV cache, logits and
activations of tens of MB are fresh mmaps, zeroed page by page by the kernel and unmapped on
free: ~12% of the rollout's decode time on the embedded task (measured). The cost: freed memory is not
handed back to the OS (an actor keeps its peak)."""


PROGRESS_BAR_ENV = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")
"""Switches that turn progress bars off in the actors: huggingface_hub's (transformers follows
it), datasets', and tqdm's own (``TQDM_DISABLE``, read by every ``tqdm`` since tqdm 4.66)."""


LOOPBACK_INTERFACE = "lo"
"""Linux's loopback interface, for ``GLOO_SOCKET_IFNAME``."""


def actor_env(cfg: TrainConfig, slot: Slot, single_node: bool, loopback: bool = False) -> dict[str, str]:
    """Environment variables of an actor's process (``runtime_env``); a ``MALLOC_*`` variable
    set in the driver's environment wins over :data:`CPU_MALLOC_KEEP_BYTES`, and so does one of
    :data:`PROGRESS_BAR_ENV` over its default 1 (bars off), and ``GLOO_SOCKET_IFNAME``.

    ``loopback``: the Ray node's IP is 127.0.0.1 (:func:`start_local`), so every actor is on
    this machine; gloo's sockets (the learner group's and the weight sync's) then listen on
    :data:`LOOPBACK_INTERFACE`, where gloo would otherwise take the address the host name
    resolves to, often one reachable from the network."""
    env = {
        "DS_ACCELERATOR": "cuda" if slot.gpus > 0 else "cpu",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(actor_threads(cfg, slot.cpus, single_node)),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
    }
    # Third-party progress bars (transformers' "Loading weights" and "Writing model shards",
    # hub downloads, datasets, vLLM) would reach the driver's console from every actor, one
    # per load or save. The run's own progress is the driver's console line, never an actor's
    # bar. A value set in the driver's environment wins.
    for key in PROGRESS_BAR_ENV:
        env[key] = os.environ.get(key, "1")
    if slot.gpus == 0:
        for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
            env[key] = os.environ.get(key, str(CPU_MALLOC_KEEP_BYTES))
    if loopback:
        env["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", LOOPBACK_INTERFACE)
    return env


# ---------------------------------------------------------------------------------------
# the actors


class Cluster:
    """Learner ranks and rollout workers as Ray actors, placed by :class:`Placement`.

    Args:
        cfg: the run's configuration.
        learners: start the learner ranks; without them (``entropo eval``) the rollout workers
            generate with the weights of ``model.path`` and nothing syncs or updates.
    """

    def __init__(self, cfg: TrainConfig, learners: bool = True) -> None:
        self.cfg = cfg
        connect(cfg)
        total = ray.cluster_resources()
        self.placement = Placement.from_config(cfg).resolved(cluster_has_gpus=total.get("GPU", 0.0) > 0)
        self.max_restarts = cfg.rollout.max_restarts
        self.call_timeout_s = cfg.rollout_call_timeout_s
        self.restarts = 0  # rollout workers recreated over this run
        self._version = 0  # weight version the workers hold (the last sync)
        self.sync_bytes = 0  # bytes broadcast by learner rank 0 in the last sync
        self.learners: list = []
        self.workers: list = []
        self.groups: list = []
        nodes = alive_nodes()
        self.plan = plan_placement(cfg.learner.ranks if learners else 0, cfg.rollout.workers, self.placement)
        for note in check_capacity(self.plan, total, ray.available_resources(), nodes, self.placement.nodes):
            print(f"[cluster] {note}", flush=True)
        self._single_node = len(nodes) == 1
        self._loopback = ray.util.get_node_ip_address() == LOOPBACK
        self.groups = create_placement_groups(self.plan, self.placement.timeout_s)
        try:
            self._start_actors()
        except BaseException:
            self.shutdown()
            raise

    def _start_actors(self) -> None:
        cfg = self.cfg
        world = len(self.plan.learners)
        if not world:
            self.workers = [self._new_worker(i) for i in range(cfg.rollout.workers)]
            self._wait_ready(self.workers)
            return
        self.learners = [
            self._actor(LearnerRank, slot, cfg, r, world, actor_threads(cfg, slot.cpus, self._single_node),
                        actor_max_threads(cfg, "learner", slot, self._single_node))
            for r, slot in enumerate(self.plan.learners)
        ]
        # the rollout workers load their engines while the learners set up DeepSpeed
        self.workers = [self._new_worker(i) for i in range(cfg.rollout.workers)]
        host, port = ray.get(self.learners[0].address.remote())
        self._on_learners(lambda _, a: a.setup.remote(host, port), "set-up")
        self._wait_ready(self.workers)
        self._build_sync_group()

    def _actor(self, cls: type, slot: Slot, *args):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        env = actor_env(self.cfg, slot, self._single_node, self._loopback)
        strategy = PlacementGroupSchedulingStrategy(self.groups[slot.group], placement_group_bundle_index=slot.bundle)
        return ray.remote(cls).options(num_cpus=slot.cpus, num_gpus=slot.gpus, runtime_env={"env_vars": env},
                                       scheduling_strategy=strategy).remote(*args)

    def _new_worker(self, i: int):
        cfg, slot = self.cfg, self.plan.workers[i]
        device = "cuda" if slot.gpus > 0 else "cpu"
        vllm = vllm_engine = None
        if cfg.rollout.engine == "vllm":
            from entropo.trainer.vllm_engine import EngineSettings

            vllm = cfg.vllm_engine()
            # a learner rank in the same bundle shares the GPU: the engine sleeps while it trains
            shared = self.placement.colocate and slot.gpus > 0 and i < len(self.plan.learners)
            vllm_engine = EngineSettings(device=device, sleep_between_steps=shared, detokenize=bool(cfg.rollout.stop),
                                         max_len=cfg.max_sequence_tokens)
        return self._actor(RolloutWorker, slot, cfg.model.path, cfg.rollout.engine, cfg.model.dtype, device,
                           actor_threads(cfg, slot.cpus, self._single_node),
                           actor_max_threads(cfg, "rollout", slot, self._single_node), vllm, vllm_engine)

    def _wait_ready(self, workers: list, timeout_s: float | None = None) -> None:
        """Wait for rollout workers to start; an engine that cannot load is one line (RunError)."""
        from entropo.trainer.vllm_engine import EngineLoadError

        try:
            ray.get([w.ready.remote() for w in workers], timeout=timeout_s)
        except RayTaskError as e:
            if isinstance(e.cause, EngineLoadError):
                raise RunError(str(e.cause)) from None
            raise

    def _build_sync_group(self) -> None:
        """(Re)build the weight-sync group on all members, with a fresh store on a fresh port
        of learner rank 0's node (a rebuilt group never meets the old one's store)."""
        host, port = ray.get(self.learners[0].address.remote())
        # members: learner rank 0, then each worker's ranks (a vLLM worker: one per shard)
        ranks = ray.get([w.sync_ranks.remote() for w in self.workers])
        first = [1 + sum(ranks[:i]) for i in range(len(ranks))]
        world = 1 + sum(ranks)
        gpu = self.plan.learners[0].gpus > 0 and all(s.gpus > 0 for s in self.plan.workers)
        backend = "nccl" if gpu else "gloo"
        # The wire carries the learner's dtypes (bf16 on GPU by default), whatever the workers hold.
        sender = ray.get(self.learners[0].sync_specs.remote())
        for own in ray.get([w.sync_specs.remote() for w in self.workers]):
            check_receiver(sender, own)  # before the rendezvous, which would wait for a failed member
        calls = [("learner", r, a.join_sync_group.remote(host, port, world, backend, DEFAULT_BUCKET_BYTES))
                 for r, a in enumerate(self.learners)]
        calls += [("worker", i, w.join_sync_group.remote(host, port, first[i], world, backend, DEFAULT_BUCKET_BYTES,
                                                         sender))
                  for i, w in enumerate(self.workers)]
        self._gather(calls, "weight-sync group set-up")

    # ---- calls, and what a lost or hung actor does to them ---------------------------------
    def _gather(self, calls: list[Call], during: str, timeout_s: float | None = None) -> list:
        """The results of ``calls``, in order, read as each finishes.

        Raises:
            LearnerLostError: a learner rank died (checked after any error of a call, when
                learners take part: a peer's collective may fail before Ray reports the death).
            _Hung: rollout workers still busy ``timeout_s`` after the calls began.
            RayActorError, RayTaskError: the first other failure, as it comes.
        """
        owner = {ref: (kind, i) for kind, i, ref in calls}
        results: dict = {}
        pending = [ref for _, _, ref in calls]
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=wait)
            if not ready:
                hung = sorted(i for kind, i in map(owner.get, pending) if kind == "worker")
                if hung:
                    raise _Hung(hung)
                deadline = None  # learner calls alone: bounded by their collectives' own timeouts
                continue
            try:
                results[ready[0]] = ray.get(ready[0])
            except (RayActorError, RayTaskError):
                if any(kind == "learner" for kind, _, _ in calls):
                    self._raise_if_learner_lost(during)
                raise
        return [results[ref] for _, _, ref in calls]

    def _on_learners(self, call: Callable, during: str) -> list:
        """``call(rank, actor)`` on every learner rank; the results in rank order."""
        return self._gather([("learner", r, call(r, a)) for r, a in enumerate(self.learners)], during)

    def _raise_if_learner_lost(self, during: str) -> None:
        """Raise :class:`LearnerLostError` for the first learner rank whose process is dead
        (its ping fails); a rank that does not answer within :data:`LEARNER_PROBE_S` counts
        as alive."""
        pings = {a.node_id.remote(): r for r, a in enumerate(self.learners)}
        pending = list(pings)
        deadline = time.monotonic() + LEARNER_PROBE_S
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                return
            try:
                ray.get(ready[0])
            except RayActorError as e:
                raise LearnerLostError(pings[ready[0]], during, e) from None

    def _on_workers(self, launch: Callable[[], list[Call]], during: str) -> list:
        """``_gather(launch())`` within ``rollout.call_timeout_s``; a rollout worker lost or hung
        on the way is recreated and the call retried (a hung one once per call)."""
        hung_before: set[int] = set()
        while True:
            calls = launch()
            try:
                return self._gather(calls, during, self.call_timeout_s)
            except _Hung as hung:
                again = sorted(hung_before.intersection(hung.workers))
                if again:
                    raise WorkerHungError(
                        f"rollout worker {again[0]} did not answer the {during} within rollout.call_timeout_s="
                        f"{format_amount(self.call_timeout_s)} s, twice (once more after it was killed and "
                        f"recreated); raise rollout.call_timeout_s if a {during} can take that long") from None
                hung_before.update(hung.workers)
                reason = f"no answer to the {during} within rollout.call_timeout_s={format_amount(self.call_timeout_s)} s"
                self._recover(hung.workers, reason, hung)
            except (RayActorError, RayTaskError) as error:
                ray.wait([ref for _, _, ref in calls], num_returns=len(calls), timeout=SETTLE_TIMEOUT_S)
                lost = self._lost_workers()
                if not lost:
                    raise
                self._recover(lost, first_line(error), error)

    def _lost_workers(self) -> list[int]:
        pings = [w.ready.remote() for w in self.workers]
        done, _ = ray.wait(pings, num_returns=len(pings), timeout=PING_TIMEOUT_S)
        lost = []
        for i, ping in enumerate(pings):
            if ping not in done:
                lost.append(i)  # unresponsive: presumably blocked in a broken collective
                continue
            try:
                ray.get(ping)
            except RayActorError:
                lost.append(i)
        return lost

    def _recover(self, lost: list[int], reason: str, error: BaseException) -> None:
        if self.restarts + len(lost) > self.max_restarts:
            raise WorkerLostError(
                f"rollout worker(s) {lost} lost ({reason}); {self.restarts} restart(s) so far, "
                f"rollout.max_restarts={self.max_restarts}"
            ) from error
        for i in lost:
            print(f"[cluster] WARNING: rollout worker {i} lost ({reason}); recreating it and rebuilding "
                  f"the weight-sync group (restart {self.restarts + 1} of at most {self.max_restarts})", flush=True)
            ray.kill(self.workers[i], no_restart=True)
            self.workers[i] = self._new_worker(i)
            self.restarts += 1
        try:
            self._wait_ready([self.workers[i] for i in lost], self.placement.timeout_s)
        except GetTimeoutError:
            raise PlacementError(
                f"recreated rollout worker(s) {lost} not ready after trainer.placement_timeout_s="
                f"{format_amount(self.placement.timeout_s)} s (its node gone and no room elsewhere?)"
            ) from error
        if not self.learners:
            return  # rollout only: the new worker loaded model.path, as the others did
        self._build_sync_group()
        # a worker lost during this resync is recovered the same way (bounded by max_restarts)
        self._on_workers(lambda: self._push_calls(self._version), "weight sync")

    def metrics(self) -> dict[str, float]:
        """Cluster-level metrics: ``rollout/worker_restarts`` (cumulative over the run) and
        ``sync/bytes`` (what learner rank 0 broadcast in the last weight sync)."""
        return {"rollout/worker_restarts": float(self.restarts), "sync/bytes": float(self.sync_bytes)}

    # ---- rollout ------------------------------------------------------------------------
    def rollout(self, rows: list, params: SamplingParams, tokenizer) -> StepBatch:
        from entropo.data.prompts import encode_prompt

        prompts = [encode_prompt(r, tokenizer) for r in rows]
        w = len(self.workers)
        chunks = [list(range(i, len(prompts), w)) for i in range(w)]

        def launch() -> list:
            # self.workers is read at each attempt: a retry goes to the recreated worker
            return [("worker", k, self.workers[k].generate.remote([prompts[i] for i in idx], _with_seed(params, k)))
                    for k, idx in enumerate(chunks) if idx]

        outs: list[RolloutOutput] = self._on_workers(launch, "generation")
        parts = []
        for out, idx in zip(outs, [c for c in chunks if c]):
            group_ids = torch.tensor(idx).repeat_interleave(params.n)
            parts.append(StepBatch(
                prompt_ids=out.prompt_ids, prompt_mask=out.prompt_mask, response_ids=out.response_ids,
                mask=out.mask, rollout_logp=out.rollout_logp, truncated=out.truncated, group_ids=group_ids,
                response_text=out.response_text, rows=[rows[i] for i in idx for _ in range(params.n)],
                weight_version=out.weight_version,
            ))
        batch = StepBatch.concat(parts)
        # back to prompt order: group g's samples are contiguous, groups in draw order
        return batch.select(torch.argsort(batch.group_ids, stable=True))

    # ---- learner ------------------------------------------------------------------------
    def _split(self, batch: StepBatch) -> list[LearnerShard]:
        r = len(self.learners)
        k = -(-len(batch) // r)
        return [LearnerShard(*(getattr(batch, f)[i * k:(i + 1) * k] for f in SEQUENCE_FIELDS)) for i in range(r)]

    def forward(self, batch: StepBatch, extras: frozenset[str] = frozenset()) -> None:
        """Adds the π_old pass's fields (:data:`OLD_PASS_FIELDS`: ``old_logp``, ``entropy``, and
        ``ref_logp`` and the per-token extras when computed) to the batch."""
        shards = self._split(batch)
        outs = self._on_learners(lambda r, a: a.forward.remote(shards[r], extras), "π_old forward")
        for name in OLD_PASS_FIELDS:
            if getattr(outs[0], name) is not None:
                setattr(batch, name, torch.cat([getattr(o, name) for o in outs]))

    def update(self, minibatches: list[list[LearnerShard]], ctx, fill: StepBatch | None = None) -> dict[str, float]:
        """One update of every learner rank on its shards; ``ctx`` is the step's StepContext.

        ``fill``: the π_old pass is fused into the update (no :meth:`forward` ran); its
        ``old_logp`` and ``entropy`` are set on this batch (the one mini-batch's rows).
        """
        per_rank = [[mb[r] for mb in minibatches] for r in range(len(self.learners))]
        fused = fill is not None
        results = self._on_learners(lambda r, a: a.update.remote(per_rank[r], ctx, fused), "update")
        if fused:
            fill.old_logp = torch.cat([values["old_logp"] for _, values in results])
            fill.entropy = torch.cat([values["entropy"] for _, values in results])
        return results[0][0]

    @property
    def weight_version(self) -> int:
        """The weight version (training step) the rollout workers hold."""
        return self._version

    def sync_weights(self, version: int) -> None:
        sent = self._on_workers(lambda: self._push_calls(version), "weight sync")
        self.sync_bytes = sent[0]  # learner rank 0's send_weights
        self._version = version

    def _push_calls(self, version: int) -> list[Call]:
        return ([("learner", r, a.send_weights.remote()) for r, a in enumerate(self.learners)]
                + [("worker", i, w.receive_weights.remote(version)) for i, w in enumerate(self.workers)])

    def save(self, path: Path) -> None:
        """Every rank's DeepSpeed state into ``path/learner``; the policy into ``path/hf``."""
        self._on_learners(lambda _, a: a.save.remote(str(path / "learner"), "state", {}), "checkpoint save")
        self._on_learners(lambda _, a: a.export_pretrained.remote(str(path / "hf")), "checkpoint save")

    def load(self, path: Path) -> None:
        self._on_learners(lambda _, a: a.load.remote(str(path / "learner"), "state"), "checkpoint load")

    def node_ids(self) -> dict[str, list[str]]:
        return {"learner": self._on_learners(lambda _, a: a.node_id.remote(), "node query"),
                "rollout": self._on_workers(lambda: [("worker", i, w.node_id.remote())
                                                     for i, w in enumerate(self.workers)], "node query")}

    def shutdown(self) -> None:
        from ray.util import remove_placement_group

        for a in self.learners + self.workers:
            ray.kill(a)
        for g in self.groups:
            remove_placement_group(g)
        self.learners, self.workers, self.groups = [], [], []



def _with_seed(params: SamplingParams, worker: int) -> SamplingParams:
    return replace(params, seed=params.seed * 131 + worker)
