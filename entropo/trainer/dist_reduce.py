"""The data-parallel :class:`~entropo.algorithms.reduce.Reducer`, backed by torch.distributed.

The learner builds one per process group and passes it to the pure functions of
``entropo.algorithms``; with it, a global-scope statistic over a batch split across ranks
equals the statistic one process computes on the whole batch (tested with two gloo
processes in ``tests/trainer/test_dist_reduce.py``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class DistReducer:
    """Sums and gathers over the ranks of ``group`` (the default group if None)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        out = x.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def gather(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        x = x.detach().reshape(-1)
        size = torch.tensor([x.numel()], dtype=torch.int64, device=x.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size, group=self.group)
        counts = [int(s) for s in sizes]
        # all_gather needs equal shapes: pad every shard to the longest, then trim.
        longest = max(counts)
        padded = torch.zeros(longest, dtype=x.dtype, device=x.device)
        padded[: x.numel()] = x
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        flat = torch.cat([p[:c] for p, c in zip(parts, counts)])
        return flat, sum(counts[: self.rank])
