"""The scheduling loop quarantines a function whose calls end their worker on most samples,
and never one that does so on a few: the loop against a scripted backend (no processes)."""

from __future__ import annotations

import concurrent.futures as cf
import re

from entropo.rewards.evaluator import EXCEPTION, Job, JobOutput, Outcome
from entropo.rewards.pool import QUARANTINE_DEATHS, WorkerDied, execute


class ScriptedBackend:
    """Two slots; a job dies when any of its samples is in ``deadly`` for its entry."""

    def __init__(self, deadly: dict[int, set[int]]) -> None:
        self.deadly = deadly
        self.busy: set[int] = set()
        self.submitted: list[Job] = []
        self.replaced = 0

    def wait_started(self) -> None:
        pass

    def deadline_s(self, job: Job, timeout_s: float) -> float:
        return timeout_s

    def idle_slots(self) -> list[int]:
        return [s for s in (0, 1) if s not in self.busy]

    def submit(self, slot: int, job: Job) -> cf.Future:
        self.busy.add(slot)
        self.submitted.append(job)
        fut: cf.Future = cf.Future()
        if set(job.rows) & self.deadly.get(job.entry, set()):
            fut.set_exception(WorkerDied("exit code 1"))
        else:
            fut.set_result(JobOutput([Outcome("ok", score=1.0) for _ in job.rows]))
        return fut

    def wait(self, handles: list, timeout: float | None) -> list:
        return list(handles)

    def result(self, handle: cf.Future) -> JobOutput:
        return handle.result()

    def release(self, slot: int) -> None:
        self.busy.discard(slot)

    def replace(self, slot: int) -> None:
        self.replaced += 1
        self.busy.discard(slot)


def _jobs(entry: int, n: int, chunk: int) -> list[Job]:
    return [Job(entry, list(range(k, min(n, k + chunk))), [None] * (min(n, k + chunk) - k),
                [[i] for i in range(min(n, k + chunk) - k)]) for k in range(0, n, chunk)]


def test_a_function_that_kills_every_worker_is_quarantined_after_three_deaths():
    backend = ScriptedBackend({0: set(range(40))})  # entry 0 dies on every sample; entry 1 never
    done, stats = execute(backend, _jobs(0, 40, 8) + _jobs(1, 40, 8), timeout_s=1.0)
    assert stats.quarantined == {0}
    # the third death quarantines it; the other slot's call, already running, may die too
    assert QUARANTINE_DEATHS <= stats.deaths[0] <= QUARANTINE_DEATHS + 1
    # every sample of entry 0 fails exactly once, with the reason; entry 1 is untouched
    failed = sorted(r for job, _ in stats.failures for r in job.rows)
    assert failed == list(range(40))
    reasons = {o.message.split(":")[0] for _, o in stats.failures}
    assert reasons == {"reward worker died", "quarantined"}
    assert all(o.status == EXCEPTION for _, o in stats.failures)
    assert sorted(r for job, _ in done if job.entry == 1 for r in job.rows) == list(range(40))
    # the batch deaths before the split, then three single-sample deaths: not one start per sample
    assert stats.replaced == backend.replaced <= 5 + stats.deaths[0]
    quarantined = [o for _, o in stats.failures if o.message.startswith("quarantined")]
    assert len(quarantined) == 40 - stats.deaths[0]
    assert re.search(r"quarantined: (\d) of its \1 finished calls ended their process", quarantined[0].message)


def test_a_function_that_kills_a_few_workers_keeps_running():
    deadly = {0: {3, 17, 29, 31}}  # 4 of 40 samples end their worker
    backend = ScriptedBackend(deadly)
    done, stats = execute(backend, _jobs(0, 40, 8), timeout_s=1.0)
    assert stats.quarantined == set()
    assert sorted(r for job, _ in stats.failures for r in job.rows) == sorted(deadly[0])
    assert sorted(r for job, _ in done for r in job.rows) == sorted(set(range(40)) - deadly[0])


def test_after_a_lost_batch_the_functions_other_batches_run_one_sample_at_a_time():
    """Once a function's batch lost its worker, its batches not yet started run sample by
    sample: each bad sample costs one worker (or one time limit), not its batch's and its own.
    Another function's batches stay whole."""
    deadly = {0: {3, 17, 29, 31}}  # in batches 0, 2, 3 of five batches of 8
    backend = ScriptedBackend(deadly)
    done, stats = execute(backend, _jobs(0, 40, 8) + _jobs(1, 16, 8), timeout_s=1.0)
    assert sorted(r for job, _ in stats.failures for r in job.rows) == sorted(deadly[0])
    assert sorted(r for job, _ in done if job.entry == 0 for r in job.rows) == sorted(set(range(40)) - deadly[0])
    # the first two batches were running when the first died; every later one of entry 0 ran split
    whole = [job for job in backend.submitted if job.entry == 0 and len(job.units) > 1]
    assert [job.rows[0] for job in whole] == [0, 8]
    # workers lost: batch 0, then each bad sample once (3, 17, 29, 31): five, where whole batches
    # would lose seven (batches 0, 2 and 3, then the four samples)
    assert backend.replaced == 5 and stats.deaths[0] == 4  # deaths: the single-sample calls
    assert all(len(job.units) == 8 for job in backend.submitted if job.entry == 1)


class ForkedBackend(ScriptedBackend):
    """A fork-isolated worker: a deadly sample costs its call's process, reported as ``lost``
    in the job's output; the worker itself never dies."""

    def submit(self, slot: int, job: Job) -> cf.Future:
        self.busy.add(slot)
        self.submitted.append(job)
        bad = [r in self.deadly.get(job.entry, set()) for r in job.rows]
        fut: cf.Future = cf.Future()
        fut.set_result(JobOutput([Outcome(EXCEPTION, message="reward process died (exit code 1)") if b
                                  else Outcome("ok", score=1.0) for b in bad], lost=sum(bad)))
        return fut


def test_calls_lost_in_forked_processes_count_toward_quarantine():
    """Entry 0's first batch of 8 loses all eight calls' processes: 8 deaths of 8 finished
    calls quarantines it, and its four later batches fail at once; entry 1 scores."""
    backend = ForkedBackend({0: set(range(40))})
    done, stats = execute(backend, _jobs(0, 40, 8) + _jobs(1, 16, 8), timeout_s=1.0)
    assert stats.quarantined == {0} and backend.replaced == 0
    first = [job for job in backend.submitted if job.entry == 0]
    assert len(first) <= 2  # the slots' first batches; the rest never ran
    assert stats.deaths[0] == stats.finished[0] == stats.replaced == 8 * len(first)
    assert sorted(r for job, _ in stats.failures for r in job.rows) == list(range(8 * len(first), 40))
    assert sorted(r for job, _ in done if job.entry == 1 for r in job.rows) == list(range(16))


def test_a_few_lost_calls_do_not_quarantine():
    backend = ForkedBackend({0: {3, 17, 29, 31}})
    done, stats = execute(backend, _jobs(0, 40, 8), timeout_s=1.0)
    assert stats.quarantined == set() and stats.deaths[0] == stats.replaced == 4
    assert len(done) == 5 and not stats.failures  # every batch returned; the four failed inside
