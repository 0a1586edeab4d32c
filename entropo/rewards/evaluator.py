"""Worker side of the reward stage: run one job of one reward entry on some samples.

The same :class:`Evaluator` runs in the controller's process (in-process mode) and inside
each Ray reward worker. It never raises on a reward's failure: every sample gets an
:class:`Outcome` (a score, or the reason there is none), and the driver
(:mod:`entropo.rewards.manager`) applies the fallback and counts errors.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import resource
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from entropo.rewards.api import Sample
from entropo.rewards.loader import FnSpec, Loaded, load
from entropo.rewards.registry import RewardContext

OK, SKIPPED, EXCEPTION, TIMEOUT, NAN = "ok", "skipped", "exception", "timeout", "nan"
ERROR_REASONS = (EXCEPTION, TIMEOUT, NAN)
RESERVED_KEYS = ("score", "acc", "cluster")
CAUGHT = (Exception, SystemExit)
"""What a reward may raise and still only fail its samples (a stray sys.exit() included)."""


@dataclass
class Outcome:
    """What one reward entry made of one sample.

    Attributes:
        status: ``ok``, ``skipped`` (returned None), or an error reason: ``exception``,
            ``timeout``, ``nan`` (a non-finite score).
        score: the unweighted score (None unless ``ok``).
        acc: the reported ``acc``, or None.
        cluster: the reported ``cluster``, or None.
        extras: other numeric entries of a returned dict.
        message: the traceback or reason, for the log.
    """

    status: str
    score: float | None = None
    acc: float | None = None
    cluster: int | None = None
    extras: dict[str, float] = field(default_factory=dict)
    message: str = ""


@dataclass
class Job:
    """One call's worth of work: entry ``entry`` on ``samples`` (batch rows ``rows``).

    ``units`` partition the positions ``0..len(samples)-1`` into the pieces a retry may run
    alone: single samples, or whole groups for group rewards.
    """

    entry: int
    rows: list[int]
    samples: list[Sample]
    units: list[list[int]]

    def split(self) -> list[Job]:
        return [Job(self.entry, [self.rows[p] for p in u], [self.samples[p] for p in u], [list(range(len(u)))])
                for u in self.units]


@dataclass
class JobOutput:
    """The outcomes of a job, one per position, and the worker's state after it.

    Attributes:
        outcomes: one per sample of the job.
        whole_call_failed: a batch (TRL) call failed as a whole; the driver retries its
            samples one by one to find the culprit.
        recycle: the worker's memory grew past its limit; the driver replaces it.
        rss_mb: the worker's resident memory after the job.
        lost: calls whose process was killed for the time limit or died
            (``reward.isolation=fork``, :mod:`entropo.rewards.isolate`); their samples have
            failed outcomes.
    """

    outcomes: list[Outcome]
    whole_call_failed: bool = False
    recycle: bool = False
    rss_mb: float = 0.0
    lost: int = 0


def rss_mb() -> float:
    """This process's resident set size in MiB (current, not peak, where /proc exists)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the peak is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _number(x: Any) -> float | None:
    """``x`` as a float; None for what is not a number. A string is not one, even "0.5": a
    reward returning text is a bug in it, not a score (verl and TRL fail on it too)."""
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, str | bytes):
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def normalise(out: Any) -> Outcome:
    """An :class:`Outcome` from a reward's return value (float, dict with ``score``, None)."""
    if out is None:
        return Outcome(SKIPPED)
    if isinstance(out, Mapping):
        if "score" not in out:
            return Outcome(EXCEPTION, message=f"returned a dict without 'score': keys {sorted(out)}")
        score = _number(out["score"])
        acc = _number(out["acc"]) if "acc" in out else None
        cluster = out.get("cluster")
        extras = {}
        for k, v in out.items():
            if k not in RESERVED_KEYS:
                num = _number(v) if not isinstance(v, str) else None
                if num is not None:
                    extras[k] = num
    else:
        score, acc, cluster, extras = _number(out), None, None, {}
    if score is None:
        return Outcome(EXCEPTION, message=f"returned {type(out).__name__} {str(out)[:100]!r}, not a number")
    if not math.isfinite(score):
        return Outcome(NAN, message=f"returned a non-finite score {score}")
    if acc is not None and not math.isfinite(acc):
        acc = None
    return Outcome(OK, score, acc, None if cluster is None else int(cluster), extras)


def _failure(e: BaseException) -> Outcome:
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return Outcome(TIMEOUT, message="no result within reward.timeout_s (async call cancelled)")
    return Outcome(EXCEPTION, message="".join(traceback.format_exception(type(e), e, e.__traceback__)))


class Evaluator:
    """The loaded reward entries of one process, and how to run a job on them.

    Args:
        specs: the parsed entries, in ``reward.fns`` order (plus internal ones).
        options: built-in name -> options.
        ctx: the reward context.
        timeout_s: per-call limit applied cooperatively to async functions.
        memory_growth_mb: report ``recycle`` once RSS grew this much since start-up
            (None: never).
    """

    def __init__(self, specs: list[FnSpec], options: Mapping[str, Any], ctx: RewardContext,
                 timeout_s: float, memory_growth_mb: float | None = None) -> None:
        self.entries: list[Loaded] = [load(s, options, ctx) for s in specs]
        self.timeout_s = timeout_s
        self.memory_growth_mb = memory_growth_mb
        self.base_rss_mb = rss_mb()

    def run(self, job: Job) -> JobOutput:
        """Run a job; every sample of it gets an outcome (no exception escapes)."""
        entry = self.entries[job.entry]
        whole = False
        if entry.level == "sample":
            outcomes = self._per_sample(entry, job.samples)
        elif entry.level == "batch":
            outcomes = self._call_list(entry, job.samples)
            whole = all(o.status == EXCEPTION for o in outcomes) and len(job.units) > 1
        else:
            outcomes = [Outcome(EXCEPTION)] * len(job.samples)
            for unit in job.units:
                for p, o in zip(unit, self._call_list(entry, [job.samples[p] for p in unit])):
                    outcomes[p] = o
        rss = rss_mb()
        grew = self.memory_growth_mb is not None and rss - self.base_rss_mb > self.memory_growth_mb
        return JobOutput(outcomes, whole_call_failed=whole, recycle=grew, rss_mb=rss)

    def _per_sample(self, entry: Loaded, samples: list[Sample]) -> list[Outcome]:
        if entry.is_async:
            return asyncio.run(self._gather(entry, samples))
        outcomes = []
        for s in samples:
            try:
                outcomes.append(normalise(entry.fn(s)))
            except CAUGHT as e:
                outcomes.append(_failure(e))
        return outcomes

    async def _gather(self, entry: Loaded, samples: list[Sample]) -> list[Outcome]:
        async def one(s: Sample) -> Outcome:
            try:
                return normalise(await asyncio.wait_for(entry.fn(s), self.timeout_s))
            except CAUGHT as e:
                return _failure(e)

        return list(await asyncio.gather(*(one(s) for s in samples)))

    def _call_list(self, entry: Loaded, samples: list[Sample]) -> list[Outcome]:
        """One call on a list of samples (TRL chunk or one group); failures hit all of them."""
        try:
            out = entry.fn(samples)
            if inspect.isawaitable(out):
                out = asyncio.run(_wait(out, self.timeout_s))
            if not isinstance(out, (list, tuple)) or len(out) != len(samples):
                got = f"{len(out)} results" if isinstance(out, (list, tuple)) else type(out).__name__
                return [Outcome(EXCEPTION, message=f"returned {got} for {len(samples)} samples")] * len(samples)
            return [normalise(o) for o in out]
        except CAUGHT as e:
            return [_failure(e)] * len(samples)


async def _wait(awaitable, timeout_s: float):
    return await asyncio.wait_for(awaitable, timeout_s)
