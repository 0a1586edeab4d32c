"""Each reward call in a forked process of its Ray reward worker (``reward.isolation=fork``).

Why: a call that hangs, ends its process (``os._exit``, a crash) or leaks memory would otherwise
cost the Ray worker itself, killed and replaced (a process start, Ray's worker set-up and the
reward modules' imports: about a second of CPU each time), and a hang would hold every sample
queued behind it for the whole time limit.

How (:class:`Supervisor`, run by the worker for each job): the worker forks a child, which has
the reward functions loaded already (copy-on-write: milliseconds). The child runs the job's
*tasks* one after another and writes each task's :class:`JobOutput` to a pipe as soon as it has
it. A task is one unit (a sample; a group for a group reward) for a synchronous per-sample or
group function, the whole job for a batch (TRL) or async function. The worker watches:

- a task with no result ``limit_s`` after it started (``reward.timeout_s`` plus the pool's
  slack): its child (and the child's process group) is killed, the task fails with
  ``timeout``, the tasks after it go to a new child;
- a child that exits before it reported all its tasks: the task it was on fails with
  ``exception`` naming the exit code or signal, the rest go to a new child;
- a task still running after the entry's *patience* (:meth:`Supervisor.patience`: ten times the
  median duration of the entry's last tasks in this worker, between 0.2 s and ``limit_s``; no
  patience before :data:`MIN_HISTORY` of them have finished, so that a reward whose every call
  is long does not start many side by side and slow them all past the limit): it becomes a
  straggler: its child is left to finish that one task (still within ``limit_s``) and
  the tasks after it go to a new child at once, so that hung samples wait side by side rather
  than one after another. At most :data:`MAX_STRAGGLERS` wait at once; past that the next task
  waits for its child. A straggler that finishes in time gives its result like any other task.
- a whole-job task (batch or async) that fails as a whole (times out, ends its process, or
  raises on every sample) runs again unit by unit, as above, to find the culprits.

A straggler's child is told (through a word of memory it shares with the worker) to start no
further task, so a task runs once, except when the child finishes its task in the microseconds
in which it is marked a straggler: then it may begin the next task too, whose result is dropped
(the run gets one result per sample, but a side effect of that call can happen twice).

A child's memory, leaked or not, is returned when it exits, so a worker in this mode is never
recycled. A child dies with its worker (``PR_SET_PDEATHSIG`` on Linux): a worker killed by Ray
(the pool's net deadline, the end of the run) or by the OS leaves no hung call behind. A
killed child's process group is killed with it; a grandchild that left the group (a new
session) is out of reach, as a process that escapes its worker is in ``none`` mode. Killed
children are reaped later, off the job's path. A failed fork fails the tasks it was for
(``exception``), not the worker.

Deviation from running calls in the worker (``reward.isolation=none``): module-level state that
a reward function changes (a cache, a counter) lives in the child and is gone after the job; the
functions are loaded once per worker, so imports and module-level set-up are not repeated.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import pickle
import select
import signal
import statistics
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from entropo.rewards.evaluator import EXCEPTION, TIMEOUT, Evaluator, Job, JobOutput, Outcome

PATIENCE_FACTOR = 10.0
"""A task becomes a straggler after this many times the median duration of its entry's tasks."""
PATIENCE_FLOOR_S = 0.2
"""Patience never below this (scheduling noise on a loaded machine)."""
MAX_STRAGGLERS = 8
"""Stragglers waiting side by side at most, per worker."""
HISTORY = 64
"""Task durations per entry the patience is taken from."""
MIN_HISTORY = 4
"""Finished tasks of an entry in this worker before any of its tasks may become a straggler."""
POLL_S = 0.1
"""How often a child that may have died without closing its pipe (a grandchild holds it) is
checked while a task runs."""
_HEADER = struct.Struct("<Qd")  # frame length, the task's seconds in the child
_LAST = struct.Struct("<q")  # the last position in its task list a child may start
PR_SET_PDEATHSIG = 1


def _libc():
    """libc for prctl (Linux), loaded in the parent before any fork; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


@dataclass
class _Task:
    job: Job
    positions: list[int]  # where its samples sit in the supervised job


@dataclass
class _Child:
    pid: int
    fd: int
    pidfd: int  # -1 where pidfd_open is not available
    last: mmap.mmap  # shared with the child: the last position in ``tasks`` it may start
    tasks: list[int]  # indices into the supervisor's task list, in the order the child runs them
    at: int = 0  # position in ``tasks`` of the task it runs now
    started: float = field(default_factory=time.monotonic)  # when that task started
    straggler: bool = False  # only its current task is still wanted from it
    eof: bool = False  # its pipe is closed: nothing more to read, only its exit to see
    buf: bytearray = field(default_factory=bytearray)

    @property
    def current(self) -> int:
        return self.tasks[self.at]


class Supervisor:
    """Runs jobs of one worker's :class:`Evaluator` in forked children (module docstring).

    Args:
        evaluator: the worker's loaded reward entries.
        timeout_s: ``reward.timeout_s``.
        slack_s: added to it: the time a task may take is ``limit_s = timeout_s + slack_s``.

    Attributes:
        peak_stragglers: the most stragglers that waited side by side in this worker.
    """

    def __init__(self, evaluator: Evaluator, timeout_s: float, slack_s: float) -> None:
        self.evaluator = evaluator
        self.timeout_s = timeout_s
        self.limit_s = timeout_s + slack_s
        self.durations: dict[int, deque[float]] = {}
        self.peak_stragglers = 0
        self.libc = _libc()
        self.exiting: list[tuple[int, int]] = []  # (pid, pidfd) of killed children not reaped yet

    def patience(self, entry: int) -> float:
        """Seconds after which a running task of ``entry`` becomes a straggler (``inf`` before
        :data:`MIN_HISTORY` tasks of it have finished)."""
        seen = self.durations.get(entry, ())
        if len(seen) < MIN_HISTORY:
            return math.inf
        return min(self.limit_s, max(PATIENCE_FLOOR_S, PATIENCE_FACTOR * statistics.median(seen)))

    def run(self, job: Job) -> JobOutput:
        """Every sample of ``job`` gets an outcome; ``JobOutput.lost`` counts the tasks whose
        process was killed for the time limit or died."""
        entry = self.evaluator.entries[job.entry]
        whole = entry.level == "batch" or entry.is_async or len(job.units) == 1
        tasks = [_Task(job, list(range(len(job.samples))))] if whole else [
            _Task(sub, unit) for sub, unit in zip(job.split(), job.units)]
        outcomes: list[Outcome | None] = [None] * len(job.samples)
        lost = 0
        queue: deque[int] = deque(range(len(tasks)))
        children: list[_Child] = []

        def settle(i: int, out: JobOutput | None, failure: Outcome | None, process_lost: bool = True) -> None:
            """Task ``i``'s output, or its ``failure``: its process was killed or died
            (``process_lost``), or none could be forked. A whole-job task whose process was lost,
            or that raised on every sample, is split into its units instead."""
            nonlocal lost
            task = tasks[i]
            failed_whole = (out is None and process_lost) or (out is not None and out.whole_call_failed)
            if failed_whole and len(task.job.units) > 1:  # find the culprits unit by unit
                for sub, unit in zip(task.job.split(), task.job.units):
                    tasks.append(_Task(sub, [task.positions[p] for p in unit]))
                    queue.append(len(tasks) - 1)
                return
            if out is None:
                lost += process_lost
                out = JobOutput([failure] * len(task.positions))
            for p, o in zip(task.positions, out.outcomes):
                outcomes[p] = o

        self._reap_exited()
        try:
            while queue or children:
                if queue and not any(not c.straggler for c in children):
                    order = list(queue)
                    queue.clear()
                    try:
                        children.append(self._fork(tasks, order))
                    except OSError as e:  # no process for them (EAGAIN, ENOMEM): they fail, the worker stays
                        for i in order:
                            settle(i, None, Outcome(EXCEPTION, message=f"could not fork a process for the call: {e}"),
                                   process_lost=False)
                        continue
                self._wait(children, job.entry)
                self._reap_exited()
                now = time.monotonic()
                for c in list(children):
                    if self._read(c, job.entry, now, settle):
                        children.remove(c)
                        continue
                    left = self._reap(c, job.entry, now, settle)
                    if left is not None:
                        children.remove(c)
                        queue.extendleft(reversed(left))
                    elif now - c.started >= self.limit_s:
                        self._kill(c)
                        children.remove(c)
                        settle(c.current, None, Outcome(TIMEOUT, message=(
                            f"no result within reward.timeout_s={self.timeout_s:g} s; its process was killed")))
                        if not c.straggler:
                            queue.extendleft(reversed(c.tasks[c.at + 1:]))
                    elif self._may_straggle(c, children) and now - c.started >= self.patience(job.entry):
                        c.straggler = True
                        _LAST.pack_into(c.last, 0, c.at)  # the child starts nothing more
                        queue.extendleft(reversed(c.tasks[c.at + 1:]))
                        self.peak_stragglers = max(self.peak_stragglers, sum(x.straggler for x in children))
        finally:
            for c in children:
                self._kill(c)
        missing = [p for p, o in enumerate(outcomes) if o is None]
        if missing:  # a bug guard: every position is settled above
            raise RuntimeError(f"reward supervisor: positions {missing} of entry {job.entry} got no outcome")
        return JobOutput(outcomes, lost=lost)  # type: ignore[arg-type]

    @staticmethod
    def _may_straggle(c: _Child, children: list[_Child]) -> bool:
        """Whether ``c``'s task could become a straggler: it has tasks after it to hand on, and
        fewer than :data:`MAX_STRAGGLERS` wait already."""
        return (not c.straggler and c.at + 1 < len(c.tasks)
                and sum(x.straggler for x in children) < MAX_STRAGGLERS)

    # -- the children ---------------------------------------------------------------------

    def _fork(self, tasks: list[_Task], order: list[int]) -> _Child:
        for stream in (sys.stdout, sys.stderr):  # nothing buffered here is written twice
            with contextlib.suppress(Exception):
                stream.flush()
        last = mmap.mmap(-1, _LAST.size)  # anonymous and shared across fork
        _LAST.pack_into(last, 0, len(order) - 1)
        r, w = os.pipe()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            last.close()
            raise
        if pid == 0:  # the child: run the tasks, report each, never return
            code = 0
            try:
                os.close(r)
                os.setpgid(0, 0)
                # killed with its worker (a worker killed by Ray or the OS leaves no hung call)
                if self.libc is not None:
                    self.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != parent:  # the worker died before the line above
                    os._exit(71)
                for k, i in enumerate(order):
                    if k > _LAST.unpack_from(last, 0)[0]:
                        break
                    start = time.monotonic()
                    out = self.evaluator.run(tasks[i].job)
                    data = pickle.dumps((i, out), protocol=pickle.HIGHEST_PROTOCOL)
                    _write_all(w, _HEADER.pack(len(data), time.monotonic() - start) + data)
            except BaseException:
                code = 70
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(code)
        os.close(w)
        with contextlib.suppress(OSError):  # the child did it first, or has already exited
            os.setpgid(pid, pid)
        os.set_blocking(r, False)
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # not Linux >= 5.3, or it has exited and been reaped
            pidfd = -1
        return _Child(pid, r, pidfd, last, order)

    def _wait(self, children: list[_Child], entry: int) -> None:
        """Until a child writes, or a deadline, a patience point or a poll comes."""
        now = time.monotonic()
        wake = [c.started + self.limit_s for c in children]
        patience = self.patience(entry)
        wake += [c.started + patience for c in children if self._may_straggle(c, children)]
        timeout = max(0.0, min([*wake, now + POLL_S]) - now)
        poller = select.poll()
        for c in children:
            if not c.eof:
                poller.register(c.fd, select.POLLIN)
            if c.pidfd >= 0:  # readable once the child has exited
                poller.register(c.pidfd, select.POLLIN)
        poller.poll(timeout * 1000)

    def _read(self, c: _Child, entry: int, now: float, settle) -> bool:
        """Take what ``c`` wrote; True when it has nothing more to give (it is killed then)."""
        while not c.eof:
            try:
                chunk = os.read(c.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                c.eof = True
                break
            c.buf += chunk
        while len(c.buf) >= _HEADER.size:
            n, seconds = _HEADER.unpack_from(c.buf)
            if len(c.buf) < _HEADER.size + n:
                break
            i, out = pickle.loads(bytes(c.buf[_HEADER.size:_HEADER.size + n]))
            del c.buf[:_HEADER.size + n]
            if i != c.current:  # not the task it runs (a stray writer): not its result
                continue
            if len(out.outcomes) == 1 or self.evaluator.entries[entry].level == "group":
                self.durations.setdefault(entry, deque(maxlen=HISTORY)).append(seconds)
            settle(i, out, None)
            c.at += 1
            c.started = now
            if c.straggler or c.at == len(c.tasks):  # nothing more is wanted from it
                self._kill(c)
                return True
        return False

    def _reap(self, c: _Child, entry: int, now: float, settle) -> list[int] | None:
        """None while ``c`` runs. Once it has exited without giving all its tasks, the one it
        ran fails and the tasks it did not reach are returned, to run in a new child."""
        try:
            pid, status = os.waitpid(c.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by the kernel (SIGCHLD ignored): gone, status unknown
            pid, status = c.pid, None
        if pid == 0:
            return None
        with contextlib.suppress(OSError):  # what it left behind in its process group
            os.killpg(c.pid, signal.SIGKILL)
        c.pid = -1  # reaped: nothing more to kill
        if self._read(c, entry, now, settle):  # what it wrote before it exited
            return []
        self._kill(c)  # closes its descriptors
        if status is None:
            how = "its exit status is unknown"
        else:
            code = os.waitstatus_to_exitcode(status)
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        settle(c.current, None, Outcome(EXCEPTION, message=f"reward process died ({how}) during the call"))
        return [] if c.straggler else c.tasks[c.at + 1:]

    def _kill(self, c: _Child) -> None:
        """SIGKILL ``c``'s process group and ``c`` itself (through its pidfd where there is one:
        never another process that took a reused pid); it is reaped later, off the job's path
        (:meth:`_reap_exited`)."""
        if c.pid > 0:
            with contextlib.suppress(OSError):
                os.killpg(c.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                if c.pidfd >= 0:
                    signal.pidfd_send_signal(c.pidfd, signal.SIGKILL)
                else:
                    os.kill(c.pid, signal.SIGKILL)
            self.exiting.append((c.pid, c.pidfd))
            c.pid, c.pidfd = -1, -1
        for fd in (c.fd, c.pidfd):
            if fd >= 0:
                os.close(fd)
        c.fd, c.pidfd = -1, -1
        if not c.last.closed:
            c.last.close()

    def _reap_exited(self) -> None:
        """Reap the killed children that have exited."""
        for pid, pidfd in list(self.exiting):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.exiting.remove((pid, pidfd))
                if pidfd >= 0:
                    os.close(pidfd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
