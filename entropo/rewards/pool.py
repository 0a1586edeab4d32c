"""Where reward jobs run, and the one scheduling loop that enforces the time limit.

Two backends with the same contract (each *slot* runs one job at a time):

- :class:`RayBackend`: ``workers`` Ray actors (separate processes). With
  ``reward.isolation=fork`` (the default) each worker runs every call in a forked child and
  limits each call itself (:mod:`entropo.rewards.isolate`): a hang, a death or a leak costs that
  child, the actor stays, and the loop's deadline is only a net for an actor that stops
  answering. With ``none`` the actor runs the calls: a job past its deadline gets its actor
  killed (``ray.kill``) and a fresh one started; so does a worker that died (segfault, OOM
  kill) and, after its job, a worker whose memory grew past ``worker_memory_growth_mb`` since it
  started (a leaking reward). Either way a worker that died takes a standby's place. A
  worker starts with an allow-listed environment (:mod:`entropo.worker_env`: its base set, ``reward.pass_env``,
  Ray's ``RAY_*``), not the trainer's: the reward functions see no API key by accident.
- :class:`LocalBackend`: ``workers`` daemon threads in this process, for unit tests and tiny
  runs. A Python thread cannot be killed: a job past its deadline is *abandoned* (its thread
  keeps running in the background, and a new thread takes the slot), leaked memory is never
  returned, a call stuck in C code that holds the GIL stalls the controller as well, and the
  functions see the trainer's whole environment (a thread shares its process's; this mode
  does not pretend otherwise). The results and counts are the same as with Ray; the isolation
  is not: use ``ray`` for untrusted or heavy rewards.

The scheduling loop (:func:`execute`) gives every job its backend's ``deadline_s``:
``timeout_s + DEADLINE_SLACK_S``, or with fork isolation the net above. A job
of several samples (or groups) that times out, or whose worker dies, is re-run one sample
(group) per job, so only the samples that alone exceed the limit count as timeouts; so is
every job of that function not yet started in this scoring, so that a function that hangs or
crashes on a few samples costs one time limit (or one worker) per bad sample, not two.

Quarantine: a function whose single-sample calls end their process (``os._exit``, a crash, an
OOM kill, or a hang past the deadline, for which the process is killed; a forked call's process
counts as the worker's) at least
:data:`QUARANTINE_DEATHS` times, and on more than half of the calls it has finished in this
scoring, is not run on the rest of it: every further sample of it fails at
once with the reason (no worker start per sample), and the manager's failure check then
stops the run naming it (or, above ``reward.max_error_frac``, counts the fallbacks). A
function that kills its worker on a few samples only is never quarantined.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import queue
import shlex
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from entropo import worker_env
from entropo.rewards.evaluator import EXCEPTION, TIMEOUT, Evaluator, Job, JobOutput, Outcome

DEADLINE_SLACK_S = 0.5
"""Added to ``timeout_s`` per job: transfer and scheduling time, and room for an async
reward's own (cooperative) timeout to fire first."""
WORKER_START_TIMEOUT_S = 300.0
"""A Ray reward worker that is not up after this long is an error (not enough free CPUs?)."""
WORKER_SLACK_S = 30.0
"""Added to a fork-isolated job's limit (:meth:`RayBackend.deadline_s`): forks, transfers."""
MAX_START_FAILURES = 3
"""Consecutive failed worker starts before the reward stage gives up."""
CHUNKS_PER_WORKER = 4
"""Jobs per worker and entry: enough to balance load, few enough to keep calls cheap."""
MAX_CHUNK_UNITS = 64
"""At most this many samples (groups) per job, which bounds the work lost to a timeout."""
QUARANTINE_DEATHS = 3
"""Worker deaths of one function's single-sample calls before it can be quarantined (module
docstring)."""


class WorkerDied(RuntimeError):
    """The worker running a job is gone (crashed, killed by the OS)."""


@dataclass
class PoolStats:
    replaced: int = 0  # workers killed for a timeout or found dead, and restarted
    recycled: int = 0  # workers restarted because their memory grew too much
    failures: list[tuple[Job, Outcome]] = field(default_factory=list)
    quarantined: set[int] = field(default_factory=set)  # entries not run on the rest of the scoring
    deaths: dict[int, int] = field(default_factory=dict)  # single-sample calls per entry that ended their worker
    finished: dict[int, int] = field(default_factory=dict)  # units per entry that returned or died

    def count(self, job: Job, died: bool, lost: int = 0) -> None:
        """Count a returned or died job (``lost``: calls of a returned job whose own process was
        killed or died, :mod:`entropo.rewards.isolate`); quarantine its entry when it kills most
        of its calls. A job of several units that died is not counted: its units run again one
        by one."""
        e = job.entry
        if died and len(job.units) > 1:
            return
        self.finished[e] = self.finished.get(e, 0) + len(job.units)
        deaths = int(died) + lost
        if deaths:
            self.deaths[e] = self.deaths.get(e, 0) + deaths
            if self.deaths[e] >= QUARANTINE_DEATHS and 2 * self.deaths[e] > self.finished[e]:
                self.quarantined.add(e)

    def quarantine_outcome(self, entry: int) -> Outcome:
        return Outcome(EXCEPTION, message=(
            f"quarantined: {self.deaths[entry]} of its {self.finished[entry]} finished calls ended "
            "their process (os._exit, a crash, an OOM kill, or no result within reward.timeout_s); "
            "not run on the rest of this batch"))


def chunk_size(units: int, workers: int) -> int:
    """Units per job for a worker that runs its calls itself (:data:`CHUNKS_PER_WORKER`,
    :data:`MAX_CHUNK_UNITS`)."""
    return max(1, min(MAX_CHUNK_UNITS, math.ceil(units / (workers * CHUNKS_PER_WORKER))))


# ---------------------------------------------------------------------------------------
# the loop


def execute(backend, jobs: list[Job], timeout_s: float) -> tuple[list[tuple[Job, JobOutput]], PoolStats]:
    """Run ``jobs`` on ``backend`` with a per-job deadline (module docstring).

    Args:
        backend: a :class:`LocalBackend` or :class:`RayBackend`.
        jobs: the jobs.
        timeout_s: the per-call limit (``reward.timeout_s``).

    Returns:
        ``(job, output)`` for every job that returned, and the stats, whose ``failures``
        hold ``(job, outcome)`` for single-unit jobs that timed out or lost their worker.
    """
    stats = PoolStats()
    done: list[tuple[Job, JobOutput]] = []
    pending = deque(jobs)
    inflight: dict[Any, tuple[int, Job, float]] = {}

    suspects: set[int] = set()  # entries whose job timed out or lost its worker in this scoring

    def lost(job: Job, outcome: Outcome) -> None:
        suspects.add(job.entry)
        if len(job.units) > 1:  # its units next, one by one: a culprit is found (or quarantined) early
            pending.extendleft(reversed(job.split()))
        else:
            stats.failures.append((job, outcome))

    backend.wait_started()
    while pending or inflight:
        if stats.quarantined:
            runnable = deque()
            for job in pending:
                if job.entry in stats.quarantined:
                    reason = stats.quarantine_outcome(job.entry)
                    stats.failures.extend((unit, reason) for unit in (job.split() if len(job.units) > 1 else [job]))
                else:
                    runnable.append(job)
            pending.clear()
            pending.extend(runnable)
            if not pending and not inflight:
                break
        for slot in backend.idle_slots():
            if not pending:
                break
            job = pending.popleft()
            if job.entry in suspects and len(job.units) > 1:
                pending.extendleft(reversed(job.split()))
                job = pending.popleft()
            inflight[backend.submit(slot, job)] = (slot, job, time.monotonic() + backend.deadline_s(job, timeout_s))
        now = time.monotonic()
        wait_s = max(0.0, min(d for _, _, d in inflight.values()) - now) if inflight else None
        for handle in backend.wait(list(inflight), wait_s):
            slot, job, _ = inflight.pop(handle)
            try:
                out = backend.result(handle)
            except WorkerDied as e:
                stats.replaced += 1
                stats.count(job, died=True)
                backend.replace(slot)
                lost(job, Outcome(EXCEPTION, message=f"reward worker died: {e}"))
                continue
            stats.count(job, died=False, lost=out.lost)
            stats.replaced += out.lost
            if out.whole_call_failed and len(job.units) > 1:
                pending.extend(job.split())
            else:
                done.append((job, out))
            if out.recycle:
                stats.recycled += 1
                backend.replace(slot)
            else:
                backend.release(slot)
        now = time.monotonic()
        for handle, (slot, job, deadline) in list(inflight.items()):
            if now >= deadline:
                del inflight[handle]
                stats.replaced += 1
                stats.count(job, died=True)
                backend.replace(slot)
                lost(job, Outcome(TIMEOUT, message=f"no result within reward.timeout_s={timeout_s:g} s; "
                                                    "worker killed and replaced"))
    return done, stats


# ---------------------------------------------------------------------------------------
# in-process


class _Thread:
    def __init__(self, evaluator: Evaluator) -> None:
        self.jobs: queue.Queue = queue.Queue()
        self.retired = False
        self.evaluator = evaluator
        threading.Thread(target=self._loop, daemon=True, name="entropo-reward").start()

    def _loop(self) -> None:
        while not self.retired:
            item = self.jobs.get()
            if item is None:
                return
            job, fut = item
            try:
                fut.set_result(self.evaluator.run(job))
            except BaseException as e:  # Evaluator.run does not raise; this is a bug guard
                fut.set_exception(e)


class LocalBackend:
    """``workers`` daemon threads sharing one :class:`Evaluator` (module docstring)."""

    def __init__(self, evaluator: Evaluator, workers: int = 1) -> None:
        self.evaluator = evaluator
        self.threads = [_Thread(evaluator) for _ in range(workers)]
        self.busy: set[int] = set()

    def wait_started(self) -> None:
        """Threads start at once: nothing to wait for."""

    def deadline_s(self, job: Job, timeout_s: float) -> float:
        """A job's time limit: the call's."""
        return timeout_s + DEADLINE_SLACK_S

    def chunk_size(self, units: int) -> int:
        """Units (samples or groups) per job of a scoring of ``units``."""
        return chunk_size(units, len(self.threads))

    def idle_slots(self) -> list[int]:
        return [i for i in range(len(self.threads)) if i not in self.busy]

    def submit(self, slot: int, job: Job) -> cf.Future:
        fut: cf.Future = cf.Future()
        self.busy.add(slot)
        self.threads[slot].jobs.put((job, fut))
        return fut

    def wait(self, handles: list, timeout: float | None) -> list:
        if not handles:
            return []
        ready, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(ready)

    def result(self, handle: cf.Future) -> JobOutput:
        try:
            return handle.result()
        except Exception as e:
            raise WorkerDied(repr(e)) from e

    def release(self, slot: int) -> None:
        self.busy.discard(slot)

    def replace(self, slot: int) -> None:
        old = self.threads[slot]
        old.retired = True  # it ends after its current job, if that ever returns
        old.jobs.put(None)
        self.threads[slot] = _Thread(self.evaluator)
        self.busy.discard(slot)

    def close(self) -> None:
        for t in self.threads:
            t.retired = True
            t.jobs.put(None)


# ---------------------------------------------------------------------------------------
# Ray


class RewardWorker:
    """The Ray actor body: an :class:`Evaluator` in its own process; with ``isolation`` fork,
    each call runs in a forked child (:mod:`entropo.rewards.isolate`)."""

    def __init__(self, specs, options, ctx, timeout_s: float, memory_growth_mb: float | None,
                 sys_path: list[str], isolation: str) -> None:
        for p in reversed(sys_path):
            if p not in sys.path:
                sys.path.insert(0, p)
        self.evaluator = Evaluator(specs, options, ctx, timeout_s, memory_growth_mb)
        self.supervisor = None
        if isolation == "fork":
            from entropo.rewards.isolate import Supervisor

            self.supervisor = Supervisor(self.evaluator, timeout_s, DEADLINE_SLACK_S)

    def ready(self) -> int:
        """The worker's pid, once its reward functions are loaded."""
        return os.getpid()

    def run(self, job: Job) -> JobOutput:
        return self.evaluator.run(job) if self.supervisor is None else self.supervisor.run(job)


SPARE = -1
"""The slot of a standby worker while it starts."""


class RayBackend:
    """``workers`` Ray actors (module docstring) and ``standby`` spare ones. They start in the
    background; the first :meth:`wait_started` (at the latest, the first scoring) waits until
    all are up, so that a reward that fails to load in a worker fails at start-up, not mid-run.

    A worker killed (a hang) or lost takes a started spare's place at once, and a new spare
    starts in the background: a replacement costs the scoring no worker start-up (seconds: a
    process, Ray's worker set-up and the reward modules' imports) while a spare is ready."""

    def __init__(self, specs, options, ctx, timeout_s: float, workers: int, num_cpus: float,
                 memory_growth_mb: float | None, pass_env: tuple[str, ...], standby: int,
                 isolation: str) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("reward.mode=ray needs Ray to be initialised (ray.init) before the "
                               "RewardManager is created; or use reward.mode=local")
        self.ray = ray
        self.args = (specs, options, ctx, timeout_s, memory_growth_mb, [os.getcwd(), *sys.path[:1]], isolation)
        self.isolation = isolation
        # py_executable: Ray starts each worker through entropo.worker_env, which execs the
        # worker with the allowed variables only (runtime_env env_vars can add, not remove)
        start = shlex.join(worker_env.command([*worker_env.BASE_ENV, *pass_env]))
        self.cls = ray.remote(num_cpus=num_cpus, max_restarts=0, max_concurrency=1,
                              runtime_env={"py_executable": start})(RewardWorker)
        self.num_cpus = num_cpus
        self.actors: list[Any] = [None] * workers
        self.starting: dict[Any, tuple[int, Any]] = {}  # ready() ref -> (slot or SPARE, actor)
        self.spares: list[Any] = []  # started standby workers
        self.busy: set[int] = set()
        self.start_failures = 0
        self.started = False
        for slot in range(workers):
            self._start(slot)
        for _ in range(standby):
            self._start(SPARE)

    def wait_started(self) -> None:
        """Block until the first workers are up (once); a failed start raises."""
        if not self.started:
            self._await_started(block=True)
            self.started = True

    def deadline_s(self, job: Job, timeout_s: float) -> float:
        """A job's time limit: the call's; with fork isolation, where the worker limits each
        call itself, a net for a worker that stops answering: each unit's limit and the
        whole job's, and :data:`WORKER_SLACK_S`."""
        one = timeout_s + DEADLINE_SLACK_S
        return one if self.isolation != "fork" else (len(job.units) + 1) * one + WORKER_SLACK_S

    def chunk_size(self, units: int) -> int:
        """Units (samples or groups) per job of a scoring of ``units``. With fork isolation one
        job per worker and entry: the worker limits each call and runs hung calls side by side
        (:mod:`entropo.rewards.isolate`), so all the hangs a worker meets in a scoring cost it one
        time limit, and a timeout loses no other unit's work."""
        workers = len(self.actors)
        return max(1, math.ceil(units / workers)) if self.isolation == "fork" else chunk_size(units, workers)

    def _start(self, slot: int) -> None:
        actor = self.cls.remote(*self.args)
        if slot != SPARE:
            self.actors[slot] = actor
        self.starting[actor.ready.remote()] = (slot, actor)

    def _await_started(self, block: bool) -> None:
        refs = list(self.starting)
        if not refs:
            return
        ready, _ = self.ray.wait(refs, num_returns=len(refs) if block else 1,
                                 timeout=WORKER_START_TIMEOUT_S if block else 0)
        if block and len(ready) < len(refs):
            raise RuntimeError(f"reward workers did not start within {WORKER_START_TIMEOUT_S:g} s; each "
                               f"asks for reward.worker_cpus={self.num_cpus} CPUs: are there enough free?")
        for ref in ready:
            slot, actor = self.starting.pop(ref)
            try:
                self.ray.get(ref)
                self.start_failures = 0
            except Exception as e:
                self.start_failures += 1
                if block or self.start_failures >= MAX_START_FAILURES:
                    raise RuntimeError(f"a reward worker failed to start: {_root_cause(e)}") from None
                self._start(slot)
                continue
            if slot == SPARE:
                self.spares.append(actor)

    def idle_slots(self) -> list[int]:
        self._await_started(block=False)
        starting = {slot for slot, _ in self.starting.values()}
        return [i for i in range(len(self.actors)) if i not in self.busy and i not in starting]

    def submit(self, slot: int, job: Job):
        self.busy.add(slot)
        return self.actors[slot].run.remote(job)

    def wait(self, handles: list, timeout: float | None) -> list:
        # Also wake up when a restarted worker comes up, so that it gets work.
        refs = handles + list(self.starting)
        if not refs:
            return []
        if timeout is None:  # only starting workers to wait for
            timeout = WORKER_START_TIMEOUT_S
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
        if not ready and not handles:
            raise RuntimeError(f"no reward worker came up within {WORKER_START_TIMEOUT_S:g} s; each asks "
                               f"for reward.worker_cpus={self.num_cpus} CPUs: are there enough free?")
        if ready and ready[0] in self.starting:
            self._await_started(block=False)
            return []
        return ready

    def result(self, handle) -> JobOutput:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayError as e:  # the actor died, or the call could not complete
            raise WorkerDied(str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    def release(self, slot: int) -> None:
        self.busy.discard(slot)

    def replace(self, slot: int) -> None:
        """Kill the slot's worker; a started spare takes its place (a new spare starts), else a
        new worker starts in the slot."""
        self.ray.kill(self.actors[slot], no_restart=True)
        self.busy.discard(slot)
        if self.spares:
            self.actors[slot] = self.spares.pop()
            self._start(SPARE)
        else:
            self._start(slot)

    def close(self) -> None:
        every = {id(a): a for a in [*self.actors, *self.spares, *(a for _, a in self.starting.values())] if a is not None}
        for actor in every.values():
            self.ray.kill(actor, no_restart=True)
        self.actors, self.spares, self.starting = [], [], {}


def _root_cause(e: BaseException) -> str:
    text = str(e)
    for line in reversed(text.splitlines()):
        if "RewardSpecError" in line or "Error:" in line:
            return line.strip()
    return text.splitlines()[0] if text else type(e).__name__
