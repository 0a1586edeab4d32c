"""Learner → rollout weight broadcast over a torch.distributed group of its own.

The group joins learner rank 0 (rank 0 of the group) and every rollout worker (ranks 1..W).
It is built directly from a ``TCPStore`` and a backend process group, so it lives beside
the learner's own default group (DeepSpeed's) without touching it (see shared/NOTES.md).
gloo on CPU; nccl on GPU.

The plan is the sender's: learner rank 0's parameter names, shapes and dtypes
(:class:`ParamSpec`), handed to every worker once when the group is built, so no metadata
crosses the wire afterwards. A worker checks the names and shapes against its own model
(:func:`check_receiver`) and receives each bucket in the sender's dtype, casting into its own
parameters: a bf16 learner feeds an fp32 rollout model, and the reverse. Parameters are
packed in order into flat buckets of at most ``bucket_bytes``, and each bucket is one
broadcast. Under ZeRO-3 every learner rank joins the gather of each bucket's parameters (a
collective of the learner group); only rank 0 broadcasts.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from entropo.config import ROLLOUT_CALL_BASE_S

DEFAULT_BUCKET_BYTES = 64 << 20


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class SyncPlan:
    """Ordered buckets of parameters; each bucket has one dtype."""

    buckets: tuple[tuple[ParamSpec, ...], ...]

    @staticmethod
    def build(specs: list[ParamSpec], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> SyncPlan:
        buckets: list[tuple[ParamSpec, ...]] = []
        current: list[ParamSpec] = []
        size = 0
        for spec in specs:
            nbytes = spec.numel * torch.empty((), dtype=spec.dtype).element_size()
            if current and (size + nbytes > bucket_bytes or spec.dtype != current[0].dtype):
                buckets.append(tuple(current))
                current, size = [], 0
            current.append(spec)
            size += nbytes
        if current:
            buckets.append(tuple(current))
        return SyncPlan(tuple(buckets))


def param_specs(named: Iterator[tuple[str, torch.Tensor]], shape_of: Callable[[torch.Tensor], tuple[int, ...]] | None = None) -> list[ParamSpec]:
    """Specs of ``named_parameters()``; ``shape_of`` gives the full shape of a ZeRO-3 shard."""
    out = []
    for name, p in named:
        shape = tuple(shape_of(p)) if shape_of else tuple(p.shape)
        out.append(ParamSpec(name, shape, p.dtype))
    return out


def check_receiver(sender: list[ParamSpec], receiver: list[ParamSpec]) -> None:
    """Raise ``ValueError`` naming the first parameter where the receiving model differs from
    the sender's plan in name, order or shape (dtypes may differ: values are cast on receipt)."""
    if len(sender) != len(receiver):
        names = {s.name for s in sender} ^ {r.name for r in receiver}
        raise ValueError(f"weight sync: the learner sends {len(sender)} parameters, the rollout model has "
                         f"{len(receiver)}; in one only: {sorted(names)[:5]}")
    for i, (s, r) in enumerate(zip(sender, receiver)):
        if s.name != r.name or s.shape != r.shape:
            raise ValueError(f"weight sync: parameter {i} is '{s.name}' {list(s.shape)} on the learner but "
                             f"'{r.name}' {list(r.shape)} in the rollout model")


def full_shape(p: torch.Tensor) -> tuple[int, ...]:
    """The full shape of a parameter, also when ZeRO-3 has partitioned it (``ds_shape``)."""
    return tuple(getattr(p, "ds_shape", p.shape))


def tcp_store(host: str, port: int, world: int, is_master: bool, timeout: timedelta,
              wait_for_workers: bool = True) -> dist.TCPStore:
    """A ``TCPStore`` whose server (``is_master``) listens on ``host:port`` only.

    torch's own server listens on every interface (``::``, measured with torch 2.13) whatever
    ``host`` is, and a store has no authentication: whoever reaches it can join or disturb the
    group. ``host`` is the address the members connect to: the node's IP (127.0.0.1 on a local
    Ray instance, so the store is unreachable from other machines).
    """
    if not is_master:
        return dist.TCPStore(host, port, world, False, timeout)
    server = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    return dist.TCPStore(host, port, world, True, timeout, wait_for_workers=wait_for_workers,
                         master_listen_fd=server.detach())


def init_sync_group(host: str, port: int, rank: int, world: int, backend: str = "gloo",
                    timeout_s: float = ROLLOUT_CALL_BASE_S) -> dist.ProcessGroup:
    """Join the weight-sync group (rank 0 hosts the store, listening on ``host`` only)."""
    store = tcp_store(host, port, world, rank == 0, timedelta(seconds=timeout_s))
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world, timedelta(seconds=timeout_s))
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        return dist.ProcessGroupNCCL(store, rank, world, opts)
    raise ValueError(f"unknown weight-sync backend '{backend}'")


def send_weights(group: dist.ProcessGroup | None, params: dict[str, torch.nn.Parameter], plan: SyncPlan,
                 gather: Callable[[list[torch.nn.Parameter]], contextlib.AbstractContextManager] | None = None,
                 device: torch.device | None = None) -> int:
    """Broadcast every bucket from this rank (group rank 0). Returns bytes sent.

    ``group`` is None on learner ranks other than 0: they only join the ZeRO-3 gathers.
    """
    sent = 0
    for bucket in plan.buckets:
        tensors = [params[s.name] for s in bucket]
        ctx = gather(tensors) if gather else contextlib.nullcontext()
        with ctx:
            if group is None:
                continue
            flat = torch.cat([t.detach().reshape(-1) for t in tensors])
            if device is not None:
                flat = flat.to(device)
            _broadcast(group, flat)
            sent += flat.numel() * flat.element_size()
    return sent


def receive_buckets(group: dist.ProcessGroup, plan: SyncPlan,
                    device: torch.device | None = None) -> Iterator[tuple[ParamSpec, torch.Tensor]]:
    """Receive every bucket from group rank 0, yielding each parameter as a view of its bucket,
    in the sender's dtype (``plan`` is the sender's). A bucket is received when the first of its
    parameters is asked for, so a consumer that loads as it goes (vLLM's ``load_weights``) holds
    one bucket at a time. The consumer must take every parameter: each bucket is a collective."""
    for bucket in plan.buckets:
        flat = torch.empty(sum(s.numel for s in bucket), dtype=bucket[0].dtype, device=device)
        _broadcast(group, flat)
        offset = 0
        for spec in bucket:
            yield spec, flat[offset : offset + spec.numel].view(spec.shape)
            offset += spec.numel


def receive_weights(group: dist.ProcessGroup, params: dict[str, torch.nn.Parameter], plan: SyncPlan,
                    device: torch.device | None = None) -> int:
    """Receive every bucket from group rank 0 and copy it into ``params`` in place (``copy_``
    casts into each parameter's own dtype). Returns bytes received."""
    received = 0
    with torch.no_grad():
        for spec, value in receive_buckets(group, plan, device):
            params[spec.name].copy_(value)
            received += value.numel() * value.element_size()
    return received


def _broadcast(group: dist.ProcessGroup, tensor: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()
