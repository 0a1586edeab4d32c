"""Process faults of a training run, one test per fault: the run survives it, or stops with one
line (exit 2) that names what failed and what to do, and a run resumed with
``trainer.resume=auto`` loses and repeats no step.

Every run is the same seeded job (embedded tiny model, 2 ZeRO-2 learner ranks, 1 rollout
worker, 3 steps of 4 prompts, a checkpoint after every step); :func:`reference` runs it once
without a fault. "Equal to the uninterrupted run" means every key of :data:`COMPARED` (loss,
gradient norm, entropy, reward, length) of every step within 1e-4 absolute, as in
tests/trainer/test_checkpoint.py (on one machine the runs are bit-identical; 1e-4 leaves room
for another summation order). Faults are injected deterministically: a learner rank that
kills itself in a given step's update, a driver that kills itself at a given point of the
loop (:mod:`tests.trainer.kill_driver`), a rollout worker whose generation sleeps far past
``rollout.call_timeout_s``, a tmpfs too small for a second checkpoint.

The first line of each test's docstring names its fault (a table of fault, outcome and
seconds is built from pytest's junit xml). A test's seconds include the module fixtures it
is the first to use: :func:`test_uninterrupted_run` carries the reference run, so that the
others show what their fault costs; the two rollout-hang tests share one run (a hang in step
2, two in step 3), carried by the first; :func:`test_no_process_of_a_killed_driver_outlives_it`
runs last, when the Ray agents of the killed drivers have had their minute to exit.

Not covered here:

- a node lost as a whole, or a network partition between nodes (every process here is on one
  machine; a learner rank on a lost node is reported as the failed call's own error when Ray's
  health checks take longer than ``cluster.LEARNER_PROBE_S``);
- the driver killed while attached to a multi-node cluster (``trainer.ray_address``), where
  Ray kills a dead driver's actors when it notices; here each driver started its own local
  Ray instance, which dies with it;
- a learner rank that hangs without dying (its peers wait in their collective up to DeepSpeed's
  process-group timeout);
- a rollout worker that hangs inside a weight sync rather than a generation (the same
  detection, but learner rank 0 is then blocked in the broadcast until the worker is killed);
- a disk that fills while ``metrics.jsonl`` or ``config.yaml`` is written (an OSError with a
  traceback); a checkpoint write that fails with room left on the disk (one line naming the
  OS's error, checked on its message only in tests/trainer/test_checkpoint.py);
- the driver killed under ``trainer.async_rollout`` (its generation in flight is not saved;
  the resumed run draws those prompts again, tests/trainer/test_checkpoint.py's exactness
  check covers the synchronous mode only).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.trainer.test_runtime import DIGITS

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

REPO = Path(__file__).resolve().parents[2]

JOB = [
    "trainer.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=12", "learner.micro_batch_size=8",
    "learner.lr=1e-3", "learner.ranks=2", "learner.zero_stage=2", "rollout.workers=1", "reward.mode=local",
    f"reward.fns=[{DIGITS}]", "data.eval=null", "logger.backends=[jsonl]", "logger.forking_every=0",
    "logger.samples_every=0", "trainer.total_steps=3", "trainer.save_every=1", "trainer.seed=0",
]
COMPARED = ("actor/pg_loss", "actor/grad_norm", "entropy/mean", "reward/mean", "response_length/mean")

HANG_S = 120.0
"""How long a hung generation sleeps: 12 × the tests' ``rollout.call_timeout_s`` (10 s), so that
a run without hang detection fails on its assertions in bounded time instead of never ending."""
CALL_TIMEOUT_S = 10
"""``rollout.call_timeout_s`` of the hang tests: a generation of this job took 0.04-0.07 s on 2
busy cores (load 5), over 100 × below it."""
ACTOR_EXIT_S = 30.0
"""How long the actors and Ray's core processes (raylet, GCS) of a killed driver may take to
exit: they share its fate through PR_SET_PDEATHSIG and their socket to the raylet (~2 s here)."""
AGENT_EXIT_S = 150.0
"""The same for Ray's two agent processes (DashboardAgent, RuntimeEnvAgent): before exiting
they report the raylet's death to the dead GCS with a 60 s RPC timeout (ray 2.60,
``ray/_private/process_watcher.py: report_raylet_error_logs`` →
``utils.publish_error_to_driver(..., 60)``), ~80 s in all here."""
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


# ---- helpers ------------------------------------------------------------------------------
def train(model_dir, out: Path, *extra: str) -> tuple[int, str, str]:
    """``entropo train`` of :data:`JOB` in this process (the session's Ray); (exit code, stdout, stderr)."""
    from entropo.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["train", f"model.path={model_dir}", f"trainer.output_dir={out}", *JOB, *extra])
    return rc, stdout.getvalue(), stderr.getvalue()


def one_line_error(err: str) -> str:
    """The error of a run that stopped: exactly one line on stderr, ``entropo: error: ...``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("entropo: error: "), err
    return lines[0].removeprefix("entropo: error: ")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_equal_to_reference(rows: list[dict], reference: list[dict]) -> None:
    """One line per step 1..3, each equal to the uninterrupted run's within 1e-4."""
    assert [r["step"] for r in rows] == [r["step"] for r in reference] == [1, 2, 3]
    for got, want in zip(rows, reference):
        for key in COMPARED:
            assert got[key] == pytest.approx(want[key], abs=1e-4), (got["step"], key)
    assert all(r["actor/grad_norm"] > 0 for r in rows)  # every step moved the weights


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def alive(procs: list[dict]) -> list[dict]:
    """The recorded processes still running (same pid and creation time, not a zombie)."""
    out = []
    for p in procs:
        try:
            proc = psutil.Process(p["pid"])
            if abs(proc.create_time() - p["created"]) < 1e-3 and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(procs: list[dict], within_s: float, since: float) -> list[dict]:
    """Wait until none of ``procs`` runs or ``within_s`` after ``since``; those left."""
    while (left := alive(procs)) and time.monotonic() < since + within_s:
        time.sleep(0.5)
    return left


def kill_driver(model_dir, out: Path, moment: str, step: int, *extra: str) -> tuple[str, list[dict], float]:
    """``entropo train`` of :data:`JOB` as a process that SIGKILLs itself at ``moment`` of ``step``
    (tests/trainer/kill_driver.py); its stdout, its descendants when it died, and when."""
    procs_json = out.parent / f"{out.name}-{moment}-procs.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)  # its own local Ray instance, as `entropo train` starts it
    proc = subprocess.run(
        [sys.executable, "-m", "tests.trainer.kill_driver", moment, str(step), str(procs_json),
         f"model.path={model_dir}", f"trainer.output_dir={out}", *JOB, *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    died = time.monotonic()
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    procs = json.loads(procs_json.read_text())
    assert any(p["name"] == "raylet" for p in procs) and any("LearnerRank" in p["name"] for p in procs), procs
    KILLED.append((procs, died))
    return proc.stdout, procs, died


KILLED: list[tuple[list[dict], float]] = []
"""The descendants of each driver killed in this module, and when it died."""


# ---- the uninterrupted run ------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(ray_session, tiny_model_dir, tmp_path_factory) -> tuple[list[dict], int]:
    """Per-step metrics of :data:`JOB` without a fault, and the bytes of one of its checkpoints."""
    from entropo.cli import main

    out = tmp_path_factory.mktemp("reference")
    assert main(["train", f"model.path={tiny_model_dir}", f"trainer.output_dir={out}", *JOB]) == 0
    saved = out / "checkpoints" / "step_000003"
    size = sum(f.stat().st_size for f in saved.rglob("*") if f.is_file())
    return metrics(out), size


def test_uninterrupted_run(reference):
    """No fault (the reference run): 3 steps, a checkpoint after each, every step moving the weights."""
    steps, ckpt_bytes = reference
    assert [r["step"] for r in steps] == [1, 2, 3] and all(r["actor/grad_norm"] > 0 for r in steps)
    assert ckpt_bytes > 0


# ---- a learner rank dies --------------------------------------------------------------------
def test_learner_rank_killed_mid_update(reference, tiny_model_dir, tmp_path, monkeypatch):
    """kill -9 of a learner rank mid-update: the run stops in one line naming the rank, the step and trainer.resume=auto (exit 2); resume=auto continues from the last complete checkpoint with no step lost or repeated."""
    import entropo.trainer.cluster as cluster
    from entropo.trainer.learner import LearnerRank

    class DyingLearner(LearnerRank):
        """Rank 1 SIGKILLs itself as its step-2 update starts, while rank 0 is in that update
        (defined in the test: Ray pickles it by value into the actor)."""

        def update(self, minibatches, ctx, fused=False):
            if self.rank == 1 and ctx.step == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().update(minibatches, ctx, fused)

    monkeypatch.setattr(cluster, "LearnerRank", DyingLearner)
    rc, _, err = train(tiny_model_dir, tmp_path)
    monkeypatch.undo()
    assert rc == 2
    line = one_line_error(err)
    assert line.startswith("step 2: learner rank 1 (pid "), line
    assert "died during the update" in line
    assert line.endswith(f"resume with trainer.resume=auto (from the last complete checkpoint, "
                         f"{tmp_path / 'checkpoints' / 'step_000001'})"), line
    assert [r["step"] for r in metrics(tmp_path)] == [1]
    assert checkpoint_names(tmp_path) == ["step_000001"]

    rc, out, err = train(tiny_model_dir, tmp_path, "trainer.resume=auto")
    assert rc == 0, err
    assert f"[resume] continuing from {tmp_path / 'checkpoints' / 'step_000001'} (step 1)" in out
    assert_equal_to_reference(metrics(tmp_path), reference[0])


# ---- the driver dies --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def killed_at_commit(ray_session, tiny_model_dir, tmp_path_factory):
    """A run whose driver died between the temporary write of step 2's checkpoint and its commit:
    (run directory, the driver's descendants, when it died)."""
    out = tmp_path_factory.mktemp("driver") / "run"
    _, procs, died = kill_driver(tiny_model_dir, out, "commit", 2)
    return out, procs, died


def test_driver_killed_between_checkpoint_write_and_commit(killed_at_commit):
    """kill -9 of the driver between a checkpoint's temporary write and its commit: the previous checkpoint stays the newest complete one, the partial one is left unmarked, and its actors die with it."""
    out, procs, died = killed_at_commit
    ckpts = out / "checkpoints"
    assert checkpoint_names(out) == ["step_000001", "step_000002.tmp"]
    assert (ckpts / "step_000001" / "COMPLETE").is_file()
    partial = ckpts / "step_000002.tmp"
    assert not (partial / "COMPLETE").exists()
    # everything but the marker was written: the learner state, the export, the controller state
    assert (partial / "controller.pt").is_file() and (partial / "hf" / "config.json").is_file()
    assert (partial / "learner" / "latest").is_file()
    assert [r["step"] for r in metrics(out)] == [1, 2]  # step 2 was logged before its checkpoint

    from entropo.trainer.checkpoint import Checkpoints

    assert Checkpoints(ckpts).resolve("auto") == ckpts / "step_000001"
    core = [p for p in procs if p["name"] not in RAY_AGENTS]
    assert not wait_gone(core, ACTOR_EXIT_S, died), f"outlived the driver: {alive(core)}"


def test_driver_killed_mid_step(killed_at_commit, reference, tiny_model_dir):
    """kill -9 of the driver mid-step, in a run resumed after an earlier kill: resume=auto uses the newest complete checkpoint, says in one line that it ignores the partial one and leaves it on disk, and the steps after resume equal an uninterrupted run's."""
    out = killed_at_commit[0]
    ckpts = out / "checkpoints"
    partial = ckpts / "step_000002.tmp"
    written = {p: p.stat().st_mtime_ns for p in partial.rglob("*")}
    # the resumed run dies in step 2, after its rollout and before its update
    stdout, procs, died = kill_driver(tiny_model_dir, out, "update", 2, "trainer.resume=auto")
    assert f"[resume] continuing from {ckpts / 'step_000001'} (step 1)" in stdout, stdout
    ignored = [line for line in stdout.splitlines() if line.startswith("[resume] ignoring")]
    assert ignored == [f"[resume] ignoring {partial}: an interrupted save (no COMPLETE marker), left on disk "
                       f"for inspection until a save of the same step replaces it"], stdout
    assert {p: p.stat().st_mtime_ns for p in partial.rglob("*")} == written  # left as it was
    assert [r["step"] for r in metrics(out)] == [1]  # step 2's line of the first run is dropped
    core = [p for p in procs if p["name"] not in RAY_AGENTS]
    assert not wait_gone(core, ACTOR_EXIT_S, died), f"outlived the driver: {alive(core)}"

    # the third run resumes cleanly (the session's Ray instance) and finishes the job
    rc, stdout, err = train(tiny_model_dir, out, "trainer.resume=auto")
    assert rc == 0, err
    assert f"[resume] continuing from {ckpts / 'step_000001'} (step 1)" in stdout
    assert_equal_to_reference(metrics(out), reference[0])
    assert checkpoint_names(out) == ["step_000002", "step_000003"]  # the partial save replaced


# ---- a rollout worker hangs ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def hung_run(ray_session, tiny_model_dir, tmp_path_factory):
    """A run whose rollout worker hangs in step 2's generation once (it answers after its
    restart) and in step 3's twice: (run directory, exit code, stdout, stderr, seconds)."""
    import entropo.trainer.cluster as cluster
    from entropo.trainer.rollout import RolloutWorker

    tmp = tmp_path_factory.mktemp("hung")
    once = tmp / "hung-once"

    class HangingWorker(RolloutWorker):
        """Sleeps :data:`HANG_S` in the generation with step 1's weights (step 2's) of its first
        incarnation, which touches ``once``, and in that with step 2's weights (step 3's) of
        every incarnation (defined here: Ray pickles it by value into the actor)."""

        def generate(self, prompts, params):
            version = self.engine.weight_version
            if version == 2 or (version == 1 and not once.exists()):
                once.touch()
                time.sleep(HANG_S)
            return super().generate(prompts, params)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cluster, "RolloutWorker", HangingWorker)
        started = time.monotonic()
        rc, out, err = train(tiny_model_dir, tmp / "run", f"rollout.call_timeout_s={CALL_TIMEOUT_S}")
    return tmp / "run", rc, out, err, time.monotonic() - started


def test_rollout_worker_hangs_once(hung_run, reference):
    """A rollout worker that hangs without dying, once: killed after rollout.call_timeout_s, recreated, its generation retried; the step equals the uninterrupted run's."""
    run_dir, _, out, _, _ = hung_run
    assert ("[cluster] WARNING: rollout worker 0 lost (no answer to the generation within rollout.call_timeout_s="
            f"{CALL_TIMEOUT_S} s); recreating it and rebuilding the weight-sync group (restart 1 of at most 3)") in out
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["timing/rollout"] < HANG_S  # the hung call was cut short, not waited out
    assert [r["rollout/worker_restarts"] for r in rows] == [0, 1]
    assert [r["rollout/weight_version"] for r in rows] == [0, 1]  # the new worker got step 1's weights
    for got, want in zip(rows, reference[0]):  # the retry used the lost call's seeds
        for key in COMPARED:
            assert got[key] == pytest.approx(want[key], abs=1e-4), (got["step"], key)


def test_rollout_worker_hangs_again_after_its_restart(hung_run):
    """A rollout worker that hangs again on the retry after its restart: the run stops in one line naming the worker and rollout.call_timeout_s (exit 2)."""
    run_dir, rc, out, err, seconds = hung_run
    assert rc == 2
    line = one_line_error(err)
    assert line == (f"step 3: rollout worker 0 did not answer the generation within rollout.call_timeout_s="
                    f"{CALL_TIMEOUT_S} s, twice (once more after it was killed and recreated); raise "
                    f"rollout.call_timeout_s if a generation can take that long; resume with trainer.resume=auto "
                    f"(from the last complete checkpoint, {run_dir / 'checkpoints' / 'step_000002'})"), line
    assert out.count("rollout worker 0 lost (no answer to the generation") == 2  # step 2's, step 3's first
    assert seconds < 2 * HANG_S  # three hangs, none waited out (that alone would take 3 × HANG_S)
    assert [r["step"] for r in metrics(run_dir)] == [1, 2]


def test_reward_worker_hangs(ray_session):
    """A reward call on a Ray worker that hangs without dying (blocked, no CPU): its process is killed after reward.timeout_s (the worker stays, reward.isolation=fork); its sample gets reward.fallback_score and the pool goes on."""
    from entropo.rewards import RewardManager
    from tests.rewards.helpers import reward_cfg, sample

    flaky = f"{REPO / 'tests' / 'rewards' / 'custom' / 'native_style.py'}:flaky"
    cfg = reward_cfg([flaky], mode="ray", workers=2, timeout_s=2.0, fallback_score=-1.0, worker_cpus=0.5)
    with RewardManager(cfg) as rm:
        started = time.monotonic()
        res = rm.score([sample("ok"), sample("hang"), sample("ok"), sample("ok")])
        took = time.monotonic() - started
        assert res.rewards.tolist() == [1.0, -1.0, 1.0, 1.0]
        assert res.metrics["reward/errors/timeout"] == 1 and res.metrics["reward/workers_replaced"] >= 1
        assert took < cfg.timeout_s + 30  # the limit, plus slack for a loaded machine
        again = rm.score([sample("ok"), sample("ok")])
        assert again.rewards.tolist() == [1.0, 1.0] and again.metrics["reward/errors"] == 0


# ---- the disk fills ---------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted at ``tmp_path/disk`` (sized by the test), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root, where a failed mount fails the test)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = []

    def mount(size: int) -> Path:
        opts = f"remount,size={size}" if mounted else f"size={size}"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(disk)], capture_output=True, text=True)
        assert done.returncode == 0, f"mount -t tmpfs -o {opts} failed as root: {done.stderr.strip()}"
        mounted.append(size)
        return disk

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_disk_full_while_writing_a_checkpoint(reference, tiny_model_dir, small_disk):
    """Disk full while writing a checkpoint: the run stops in one line naming trainer.output_dir and the full disk (exit 2); the partial save is removed, the previous checkpoint is intact, and resume=auto from it, once there is room, equals an uninterrupted run."""
    steps, ckpt_bytes = reference
    # room for the first checkpoint and the small files, not for a second checkpoint
    disk = small_disk(int(1.5 * ckpt_bytes))
    out = disk / "run"
    rc, _, err = train(tiny_model_dir, out)
    assert rc == 2
    line = one_line_error(err)
    partial = out / "checkpoints" / "step_000002.tmp"
    assert line.startswith(f"trainer.output_dir: the checkpoint of step 2 could not be written: the disk holding "
                           f"{out} is full ("), line
    assert f"its partial save was removed ({partial}); the last complete checkpoint, " \
           f"{out / 'checkpoints' / 'step_000001'}, is intact; free space on it or lower " \
           "trainer.keep_checkpoints, then resume with trainer.resume=auto" in line, line
    assert checkpoint_names(out) == ["step_000001"]
    assert [r["step"] for r in metrics(out)] == [1, 2]

    small_disk(64 << 20)  # space freed
    rc, stdout, err = train(tiny_model_dir, out, "trainer.resume=auto")
    assert rc == 0, err
    assert f"[resume] continuing from {out / 'checkpoints' / 'step_000001'} (step 1)" in stdout
    assert_equal_to_reference(metrics(out), steps)


# ---- last: what outlives a killed driver ------------------------------------------------------
def test_no_process_of_a_killed_driver_outlives_it(killed_at_commit):
    """kill -9 of the driver: no process of its local Ray instance outlives it (Ray's agents exit about a minute later, after reporting to the dead GCS)."""
    # last in the module, so that the agents' minute has passed during the other tests
    assert KILLED
    for procs, died in KILLED:
        left = wait_gone(procs, AGENT_EXIT_S, died)
        assert not left, f"outlived the driver by {time.monotonic() - died:.0f} s: {left}"
