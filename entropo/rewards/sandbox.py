"""Run untrusted code (model-written programs) in a limited subprocess.

One call of :func:`run` starts one process (:mod:`entropo.rewards._sandbox_runner`, run with
``python -I``) in a fresh temporary directory, sends it the code and the test cases, reads
one record per case back on a pipe, then kills the whole process tree and deletes the
directory. The parent compares outputs with the expected ones itself
(:mod:`entropo.rewards.code_exec`); expected outputs never enter the sandbox.

What is guaranteed, and by what (be precise about this when you rely on it). Each item is
attacked by a hostile program in ``tests/rewards/test_sandbox_faults.py``.

Kernel-enforced, always (Linux):
- CPU time (``RLIMIT_CPU``), address space (``RLIMIT_AS``: allocations past it fail with
  ``MemoryError``), file size (``RLIMIT_FSIZE``: also bounds what the program writes to
  stderr, which the parent keeps in a temporary file), open files (``RLIMIT_NOFILE``), no
  core dumps.
- Wall-clock limit: past ``timeout_s`` the process group (and, with namespaces, the whole PID
  namespace) is killed with SIGKILL.
- seccomp filter (x86_64 and aarch64; ``seccomp=True``, which ``plain`` mode requires): the
  syscalls ``socket`` and ``socketpair`` (so no network and no unix sockets, e.g. Ray's),
  ``fork``/``vfork``/non-thread ``clone`` (no child processes, so no fork bombs and none that
  outlives the run; threads work), ``execve``, ``ptrace``, every way to signal another
  process (``kill``, ``tkill``, ``rt_sigqueueinfo``, ``rt_tgsigqueueinfo``,
  ``pidfd_send_signal``; ``tgkill`` only to itself), ``pidfd_getfd``, ``mount``, ``unshare``,
  ``setns``, ``bpf``, ``io_uring_setup`` and ``process_vm_*`` fail with EPERM.

Kernel-enforced where the kernel has Landlock (Linux 5.13+, enabled; both modes;
``SandboxResult.landlock`` is the ABI version used, 0 without it):
- file-system changes only beneath the working directory (EACCES elsewhere);
- file reads anywhere except under ``/proc``, where only the process's own entries and
  system-wide figures are readable: not ``/proc/<pid>/environ`` of the trainer (its secrets)
  or of any other process (another procfs mounted elsewhere, e.g. a container's
  ``/host/proc``, stays readable);
- no ptrace-mode access to processes outside the sandbox (``/proc/<pid>/mem``, ``exe``,
  ``fd/*``); with ABI 4+ no TCP bind or connect; with ABI 6+ no signal and no abstract unix
  socket to a process outside the sandbox.

Kernel-enforced when user namespaces work (``isolation="namespace"``, probed once per
process; ``auto`` falls back to ``plain`` with a warning):
- ``unshare --user --map-root-user --net --pid --mount``: a network namespace with no
  interfaces; a PID namespace (other processes are invisible; at most ``pid_max`` = 301
  processes, the kernel minimum, even if seccomp is off); a mount namespace in which every
  mount is remounted read-only, nodev, nosuid, and the working directory is a private tmpfs
  of ``tmpfs_mb`` (so writes outside it fail with EROFS and vanish with the namespace).
  Note the process runs as the caller's uid mapped to root in the namespace.

Enforced by the parent, always:
- The program's environment is ``PATH`` and ``LANG`` only: none of the trainer's variables
  (API keys) reach it.
- The program runs in the runner's process, so it can write to the result pipe too. The
  parent reads at most one record of ``SandboxLimits.max_record_bytes`` per case and
  ``STRAY_LINES`` lines more (past that the run is killed, status ``overflow``: the parent's
  memory and time stay bounded); it takes the setup, setup-error and compile-error line only
  as the first line, written before the program starts, and keeps only well-formed case
  records, in order, one per case. A forged record can claim a pass only of a case that the
  parent cannot check itself (an assert other than ``X == literal``: see
  :mod:`entropo.rewards.code_exec`).

By the runner, before the program's code can interfere with the case's record:
- An exit (``sys.exit``, ``os._exit``) before or during a case fails it, except a stdio
  program's ``sys.exit(0)``, after which its output is graded.
- Output: the runner keeps ``max_output_bytes`` of a case's stdout and drops the rest as it
  is written (a stdio case with more fails); stdout written to fd 1 directly goes to
  ``/dev/null``.

Interpreter-level only (a guard against accidents and naive code, NOT a security boundary:
code can reach the runner's own objects and bypass it), ``audit_hook=True``:
- a ``sys.addaudithook`` hook refusing sockets, subprocesses, ``os.fork``/``exec``/``kill``,
  ``ctypes``, ``mmap`` and writes/renames/removals outside the working directory. In
  ``plain`` mode without Landlock this hook is the only guard against writes outside the
  working directory and reads of ``/proc/<pid>/environ``; ``RLIMIT_NPROC`` only binds for
  non-root users.

Not provided: GPU isolation; limits on file reads outside ``/proc`` (a secret file readable
by the trainer's user is readable by the program, in both modes); a pids cgroup; a disk quota
in ``plain`` mode (the working directory is on the real disk, bounded per file by
``RLIMIT_FSIZE`` and in total only by the wall-clock limit); in ``plain`` mode without
Landlock, the limits on writes and on reads of ``/proc`` (the audit hook alone guards them,
and a program can bypass it).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

RUNNER = Path(__file__).with_name("_sandbox_runner.py")
ISOLATIONS = ("auto", "namespace", "plain")
PID_MAX_MIN = 301
"""The smallest ``pid_max`` the kernel accepts for a PID namespace (RESERVED_PIDS + 1)."""
KILL_GRACE_S = 1.0
"""Seconds added to ``timeout_s`` for interpreter start-up and namespace set-up."""
RECORD_BYTES_PER_OUTPUT_BYTE = 8
"""A record carries up to ``max_output_bytes`` of output, JSON-escaped: at most 6 bytes per byte
(``\\u00XX``), plus the rest of the record."""
RECORD_BYTES_EXTRA = 4096
"""Bytes of a record besides its output (keys, index, an error message of at most 200 characters)."""
STRAY_LINES = 32
"""Lines a program may write to the result pipe (it can) before its run is stopped as ``overflow``;
each line costs the parent a JSON parse."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run.

    The fields without a default are ``reward.code``'s (``CodeConfig.limits``), whose
    defaults are the only ones; the rest are the sandbox's own.
    """

    timeout_s: float
    """Wall-clock limit of the whole run (all cases), after start-up; then SIGKILL."""

    case_timeout_s: float
    """Wall-clock limit of one test case (SIGALRM inside the sandbox)."""

    cpu_s: int
    """RLIMIT_CPU, CPU seconds of the process."""

    memory_mb: int
    """RLIMIT_AS, address space in MiB (Python itself needs about 30)."""

    isolation: str
    """auto (namespace when it works, else plain), namespace (required), plain."""

    seccomp: bool
    """Install the seccomp filter (see the module docstring)."""

    audit_hook: bool
    """Install the interpreter-level audit hook (see the module docstring)."""

    fsize_mb: int = 16
    """RLIMIT_FSIZE, the largest file it may write, in MiB."""

    tmpfs_mb: int = 64
    """Size of the private working directory (namespace mode), in MiB."""

    nproc: int = 64
    """RLIMIT_NPROC (only binds for non-root users; seccomp and pid_max bound processes too)."""

    nofile: int = 64
    """RLIMIT_NOFILE, open file descriptors."""

    max_output_bytes: int = 1 << 20
    """Stdout kept per case; more fails a stdio case (the rest is dropped as it is written). A
    record (stdout, or a call's result, JSON) longer than ``RECORD_BYTES_PER_OUTPUT_BYTE``
    times this fails its case too."""

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation: '{self.isolation}' is not one of {', '.join(ISOLATIONS)}")
        for name in ("timeout_s", "case_timeout_s", "cpu_s", "memory_mb", "fsize_mb", "tmpfs_mb", "nproc", "nofile",
                     "max_output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")

    @property
    def max_record_bytes(self) -> int:
        """The longest record line the parent reads (the runner replaces a longer one by an error)."""
        return RECORD_BYTES_PER_OUTPUT_BYTE * self.max_output_bytes + RECORD_BYTES_EXTRA


@dataclass
class SandboxResult:
    """What came back from one run.

    Attributes:
        records: one dict per finished case, in order (``error``, and ``stdout`` or
            ``result``); cases after a kill are missing.
        status: ``ok`` (all cases ran), ``timeout`` (killed at ``timeout_s``), ``crashed``
            (exited early, e.g. RLIMIT_CPU), ``overflow`` (wrote more on the result pipe than
            its records can take: killed), ``compile_error`` or ``setup_error``.
        isolation: ``namespace`` or ``plain``.
        landlock: the Landlock ABI version the run was confined with; 0 when the kernel has none.
        detail: an error message, or the tail of stderr, for logs.
    """

    records: list[dict] = field(default_factory=list)
    status: str = "ok"
    isolation: str = "plain"
    landlock: int = 0
    detail: str = ""


_PROBE_LOCK = threading.Lock()
_NAMESPACE_OK: bool | None = None
PROBE_LIMITS = SandboxLimits(timeout_s=20, case_timeout_s=4.0, cpu_s=10, memory_mb=512, isolation="namespace",
                             seccomp=True, audit_hook=True)
"""Limits of the namespace probe, an empty program run once per process: its own, not those of
the run that triggers it (``reward.code``'s)."""
_UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
            "--mount", "--mount-proc"]


def namespaces_available() -> bool:
    """Whether namespace isolation works here (probed once per process with a no-op run)."""
    global _NAMESPACE_OK
    with _PROBE_LOCK:
        if _NAMESPACE_OK is None:
            if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
                _NAMESPACE_OK = False
            else:
                res = _run_once("", "assert", [], None, PROBE_LIMITS, "namespace")
                _NAMESPACE_OK = res.status == "ok"
                if not _NAMESPACE_OK:
                    warnings.warn(f"sandbox: user namespaces unavailable ({res.detail.strip()[-300:]}); "
                                  "running code with rlimits, seccomp and the audit hook only", stacklevel=2)
        return _NAMESPACE_OK


def resolve_isolation(limits: SandboxLimits) -> str:
    """The isolation a run with these limits uses; ``namespace`` unavailable, or ``plain``
    without seccomp, raises."""
    if limits.isolation == "plain":
        isolation = "plain"
    else:
        ok = namespaces_available()
        if limits.isolation == "namespace" and not ok:
            raise RuntimeError("sandbox isolation='namespace' was asked for, but user namespaces do not work here")
        isolation = "namespace" if ok else "plain"
    if isolation == "plain" and not limits.seccomp:
        # Only the seccomp filter stops child processes in plain mode: RLIMIT_NPROC does not bind
        # root, and a child that calls setsid() leaves the process group that the kill reaches.
        raise RuntimeError("sandbox isolation 'plain' needs seccomp=True: without it a program can fork "
                           "without bound and leave processes that outlive the run")
    return isolation


def run(code: str, kind: str, cases: list[dict], fn_name: str | None, limits: SandboxLimits) -> SandboxResult:
    """Run ``code`` against test cases in the sandbox.

    Args:
        code: Python source.
        kind: ``stdio`` (each case ``{"input": str}``: the program runs as ``__main__`` with
            that stdin), ``call`` (``{"args": [...]}``: call ``fn_name`` — or
            ``Solution().fn_name`` — with them) or ``assert`` (``{"src": "assert ..."}``:
            run after the code, in its namespace).
        cases: the test cases (inputs only; expected outputs stay with the caller).
        fn_name: the function to call for ``kind="call"``.
        limits: the limits (``reward.code``'s: ``CodeConfig.limits``).

    Returns:
        A :class:`SandboxResult`.
    """
    return _run_once(code, kind, cases, fn_name, limits, resolve_isolation(limits))


def _run_once(code, kind, cases, fn_name, limits: SandboxLimits, isolation: str) -> SandboxResult:
    workdir = tempfile.mkdtemp(prefix="entropo-sbx-")
    job = {
        "code": code, "kind": kind, "cases": cases, "fn_name": fn_name, "workdir": workdir,
        "seccomp": limits.seccomp, "audit_hook": limits.audit_hook,
        "limits": {"cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "fsize_mb": limits.fsize_mb,
                   "nproc": limits.nproc, "nofile": limits.nofile, "case_timeout_s": limits.case_timeout_s,
                   "tmpfs_mb": limits.tmpfs_mb, "pid_max": PID_MAX_MIN, "max_output_bytes": limits.max_output_bytes,
                   "max_record_bytes": limits.max_record_bytes},
    }
    with tempfile.TemporaryFile() as err:  # the runner's stderr, for the log when it fails
        return _spawn(job, isolation, limits, err)


def _spawn(job: dict, isolation: str, limits: SandboxLimits, err) -> SandboxResult:
    workdir = job["workdir"]
    r, w = os.pipe()
    cmd = [sys.executable, "-I", str(RUNNER), str(w), isolation]
    if isolation == "namespace":
        cmd = _UNSHARE + cmd
    result = SandboxResult(isolation=isolation)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                pass_fds=(w,), cwd=workdir, start_new_session=True,
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"})
    except OSError as e:
        os.close(r)
        os.close(w)
        shutil.rmtree(workdir, ignore_errors=True)
        return SandboxResult(status="setup_error", isolation=isolation, detail=str(e))
    os.close(w)
    try:
        with contextlib.suppress(BrokenPipeError):  # the runner died before reading its job
            proc.stdin.write(json.dumps(job).encode())
            proc.stdin.close()
        result.status = _collect(r, result, time.monotonic() + limits.timeout_s + KILL_GRACE_S,
                                 len(job["cases"]), limits.max_record_bytes)
    finally:
        _kill(proc)
        os.close(r)
        if result.status != "ok":
            err.seek(0, os.SEEK_END)
            err.seek(max(0, err.tell() - 2000))
            result.detail = (result.detail + "\n" + err.read().decode("utf-8", "replace")).strip()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _collect(fd: int, result: SandboxResult, deadline: float, n_cases: int, max_record: int) -> str:
    # The program can write to the pipe too (it runs in the runner's process and knows the fd).
    # So the bytes and lines read are bounded (the parent's memory and time must not depend on
    # the program), the first line (setup, setup error or compile error) is the only one
    # written before the program starts, and case records must be well-formed and in order.
    budget = (n_cases + 2) * (max_record + 1)  # the first line, one record per case, done
    max_lines = n_cases + 2 + STRAY_LINES
    pending: list[bytes] = []  # the unfinished last line, in pieces: no quadratic joins
    pending_len = n_lines = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return "timeout"
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return "crashed"
        budget -= len(chunk)
        *lines, tail = chunk.split(b"\n")
        if lines:
            lines[0] = b"".join([*pending, lines[0]])
            pending, pending_len = [], 0
        pending.append(tail)
        pending_len += len(tail)
        for line in lines:
            n_lines += 1
            if len(line) > max_record or n_lines > max_lines:
                result.detail = (f"line {n_lines} on the result pipe, of {len(line)} bytes (at most {max_lines} "
                                 f"lines of at most {max_record} bytes)")
                return "overflow"
            status = _take(line, n_lines, result, n_cases)
            if status is not None:
                return status
        if pending_len > max_record:
            result.detail = f"a line of over {max_record} bytes on the result pipe"
            return "overflow"
        if budget < 0:
            result.detail = f"more bytes on the result pipe than {n_cases} records of at most {max_record}"
            return "overflow"


def _take(line: bytes, n_line: int, result: SandboxResult, n_cases: int) -> str | None:
    """Take one line of the result pipe; the run's status when it ends the run."""
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):  # not a record; RecursionError: nested too deep
        return None
    if not isinstance(rec, dict):
        return None
    if n_line == 1 and rec.get("setup") == "ok":
        result.landlock = rec["landlock"] if type(rec.get("landlock")) is int else 0
    elif n_line == 1 and isinstance(rec.get("setup_error"), str):
        result.detail = rec["setup_error"]
        return "setup_error"
    elif n_line == 1 and isinstance(rec.get("compile_error"), str):
        result.detail = rec["compile_error"]
        return "compile_error"
    elif rec.get("done") is True:
        return "ok"
    elif (type(rec.get("i")) is int and rec["i"] == len(result.records) < n_cases
          and (rec.get("error") is None or isinstance(rec["error"], str))
          and isinstance(rec.get("stdout", ""), str)):
        result.records.append(rec)
    return None


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the session leader's group; --kill-child takes the PID ns
    with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL cannot be ignored; a guard only
        proc.wait(timeout=5)
