"""Elastic torch threads: an actor computes on the cores its neighbours leave idle.

Why: on one node the cores are split among the actors (:func:`entropo.trainer.cluster.actor_threads`):
one learner rank and one rollout worker on 2 cores get 1 torch thread each. But they seldom
both compute for a whole step. In the synchronous loop they take turns, so each phase leaves
a core idle; in the asynchronous loop the next step's generation usually ends before this
step's update, and the update finishes on one core while the other idles.

With ``trainer.elastic_threads`` each actor checks, between units of its own work (learner:
micro-batches; rollout: decode steps), how many of the cores it may run on were idle since
its last check, and takes them, up to a ceiling (the node's cores over the actors of its
kind: a learner rank may grow to ``cores // learner ranks``). At the start of each call it
goes back to its share, because the other actors may be computing again by then. It never
shrinks within a call: in both loops the neighbours' work that overlaps a call starts with
it, not in its middle.

Idle time is read from ``/proc/stat`` (Linux) for the CPUs of the process's affinity mask,
in clock ticks (100 per second): a check over fewer than :data:`MIN_TICKS_PER_CPU` ticks per CPU
keeps accumulating instead of deciding on noise. Elsewhere (no ``/proc/stat``) the thread
count stays fixed.

Numerics: more threads change the order of parallel reductions, so a run with elastic
threads is not bit-reproducible (values agree to float rounding); the option is off by
default for that reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

MIN_TICKS_PER_CPU = 3
"""Shortest check window, in ``/proc/stat`` ticks per CPU (30 ms at 100 Hz)."""

MIN_IDLE_CORES = 0.6
"""Idle cores (averaged over the window) below which no thread is added."""

CpuTimes = tuple[int, int]
"""``(idle ticks, total ticks)`` summed over the watched CPUs."""


def affinity_cpus() -> list[int]:
    """The CPUs this process may run on (all of them where the OS has no affinity mask)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def proc_stat_reader(cpus: Sequence[int] | None = None, path: str = "/proc/stat") -> Callable[[], CpuTimes] | None:
    """A function returning ``(idle, total)`` ticks of ``cpus`` (default: this process's
    affinity mask), or None where ``path`` cannot be read."""
    names = {f"cpu{c}" for c in (affinity_cpus() if cpus is None else cpus)}

    def read() -> CpuTimes:
        idle = total = 0
        with open(path) as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in names:
                    # user nice system idle iowait irq softirq steal (guest time is inside user)
                    ticks = [int(x) for x in fields[1:9]]
                    idle += ticks[3] + ticks[4]
                    total += sum(ticks)
        return idle, total

    try:
        read()
    except (OSError, ValueError, IndexError):
        return None
    return read


class ElasticThreads:
    """Torch's intra-op thread count between ``base`` and ``ceiling``, grown onto idle cores.

    Args:
        base: threads at the start of every call (the actor's share of the node).
        ceiling: most threads; ``ceiling <= base`` keeps ``base`` fixed.
        cpus: how many CPUs ``reader`` watches.
        reader: returns ``(idle, total)`` ticks summed over those CPUs
            (:func:`proc_stat_reader`); None keeps ``base`` fixed.
        set_threads: applies a thread count (``torch.set_num_threads``; tests record it).
    """

    def __init__(self, base: int, ceiling: int, cpus: int, reader: Callable[[], CpuTimes] | None,
                 set_threads: Callable[[int], None] = torch.set_num_threads) -> None:
        self.base = max(1, base)
        self.ceiling = max(self.base, ceiling)
        self.cpus = max(1, cpus)
        self.reader = reader if self.ceiling > self.base else None
        self.set_threads = set_threads
        self.threads = self.base
        self.grown = 0  # calls in which the count rose above base (a diagnostic)
        self._last: CpuTimes | None = None

    @classmethod
    def for_actor(cls, base: int, ceiling: int | None) -> ElasticThreads:
        """The actor's threads: elastic up to ``ceiling`` where ``/proc/stat`` is readable."""
        cpus = affinity_cpus()
        reader = proc_stat_reader(cpus) if ceiling and ceiling > base else None
        return cls(base, ceiling or base, len(cpus), reader)

    @property
    def elastic(self) -> bool:
        return self.reader is not None

    def reset(self) -> None:
        """Back to ``base`` threads at the start of a call; starts a new check window."""
        if self.threads != self.base:
            self.threads = self.base
            self.set_threads(self.base)
        self._last = self.reader() if self.reader else None

    def grow(self) -> int:
        """Add threads for the cores idle since the last check; returns the thread count."""
        if self.reader is None or self.threads >= self.ceiling:
            return self.threads
        now = self.reader()
        if self._last is None:
            self._last = now
            return self.threads
        idle, total = now[0] - self._last[0], now[1] - self._last[1]
        if total < MIN_TICKS_PER_CPU * self.cpus:
            return self.threads  # too short a window: keep accumulating
        self._last = now
        idle_cores = self.cpus * idle / total
        if idle_cores >= MIN_IDLE_CORES:
            before = self.threads
            self.threads = min(self.ceiling, self.threads + max(1, round(idle_cores)))
            self.set_threads(self.threads)
            if before == self.base:
                self.grown += 1
        return self.threads
