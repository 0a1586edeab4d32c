"""Where the actors go: the resources each asks for, its bundle in a Ray placement group, and
whether the cluster can ever hold them. Pure planning, tested without Ray;
:mod:`entropo.trainer.cluster` creates the groups and the actors.

Placement (docs/multinode.md). Every actor gets one bundle of a Ray placement group
(https://docs.ray.io/en/releases-2.49.0/ray-core/scheduling/placement-group.html):

- separate roles (default): one group of ``learner.ranks`` bundles ``{CPU: cpus_per_rank,
  GPU: gpus_per_rank}`` and one of ``rollout.workers`` bundles ``{CPU: cpus_per_worker,
  GPU: gpus_per_worker}``, each with the strategy ``trainer.placement``, so ``SPREAD``
  spreads the learner ranks over nodes whatever the rollout workers do;
- colocated (``trainer.colocate``): one group of ``max(ranks, workers)`` bundles; bundle
  ``i`` holds learner rank ``i`` and rollout worker ``i``, which share its GPU (each asks for
  an equal fraction of it) and add up their CPUs.

Before any group is created, the request is checked against the cluster (totals, the
largest node for every bundle, one node for ``STRICT_PACK``, distinct nodes for
``STRICT_SPREAD``, ``trainer.nodes``); a request that cannot fit fails at once with a
message that names the shortfall and the fields behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from entropo.config import TrainConfig
from entropo.trainer.errors import RunError

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")

# Configuration key -> Placement field.
CONFIG_FIELDS = {
    "trainer.placement": "strategy",
    "trainer.colocate": "colocate",
    "trainer.nodes": "nodes",
    "trainer.placement_timeout_s": "timeout_s",
    "learner.cpus_per_rank": "learner_cpus",
    "learner.gpus_per_rank": "learner_gpus",
    "rollout.cpus_per_worker": "rollout_cpus",
    "rollout.gpus_per_worker": "rollout_gpus",
}


class PlacementError(RunError):
    """The cluster cannot hold the requested actors; the message names the shortfall."""


@dataclass(frozen=True)
class Placement:
    """Resources per actor and how the actors are laid out over nodes.

    Each field mirrors a configuration field (named in its comment) and has no default of its
    own: ``from_config`` reads them, so the config's defaults are the only ones.
    """

    strategy: str  # trainer.placement, upper case
    colocate: bool  # trainer.colocate
    nodes: int  # trainer.nodes
    timeout_s: float  # trainer.placement_timeout_s
    learner_cpus: float  # learner.cpus_per_rank
    learner_gpus: float | None  # learner.gpus_per_rank (None: 1 if the cluster has GPUs)
    rollout_cpus: float  # rollout.cpus_per_worker
    rollout_gpus: float | None  # rollout.gpus_per_worker (None: rollout_shards if the cluster has GPUs)
    rollout_shards: int  # rollout.vllm.tensor_parallel_size with rollout.engine=vllm, else 1

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Placement:
        values = {}
        for key, name in CONFIG_FIELDS.items():
            section, field_name = key.split(".")
            values[name] = getattr(getattr(cfg, section), field_name)
        values["strategy"] = str(values["strategy"]).upper()
        values["rollout_shards"] = cfg.rollout.vllm.tensor_parallel_size if cfg.rollout.engine == "vllm" else 1
        return cls(**values).validated()

    def validated(self) -> Placement:
        if self.strategy not in STRATEGIES:
            raise PlacementError(f"trainer.placement: '{self.strategy}' is not one of {', '.join(STRATEGIES)}")
        if self.nodes < 1:
            raise PlacementError(f"trainer.nodes: must be >= 1, got {self.nodes}")
        if self.timeout_s <= 0:
            raise PlacementError(f"trainer.placement_timeout_s: must be > 0, got {self.timeout_s}")
        # a bundle must ask for something: Ray rejects empty bundles
        for key, v in (("learner.cpus_per_rank", self.learner_cpus), ("rollout.cpus_per_worker", self.rollout_cpus)):
            if not v > 0:
                raise PlacementError(f"{key}: must be > 0, got {v}")
        for key, v in (("learner.gpus_per_rank", self.learner_gpus), ("rollout.gpus_per_worker", self.rollout_gpus)):
            if v is not None and v < 0:
                raise PlacementError(f"{key}: must be >= 0, got {v}")
        return self

    def resolved(self, cluster_has_gpus: bool) -> Placement:
        """GPUs per actor filled in: ``None`` means one GPU each (a rollout worker: one per shard)
        when the cluster has GPUs, else none."""
        auto = 1.0 if cluster_has_gpus else 0.0
        out = replace(
            self,
            learner_gpus=auto if self.learner_gpus is None else float(self.learner_gpus),
            rollout_gpus=auto * self.rollout_shards if self.rollout_gpus is None else float(self.rollout_gpus),
        )
        if self.rollout_shards > 1 and out.rollout_gpus < self.rollout_shards:
            raise PlacementError(
                f"rollout.vllm.tensor_parallel_size={self.rollout_shards} needs one GPU per shard, but each rollout "
                f"worker gets {format_amount(out.rollout_gpus)} (rollout.gpus_per_worker"
                f"{'' if cluster_has_gpus else '; this cluster has no GPUs'}); on CPU raise rollout.workers instead"
            )
        return out


@dataclass(frozen=True)
class Slot:
    """One actor's place: placement group ``group``, bundle ``bundle``, and its own request."""

    group: int
    bundle: int
    cpus: float
    gpus: float


@dataclass(frozen=True)
class Plan:
    """Bundles per placement group, each actor's slot, and why each resource is needed."""

    groups: tuple[tuple[dict[str, float], ...], ...]
    names: tuple[str, ...]
    strategy: str
    learners: tuple[Slot, ...]
    workers: tuple[Slot, ...]
    why: dict[str, str]  # resource -> the fields that ask for it, for messages

    def total(self, resource: str) -> float:
        return sum(b.get(resource, 0.0) for g in self.groups for b in g)


def plan_placement(ranks: int, workers: int, p: Placement) -> Plan:
    """One bundle per actor (colocated: per learner/worker pair). ``p`` must be resolved."""
    assert p.learner_gpus is not None and p.rollout_gpus is not None, "resolve the placement first"
    lc, lg, rc, rg = p.learner_cpus, p.learner_gpus, p.rollout_cpus, p.rollout_gpus
    if ranks == 0:  # rollout workers only (entropo eval): one group of their bundles
        rollout = tuple(Slot(0, i, rc, rg) for i in range(workers))
        why = {"CPU": f"rollout.workers={workers} × rollout.cpus_per_worker={format_amount(rc)}",
               "GPU": f"rollout.workers={workers} × rollout.gpus_per_worker={format_amount(rg)}"}
        return Plan((tuple(_bundle(rc, rg) for _ in range(workers)),), ("rollout",), p.strategy, (), rollout, why)
    if not p.colocate:
        groups = (tuple(_bundle(lc, lg) for _ in range(ranks)), tuple(_bundle(rc, rg) for _ in range(workers)))
        learners = tuple(Slot(0, i, lc, lg) for i in range(ranks))
        rollout = tuple(Slot(1, i, rc, rg) for i in range(workers))
        why = {
            res: f"learner.ranks={ranks} × learner.{per_l}={format_amount(vl)} + rollout.workers={workers} × rollout.{per_r}={format_amount(vr)}"
            for res, per_l, vl, per_r, vr in (("CPU", "cpus_per_rank", lc, "cpus_per_worker", rc),
                                              ("GPU", "gpus_per_rank", lg, "gpus_per_worker", rg))
        }
        return Plan(groups, ("learner", "rollout"), p.strategy, learners, rollout, why)
    n = max(ranks, workers)
    bundles, learners_l, rollout_l = [], [], []
    for i in range(n):
        has_l, has_r = i < ranks, i < workers
        gpu = max(lg if has_l else 0.0, rg if has_r else 0.0)
        sharers = int(has_l and lg > 0) + int(has_r and rg > 0)
        bundles.append(_bundle(lc * has_l + rc * has_r, gpu))
        if has_l:
            learners_l.append(Slot(0, i, lc, gpu / sharers if lg > 0 else 0.0))
        if has_r:
            rollout_l.append(Slot(0, i, rc, gpu / sharers if rg > 0 else 0.0))
    why = {
        "CPU": (f"max(learner.ranks={ranks}, rollout.workers={workers}) colocated bundles of learner.cpus_per_rank="
                f"{format_amount(lc)} + rollout.cpus_per_worker={format_amount(rc)}"),
        "GPU": (f"max(learner.ranks={ranks}, rollout.workers={workers}) colocated bundles sharing "
                f"max(learner.gpus_per_rank={format_amount(lg)}, rollout.gpus_per_worker={format_amount(rg)}) GPU"),
    }
    return Plan((tuple(bundles),), ("colocated",), p.strategy, tuple(learners_l), tuple(rollout_l), why)


def check_capacity(plan: Plan, total: dict[str, float], available: dict[str, float],
                   nodes: Sequence[dict[str, float]], min_nodes: int) -> list[str]:
    """Raise :class:`PlacementError` when ``plan`` can never fit; return notes otherwise.

    Args:
        plan: the bundles to place.
        total: ``ray.cluster_resources()``.
        available: ``ray.available_resources()``; a shortfall here only delays the start
            (the placement groups wait for other work to release resources).
        nodes: each alive node's total resources.
        min_nodes: ``trainer.nodes``.
    """
    if len(nodes) < min_nodes:
        raise PlacementError(f"trainer.nodes={min_nodes}, but the Ray cluster has {len(nodes)} alive node(s)")
    notes, short = [], []
    for res in ("CPU", "GPU"):
        need = plan.total(res)
        if need > total.get(res, 0.0) + 1e-9:
            short.append(f"needs {format_amount(need)} {res}s for {plan.why[res]}, cluster has {format_amount(total.get(res, 0.0))}")
        elif need > available.get(res, 0.0) + 1e-9:
            notes.append(f"needs {format_amount(need)} {res}s, {format_amount(available.get(res, 0.0))} available now: "
                         "waiting for other work to release them")
    if short:
        raise PlacementError("; ".join(short))
    for name, group in zip(plan.names, plan.groups):
        for b in group:
            if not any(_fits(b, n) for n in nodes):
                raise PlacementError(
                    f"a {name} bundle needs {format_resources(b)} on one node ({_role_fields(name)}); "
                    f"the largest node has {format_resources(_largest(nodes, b), b)}"
                )
        if plan.strategy == "STRICT_PACK":
            whole = {res: sum(b.get(res, 0.0) for b in group) for res in ("CPU", "GPU")}
            if not any(_fits(whole, n) for n in nodes):
                raise PlacementError(
                    f"trainer.placement=STRICT_PACK needs {format_resources(whole)} on one node for the {len(group)} "
                    f"{name} bundles; the largest node has {format_resources(_largest(nodes, whole), whole)}"
                )
        if plan.strategy == "STRICT_SPREAD":
            placed = _distinct_nodes(group, nodes)
            if placed < len(group):
                raise PlacementError(
                    f"trainer.placement=STRICT_SPREAD needs {len(group)} distinct nodes for the {name} "
                    f"bundles ({format_resources(group[0])} each), but only {placed} node(s) can hold one"
                )
    return notes


def _role_fields(name: str) -> str:
    return {"learner": "learner.cpus_per_rank, learner.gpus_per_rank",
            "rollout": "rollout.cpus_per_worker, rollout.gpus_per_worker"}.get(
        name, "learner.*_per_rank + rollout.*_per_worker, trainer.colocate=true")


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus > 0 else {})}


def _fits(bundle: dict[str, float], node: dict[str, float]) -> bool:
    return all(v <= node.get(k, 0.0) + 1e-9 for k, v in bundle.items() if v > 0)


def _largest(nodes: Sequence[dict[str, float]], bundle: dict[str, float]) -> dict[str, float]:
    """The node closest to holding ``bundle`` (most of its scarcest resource), for messages."""
    keys = [k for k, v in bundle.items() if v > 0]
    best = max(nodes, key=lambda n: tuple(n.get(k, 0.0) for k in sorted(keys, reverse=True)), default={})
    return {k: best.get(k, 0.0) for k in ("CPU", "GPU")}


def _distinct_nodes(bundles: Sequence[dict[str, float]], nodes: Sequence[dict[str, float]]) -> int:
    """Most bundles placeable one per node (bipartite matching by augmenting paths)."""
    owner: dict[int, int] = {}

    def assign(b: int, seen: set[int]) -> bool:
        for j, node in enumerate(nodes):
            if j in seen or not _fits(bundles[b], node):
                continue
            seen.add(j)
            if j not in owner or assign(owner[j], seen):
                owner[j] = b
                return True
        return False

    return sum(assign(b, set()) for b in range(len(bundles)))


def format_resources(resources: dict[str, float], like: dict[str, float] | None = None) -> str:
    """``"4 CPU, 1 GPU"``: CPU always, GPU when ``like`` (default: ``resources``) has some."""
    like = resources if like is None else like
    return ", ".join(f"{format_amount(resources.get(k, 0.0))} {k}" for k in ("CPU", "GPU")
                     if k == "CPU" or like.get(k, 0.0) > 0)


def format_amount(x: float | None) -> str:
    """A resource amount for messages: ``4``, ``2.5``; None (GPUs not yet resolved): ``auto``."""
    if x is None:
        return "auto"
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
