"""Run a function on several shards at once, as if each shard were one data-parallel rank.

Each shard runs in its own thread with a :class:`ThreadReducer` that meets the other threads
at a barrier, so a function written against :class:`entropo.algorithms.reduce.Reducer`
behaves exactly as it would across processes. The real multi-process check (gloo) lives in
``tests/trainer/test_dist_reduce.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch


class _Meeting:
    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots: list[Any] = [None] * world


class ThreadReducer:
    """A :class:`Reducer` for rank ``rank`` of ``world`` threads sharing one meeting point."""

    def __init__(self, meeting: _Meeting, rank: int) -> None:
        self.meeting = meeting
        self.rank = rank

    def _exchange(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.meeting
        m.barrier.wait()
        m.slots[self.rank] = x.detach().clone()
        m.barrier.wait()
        values = list(m.slots)
        m.barrier.wait()
        return values

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        values = self._exchange(x)
        # Sum in rank order so the floating-point result is identical on every rank.
        total = values[0].clone()
        for v in values[1:]:
            total = total + v
        return total

    def gather(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        values = self._exchange(x)
        offset = sum(v.numel() for v in values[: self.rank])
        return torch.cat(values), offset


def run_split(fn: Callable[[Any, ThreadReducer], Any], shards: Sequence[Any]) -> list[Any]:
    """Call ``fn(shard, reducer)`` for every shard concurrently; return results in shard order."""
    meeting = _Meeting(len(shards))
    results: list[Any] = [None] * len(shards)
    errors: list[BaseException] = []

    def work(rank: int) -> None:
        try:
            results[rank] = fn(shards[rank], ThreadReducer(meeting, rank))
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
            meeting.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
