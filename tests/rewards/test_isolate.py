"""reward.isolation=fork: the Supervisor runs each call in a forked child and fails only the
call that hangs, dies or times out; hung calls wait side by side; a leak dies with its child.
Run here in the test process (no Ray): the supervisor is what a Ray reward worker runs."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entropo.rewards.evaluator import Evaluator, Job, rss_mb
from entropo.rewards.isolate import PATIENCE_FLOOR_S, Supervisor
from entropo.rewards.loader import parse_entries
from entropo.rewards.manager import make_context
from tests.rewards.helpers import sample

CUSTOM = os.path.join(os.path.dirname(__file__), "custom")


def supervisor(fn: str, timeout_s: float = 1.0) -> Supervisor:
    evaluator = Evaluator(parse_entries([f"{CUSTOM}/{fn}"]), {}, make_context(None), timeout_s)
    return Supervisor(evaluator, timeout_s, slack_s=0.5)


def job(samples, units=None) -> Job:
    units = units or [[i] for i in range(len(samples))]
    return Job(0, list(range(len(samples))), samples, units)


def test_each_fault_fails_only_its_own_sample():
    sup = supervisor("native_style.py:flaky")
    behaviours = ["ok", "raise", "hang", "ok", "die", "spin", "nan", "none", "leak", "ok"]
    before = rss_mb()
    out = sup.run(job([sample(b, "ok", extra_info={"leak_mb": 300}) for b in behaviours]))
    got = [(o.status, o.score) for o in out.outcomes]
    assert got == [("ok", 1.0), ("exception", None), ("timeout", None), ("ok", 1.0), ("exception", None),
                   ("timeout", None), ("nan", None), ("skipped", None), ("ok", 1.0), ("ok", 1.0)]
    assert out.lost == 3  # hang, die, spin: their processes were killed or died
    assert "reward process died (exit code 1)" in out.outcomes[4].message
    assert "no result within reward.timeout_s=1 s" in out.outcomes[2].message
    assert rss_mb() - before < 100  # the 300 MiB leak died with its child
    assert not out.recycle
    again = sup.run(job([sample("ok", "ok")]))  # the worker goes on
    assert [o.score for o in again.outcomes] == [1.0] and again.lost == 0


def test_hung_calls_wait_side_by_side():
    """Three hangs among good samples: each becomes a straggler after the patience, the samples
    after it go on in a new child, so the three wait at once (one time limit, not three)."""
    sup = supervisor("native_style.py:flaky", timeout_s=2.0)
    behaviours = ["ok"] * 4 + ["hang", "ok", "hang", "ok", "hang", "ok"]
    out = sup.run(job([sample(b, "ok") for b in behaviours]))
    assert [o.status for o in out.outcomes] == ["timeout" if b == "hang" else "ok" for b in behaviours]
    assert sup.peak_stragglers == 3 and out.lost == 3


def test_a_process_that_dies_leaving_a_child_is_seen_dead_not_timed_out():
    """The call's child keeps the pipe open after the call's process exits: the exit is still
    found (polled), reported as a death with its exit code, and the child is killed."""
    sup = supervisor("native_style.py:flaky", timeout_s=30.0)
    out = sup.run(job([sample("die_leaving_child", "ok"), sample("ok", "ok")]))
    assert out.outcomes[0].status == "exception" and "exit code 3" in out.outcomes[0].message
    assert out.outcomes[1].score == 1.0 and out.lost == 1


def test_a_hung_batch_call_is_split_to_find_its_culprit():
    """A TRL function is called on the whole job; when that call hangs, its samples run one by
    one: only the culprit times out."""
    sup = supervisor("trl_style.py:hangs_on")
    out = sup.run(job([sample(r, "x") for r in ("a", "hang", "b", "c")]))
    assert [o.status for o in out.outcomes] == ["ok", "timeout", "ok", "ok"]
    assert out.lost == 1  # the culprit; the whole call that hung first is not counted


def test_results_equal_the_in_process_evaluator():
    """Good calls give exactly what the worker would give itself: per-sample and group rewards."""
    for fn, units in (("verl_style.py:compute_score", None), ("native_style.py:group_share", [[0, 1, 2], [3, 4]])):
        sup = supervisor(fn)
        samples = [sample(r, "12", group=0 if i < 3 else 1) for i, r in enumerate(["12", "13", "12", "7", "7"])]
        j = job(samples, units)
        assert sup.run(j).outcomes == sup.evaluator.run(j).outcomes


@pytest.mark.parametrize("seen, expected", [((), math.inf), ((0.01, 0.01, 0.01), math.inf),
                                           ((0.001, 0.002, 0.003, 0.5), PATIENCE_FLOOR_S),
                                           ((0.05, 0.06, 0.06, 0.07), 0.6), ((1.0, 2.0, 2.0, 3.0), 1.5)])
def test_patience_is_ten_medians_between_the_floor_and_the_limit(seen, expected):
    """None before MIN_HISTORY (4) finished tasks; then ten medians, at least the 0.2 s floor,
    at most the limit (1.5 s here)."""
    sup = supervisor("native_style.py:flaky", timeout_s=1.0)
    sup.durations[0] = list(seen)
    assert sup.patience(0) == pytest.approx(expected)


def test_a_reward_whose_calls_are_all_long_runs_them_one_at_a_time():
    """Before MIN_HISTORY calls have finished there is no patience: three 0.5 s calls (past the
    0.2 s floor) run one after another in one child, not side by side."""
    sup = supervisor("native_style.py:flaky", timeout_s=5.0)
    out = sup.run(job([sample("sleep", "ok", extra_info={"sleep_s": 0.5}) for _ in range(3)]))
    assert [o.score for o in out.outcomes] == [1.0] * 3 and sup.peak_stragglers == 0


def test_a_hung_call_dies_with_its_worker(tmp_path):
    """The worker (here a process running the supervisor) is SIGKILLed while a call hangs, as
    Ray kills a worker: the call's process goes with it instead of hanging on as an orphan."""
    pid_file = tmp_path / "pid"
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from tests.rewards.test_isolate import job, sample, supervisor\n"
        f"supervisor('native_style.py:flaky', timeout_s=300.0).run(job([sample('hang_writing_pid', 'ok', "
        f"extra_info={{'pid_file': {str(pid_file)!r}}})]))\n")
    worker = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            assert worker.poll() is None, "the worker exited before the call started"
            time.sleep(0.1)
        call = int(pid_file.read_text())
        assert _alive(call)
    finally:
        worker.kill()
        worker.wait()
    deadline = time.monotonic() + 10
    while _alive(call) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(call)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_straggler_starts_no_task_it_handed_on(tmp_path):
    """After four quick calls, a 1 s call becomes a straggler and the calls after it go to a new
    child; the straggler's child, done with its call, does not run them too: every call runs
    once (a reward's side effects are not doubled)."""
    log = tmp_path / "log"
    quick = [sample("log", "ok", extra_info={"log": str(log), "tag": f"q{i}"}) for i in range(4)]
    slow = sample("log", "ok", extra_info={"log": str(log), "tag": "slow", "sleep_s": 1.0})
    after = [sample("log", "ok", extra_info={"log": str(log), "tag": f"a{i}"}) for i in range(4)]
    sup = supervisor("native_style.py:flaky", timeout_s=10.0)
    out = sup.run(job([*quick, slow, *after]))
    assert [o.score for o in out.outcomes] == [1.0] * 9 and sup.peak_stragglers == 1
    tags = [line.split()[0] for line in log.read_text().splitlines()]
    assert sorted(tags) == sorted(["q0", "q1", "q2", "q3", "slow", "a0", "a1", "a2", "a3"])


def test_a_long_call_does_not_busy_wait_the_worker():
    """The worker sleeps while a call runs (no patience point to wake for: a single task)."""
    sup = supervisor("native_style.py:flaky", timeout_s=10.0)
    cpu = time.process_time()
    out = sup.run(job([sample("sleep", "ok", extra_info={"sleep_s": 1.5})]))
    assert out.outcomes[0].score == 1.0
    assert time.process_time() - cpu < 0.5  # a busy loop burns about 1.5 s here


def test_a_failed_fork_fails_its_calls_not_the_worker(monkeypatch):
    sup = supervisor("native_style.py:flaky")
    fds = len(os.listdir("/proc/self/fd"))

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    out = sup.run(job([sample("ok", "ok"), sample("ok", "ok")]))
    assert [o.status for o in out.outcomes] == ["exception"] * 2 and out.lost == 0
    assert "could not fork a process for the call" in out.outcomes[0].message
    assert len(os.listdir("/proc/self/fd")) == fds  # the pipe and the shared word were closed
    monkeypatch.undo()
    assert sup.run(job([sample("ok", "ok")])).outcomes[0].score == 1.0


def test_children_reaped_by_the_kernel_are_still_seen_dead():
    """With SIGCHLD ignored (as Ray's workers may set it) the kernel reaps the children: a
    death is still reported, with its status unknown, and the worker goes on."""
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        sup = supervisor("native_style.py:flaky")
        out = sup.run(job([sample("die", "ok"), sample("ok", "ok")]))
        assert out.outcomes[0].status == "exception"
        assert "reward process died (its exit status is unknown)" in out.outcomes[0].message  # not "exit code 0"
        assert out.outcomes[1].score == 1.0 and out.lost == 1
    finally:
        signal.signal(signal.SIGCHLD, old)
