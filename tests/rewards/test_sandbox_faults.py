"""The code sandbox attacked as a hostile model would: one test per fault (issue 17, item 8).

Each test runs its hostile programs, then a correct one, in a fresh *trainer*: a Python
process that loads only ``entropo/rewards/sandbox.py`` and calls :func:`sandbox.run` the way
the ``code`` reward does in a reward worker. It is a separate process so that a program that
kills its parent cannot take pytest down, and so that its memory and environment (with
secrets in it) are its own. In both isolation modes each test asserts:

- contained: no effect outside the sandbox (files, processes, the trainer, the network, the
  trainer's secrets); a program that gets through says ``ESCAPED`` (:data:`PRELUDE`);
- no false pass: every case fails when graded as the ``code`` reward grades it
  (:func:`code_exec.grade`), for a reason (a run status, a case error or a wrong output);
- the sandbox keeps working: the correct program, run next by the same trainer, passes;
- bounded time: each run ends within ``timeout_s + KILL_GRACE_S + GRACE_S``.

Every hostile program first disables the interpreter-level audit hook (:data:`PRELUDE`; the
hook is no security boundary, and ``test_bypass_reaches_the_kernel`` checks that the bypass
works), so what is tested is the kernel-enforced layers and the parent's own checks.

For a table of (fault, outcome, seconds) from pytest's junit xml: the first line of each
test's docstring names its fault, and each test records the junit properties ``fault`` and,
per program, ``<program>`` = ``<status>; <reason>; <seconds> s``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import pytest

from entropo.rewards import _sandbox_runner, code_exec, sandbox
from entropo.rewards.code_exec import grade, parse_tests
from entropo.rewards.configs import CodeConfig

FAST = dict(timeout_s=3.0, case_timeout_s=1.0, cpu_s=3, memory_mb=256, seccomp=True, audit_hook=True)
GRACE_S = 2.0
"""Seconds a run may take beyond ``timeout_s + KILL_GRACE_S``: interpreter and namespace
start-up before the deadline starts, and the kill after it, on a busy 2-core machine."""
TRAINER_PEAK_RSS_MB = 100
"""The trainer's peak resident memory after any attack (it starts at about 20 MiB; a record
is at most ``max_record_bytes`` = 8 MiB + 4 KiB with these limits)."""
MODES = ["namespace", "plain"]
NAMESPACES = sandbox.namespaces_available()
LANDLOCK = _sandbox_runner.landlock_abi()
RUNNER = str(sandbox.RUNNER).encode()
TOKEN = uuid.uuid4().hex[:12]
SECRETS = {"WANDB_API_KEY": f"wandb-secret-{TOKEN}", "AWS_SECRET_ACCESS_KEY": f"aws-secret-{TOKEN}"}

ADD_FN = "def add(a, b):\n    return a + b\n"
ASSERTS = json.dumps(["assert add(1, 2) == 3", "assert add(10, -3) == 7"])  # split: the parent checks
NONLITERAL = json.dumps(["assert add(1, 2) > 2", "assert add(10, -3) < 8"])  # run whole: the sandbox's word
CALL = json.dumps({"fn_name": "add", "inputs": [[1, 2], [10, -3]], "outputs": [3, 7]})
STDIO = json.dumps({"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7\n"]})

PRELUDE = """\
import __main__, os, os.path, sys
__main__._BLOCKED_EVENTS.clear()  # the audit hook's lists live in the runner's module
__main__._PATH_EVENTS.clear()
os.path.realpath = lambda path, *args, **kwargs: os.getcwd()  # every path looks inside
FD = int(sys.argv[1])  # the result pipe


def escaped(what):
    print("ESCAPED: " + what)
    raise SystemExit("ESCAPED: " + what)
"""
"""Disables the audit hook; ``escaped(what)`` reports an attack that got through."""

TRAINER = r"""
import dataclasses, importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("entropo_sandbox", sys.argv[1])
sandbox = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = sandbox  # dataclasses look their module up
spec.loader.exec_module(sandbox)
sandbox.namespaces_available()  # probed once per process, at start-up as the code reward does
def peak_rss_mb():  # VmHWM, not ru_maxrss: that one keeps the peak of the process before exec (pytest)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
for line in sys.stdin:
    job = json.loads(line)
    start = time.monotonic()
    res = sandbox.run(job["code"], job["kind"], job["cases"], job["fn_name"], sandbox.SandboxLimits(**job["limits"]))
    print(json.dumps(dict(dataclasses.asdict(res), seconds=time.monotonic() - start, peak_rss_mb=peak_rss_mb())),
          flush=True)
"""


@dataclass(frozen=True)
class Program:
    code: str
    ground_truth: str = ASSERTS


@pytest.fixture(autouse=True)
def _fault(request):
    request.node.user_properties.append(("fault", request.function.__doc__.strip().splitlines()[0]))


@pytest.fixture
def record(request):
    """Adds a junit property (pytest's ``record_property`` warns under junit_family xunit2, yet writes it)."""
    return lambda name, value: request.node.user_properties.append((name, value))


def _skip_unavailable(mode: str) -> None:
    if mode == "namespace" and not NAMESPACES:
        pytest.skip("user namespaces are not available here")


def _plain_needs_landlock(mode: str, what: str) -> None:
    if mode == "plain" and not LANDLOCK:
        pytest.xfail(f"documented limitation: in plain mode without Landlock, only the audit hook (which a "
                     f"program can bypass) guards {what}")


def _reason(tests: code_exec.Tests, run: dict) -> str:
    if all(grade(tests, run["records"])):
        return "passed"
    errors = [r["error"] for r in run["records"] if r.get("error")]
    if len(run["records"]) < len(tests.cases):
        return f"{len(tests.cases) - len(run['records'])} case(s) without a record ({run['detail'][:80]!r})"
    return errors[0][:80] if errors else "wrong output"


def _attack(mode: str, programs: dict[str, Program], record, env: dict | None = None,
            **limits) -> dict[str, dict]:
    """Run each program (after the prelude), then a correct one, in one trainer; check the
    common guarantees (module docstring); return the runs by name."""
    _skip_unavailable(mode)
    limits = dict(FAST, isolation=mode, **limits)
    named = {name: (PRELUDE + p.code, parse_tests(p.ground_truth)) for name, p in programs.items()}
    named["correct"] = (ADD_FN, parse_tests(ASSERTS))
    jobs = [json.dumps({"code": code, "kind": t.kind, "cases": t.cases, "fn_name": t.fn_name, "limits": limits})
            for code, t in named.values()]
    trainer = subprocess.run([sys.executable, "-c", TRAINER, sandbox.__file__],
                             input="\n".join(jobs) + "\n", capture_output=True, text=True, timeout=300,
                             env={**os.environ, **(env or {})}, start_new_session=True)
    assert trainer.returncode == 0, f"the trainer died (exit {trainer.returncode}): {trainer.stderr[-2000:]}"
    runs = dict(zip(named, (json.loads(line) for line in trainer.stdout.splitlines()), strict=True))
    bound = limits["timeout_s"] + sandbox.KILL_GRACE_S + GRACE_S
    for name, run in runs.items():
        tests = named[name][1]
        passed = grade(tests, run["records"])
        record(name, f"{run['status']}; {_reason(tests, run)}; {run['seconds']:.2f} s")
        assert run["seconds"] < bound, f"{name}: ran {run['seconds']:.1f} s, limit {bound} s"
        assert "ESCAPED" not in json.dumps(run), f"{name} got out: {run}"
        if name == "correct":
            assert run["status"] == "ok" and all(passed), f"the sandbox fails a correct program after the attacks: {run}"
        else:
            assert not any(passed), f"{name}: false pass: {run}"
    assert max(run["peak_rss_mb"] for run in runs.values()) < TRAINER_PEAK_RSS_MB
    return runs


def _errors(run: dict) -> list[str]:
    return [r["error"] or "" for r in run["records"]]


def _live_sandbox_processes() -> list[str]:
    """Processes (not zombies) running this checkout's sandbox runner."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile
            continue
        if RUNNER in cmdline and state != "Z":
            found.append(pid + " " + cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _assert_no_survivor() -> None:
    deadline = time.monotonic() + 2.0  # SIGKILLed processes may take a moment to leave /proc
    while (alive := _live_sandbox_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"processes outlived the run: {alive}"


def test_survivor_check_sees_a_live_runner():
    """Meta: the check that no process outlives a run does see a live one."""
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(sandbox.RUNNER)])
    try:
        deadline = time.monotonic() + 5
        while not (alive := _live_sandbox_processes()) and time.monotonic() < deadline:
            time.sleep(0.05)  # until it has exec'd
        assert [line.split()[0] for line in alive] == [str(decoy.pid)]
    finally:
        decoy.kill()
        decoy.wait()
    assert not _live_sandbox_processes()


@pytest.mark.parametrize("mode", MODES)
def test_bypass_reaches_the_kernel(mode, record):
    """Audit-hook bypass (the prelude of every attack) works: what stops the attacks is the kernel."""
    runs = _attack(mode, {
        "fork": Program("os.fork()\n"),
        "write": Program(f"open('/tmp/pwned_{TOKEN}_bypass', 'w')\n"),
    }, record)
    for name in ("fork", "write"):
        assert all("sandbox:" not in e for e in _errors(runs[name])), runs[name]  # the hook's message
    assert all("[Errno 1] Operation not permitted" in e for e in _errors(runs["fork"]))  # seccomp
    kernel_says = "Read-only file system" if mode == "namespace" else "Permission denied"  # EROFS / Landlock
    if mode == "plain" and not LANDLOCK:
        os.unlink(f"/tmp/pwned_{TOKEN}_bypass")
        pytest.xfail("documented limitation: plain mode without Landlock lets a bypassing program write anywhere")
    assert all(kernel_says in e for e in _errors(runs["write"])), runs["write"]


@pytest.mark.parametrize("mode", MODES)
def test_exit_zero_before_tests(mode, record):
    """Exits with status 0 before its tests run (os._exit(0) at import)."""
    runs = _attack(mode, {
        f"os._exit(0) at import, {kind}": Program("os._exit(0)\n" + ADD_FN, gt)
        for kind, gt in (("asserts", ASSERTS), ("call", CALL), ("stdio", STDIO))
    }, record)
    for name, run in runs.items():
        if name != "correct":
            assert run["status"] == "crashed" and not run["records"], run


@pytest.mark.parametrize("mode", MODES)
def test_sys_exit_zero(mode, record):
    """Calls sys.exit(0) at import, or inside the solution function."""
    in_fn = "def add(a, b):\n    sys.exit(0)\n"
    runs = _attack(mode, {
        "sys.exit(0) at import, asserts": Program("sys.exit(0)\n" + ADD_FN),
        "sys.exit(0) at import, other asserts": Program("sys.exit(0)\n" + ADD_FN, NONLITERAL),
        "sys.exit(0) at import, stdio": Program("sys.exit(0)\na, b = map(int, input().split())\nprint(a + b)\n",
                                                STDIO),
        "sys.exit(0) in the function, asserts": Program(in_fn),
        "sys.exit(0) in the function, call": Program(in_fn, CALL),
    }, record)
    for name, run in runs.items():
        if "stdio" in name:  # a stdio program may end itself; it printed nothing
            assert [r["stdout"] for r in run["records"]] == ["", ""]
        elif name != "correct":
            assert _errors(run) == ["SystemExit: 0"] * 2, run


@pytest.mark.parametrize("mode", MODES)
def test_forged_pass(mode, record):
    """Patches the exception hook or the runner, or writes fake records, to forge a pass."""
    fake = b'{"i": 0, "error": null}\n{"i": 1, "error": null}\n{"done": true}\n'
    malformed = [b"[" * 100_000, b"[1, 2]", b'{"i": 0, "error": null, "stdout": ["3"]}', b'{"i": 7, "error": null}',
                 b'{"i": "0", "error": null}', b'{"setup_error": "forged"}', b'{"compile_error": "forged"}']
    runs = _attack(mode, {
        "sys.excepthook patched": Program(
            "sys.excepthook = sys.__excepthook__ = lambda *args: None\n"
            "def add(a, b):\n    raise RuntimeError('no')\n"),
        "fake records printed": Program(f"print({fake.decode()!r})\n", STDIO),
        "fake records on the result pipe": Program(f"os.write(FD, {fake!r})\nos._exit(0)\n"),
        "forged setup error on the result pipe": Program("os.write(FD, b'{\"setup_error\": \"forged\"}\\n')\n"),
        "malformed records on the result pipe": Program(
            f"for line in {malformed!r}:\n    os.write(FD, line + b'\\n')\nprint(0)\n", STDIO),
        "fake records from a daemon thread": Program(
            "import threading\n"
            "def forge():\n    while True:\n"
            f"        os.write(FD, {fake!r})\n"
            "threading.Thread(target=forge, daemon=True).start()\n"
            "def add(a, b):\n    return 0\n"),
        "runner's run_case patched": Program(
            "__main__.run_case = lambda *args, **kwargs: {'error': None}\n"
            "def add(a, b):\n    return 0\n"),
        "always-equal result": Program(
            "class Equal:\n    def __eq__(self, other):\n        return True\n"
            "def add(a, b):\n    return Equal()\n"),
        "always-equal int": Program(
            "class Equal(int):\n    def __eq__(self, other):\n        return True\n"
            "def add(a, b):\n    return Equal(0)\n"),
    }, record)
    for name in ("forged setup error on the result pipe", "malformed records on the result pipe"):
        assert runs[name]["status"] == "ok" and "forged" not in runs[name]["detail"], runs[name]
    malformed_run = runs["malformed records on the result pipe"]
    assert [r["stdout"] for r in malformed_run["records"]] == ["0\n", "0\n"]  # the runner's own records


@pytest.mark.parametrize("mode", MODES)
def test_limitation_forged_pass_of_a_sandbox_graded_assert(mode, record):
    """Documented limitation: a forged record passes an assert other than X == literal.

    The parent cannot check such an assert (``assert f(x) > 2``, ``assert f(x)``) itself, so it
    takes the sandbox's word, which a program that shares the runner's process can forge
    (code_exec's module docstring). This asserts the false pass, so that the docs change with it.
    """
    _skip_unavailable(mode)
    fake = b'{"i": 0, "error": null}\n{"i": 1, "error": null}\n{"done": true}\n'
    tests = parse_tests(NONLITERAL)
    assert all("src" in case for case in tests.cases)  # the parent has no value to compare
    res = sandbox.run(PRELUDE + f"os.write(FD, {fake!r})\nos._exit(0)\n", tests.kind, tests.cases,
                      fn_name=None, limits=sandbox.SandboxLimits(**FAST, isolation=mode))
    record("fake records, other asserts", f"{res.status}; false pass")
    assert grade(tests, res.records) == [True, True]


@pytest.mark.parametrize("mode", MODES)
def test_fork_bomb(mode, record):
    """Fork-bombs (os.fork in a loop; also posix_spawn, multiprocessing, libc fork, threads)."""
    child = "time.sleep(5)\n        os._exit(0)\n"  # a child that did start would hold its slot 5 s
    runs = _attack(mode, {
        "os.fork loop": Program(
            f"import time\nfor _ in range(200):\n    if os.fork() == 0:\n        {child}escaped('forked')\n"),
        "os.posix_spawn loop": Program(
            "for _ in range(200):\n    os.posix_spawn('/bin/sleep', ['sleep', '5'], {})\nescaped('spawned')\n"),
        "subprocess.Popen loop": Program(
            "import subprocess\nfor _ in range(200):\n    subprocess.Popen(['sleep', '5'])\nescaped('spawned')\n"),
        "multiprocessing": Program(
            "import multiprocessing, time\nfor _ in range(50):\n"
            "    multiprocessing.Process(target=time.sleep, args=(5,)).start()\nescaped('forked')\n"),
        "libc fork loop": Program(
            "import time\nlibc = __main__.ctypes.CDLL(None, use_errno=True)\nfor _ in range(200):\n"
            "    pid = libc.fork()\n    if pid == 0:\n        " + child +
            "    if pid < 0:\n        raise OSError(__main__.ctypes.get_errno(), 'fork')\nescaped('forked')\n"),
        "thread bomb": Program(
            "import threading, time\nwhile True:\n"
            "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"),
    }, record)
    for name in ("os.fork loop", "os.posix_spawn loop", "multiprocessing", "libc fork loop"):
        assert all("Operation not permitted" in e or "[Errno 1]" in e for e in _errors(runs[name])), runs[name]
    assert all("thread" in e for e in _errors(runs["thread bomb"])), runs["thread bomb"]  # can't start new thread
    _assert_no_survivor()


def test_plain_without_seccomp_is_refused():
    """Fork bomb in plain mode without seccomp: refused at start-up, as nothing else would bound it.

    RLIMIT_NPROC does not bind root, and a child that calls setsid() leaves the process group
    that the kill reaches; so ``plain`` requires the seccomp filter.
    """
    with pytest.raises(RuntimeError, match="needs seccomp"):
        sandbox.run(ADD_FN, "assert", [], fn_name=None,
                    limits=dataclasses.replace(CodeConfig().limits(), isolation="plain", seccomp=False))


@pytest.mark.parametrize("mode", MODES)
def test_allocate_10gb(mode, record):
    """Allocates 10 GB (one block, in 64 MiB pieces, and as an anonymous mmap)."""
    runs = _attack(mode, {
        "bytearray(10 GiB)": Program("x = bytearray(10 << 30)\n"),
        "64 MiB pieces": Program("x = [bytearray(1 << 26) for _ in range(160)]\n"),
        "mmap(10 GiB)": Program("import mmap\nm = mmap.mmap(-1, 10 << 30)\nm[-1] = 1\n"),
    }, record, memory_mb=128)  # fewer pages to touch before the limit
    for name, run in runs.items():
        if name != "correct":
            assert all("MemoryError" in e or "Cannot allocate memory" in e for e in _errors(run)), run


@pytest.mark.parametrize("mode", MODES)
def test_network(mode, record):
    """Opens a network socket and connects to localhost (TCP, UDP, an abstract unix socket)."""
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(f"\0entropo-sandbox-{TOKEN}")
    unix.listen(1)
    try:
        runs = _attack(mode, {
            "TCP connect to localhost": Program(
                f"import socket\nsocket.create_connection(('127.0.0.1', {tcp.getsockname()[1]}), timeout=1)\n"
                "escaped('connected')\n"),
            "UDP send to localhost": Program(
                f"import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', "
                f"('127.0.0.1', {udp.getsockname()[1]}))\nescaped('sent')\n"),
            "abstract unix socket": Program(
                f"import socket\nsocket.socket(socket.AF_UNIX).connect('\\0entropo-sandbox-{TOKEN}')\n"
                "escaped('connected')\n"),
            "libc socket": Program(
                "libc = __main__.ctypes.CDLL(None, use_errno=True)\nif libc.socket(2, 1, 0) >= 0:\n"
                "    escaped('socket')\nraise OSError(__main__.ctypes.get_errno(), 'socket')\n"),
        }, record)
        for sock in (tcp, udp, unix):
            sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            tcp.accept()
        with pytest.raises(TimeoutError):
            udp.recv(1)
        with pytest.raises(TimeoutError):
            unix.accept()
        for name, run in runs.items():
            if name != "correct":
                assert all("Operation not permitted" in e or "[Errno 1]" in e for e in _errors(run)), run
    finally:
        for sock in (tcp, udp, unix):
            sock.close()


@pytest.mark.parametrize("mode", MODES)
def test_write_outside(mode, record):
    """Writes outside its directory (/tmp/pwned_<uuid>, the user's home), directly or via a link."""
    _plain_needs_landlock(mode, "writes outside the working directory")
    home = pwd.getpwuid(os.getuid()).pw_dir  # the sandbox has no HOME; expanduser asks pwd too
    targets = {"tmp": f"/tmp/pwned_{TOKEN}", "home": os.path.join(home, f"pwned_{TOKEN}"),
               "tmp dir": f"/tmp/pwned_{TOKEN}_dir", "symlink": f"/tmp/pwned_{TOKEN}_link",
               "rename": f"/tmp/pwned_{TOKEN}_moved"}
    try:
        runs = _attack(mode, {
            "open /tmp": Program(f"open({targets['tmp']!r}, 'w').write('x')\nescaped('wrote')\n"),
            "open ~": Program("path = os.path.join(os.path.expanduser('~'), " + repr(f"pwned_{TOKEN}") + ")\n"
                              "open(path, 'w').write('x')\nescaped('wrote ' + path)\n"),
            "mkdir /tmp": Program(f"os.mkdir({targets['tmp dir']!r})\nescaped('made a directory')\n"),
            "through a symlink": Program(f"os.symlink({targets['symlink']!r}, 'link')\n"
                                         "open('link', 'w').write('x')\nescaped('wrote through a link')\n"),
            "rename out": Program(f"open('mine', 'w').write('x')\nos.rename('mine', {targets['rename']!r})\n"
                                  "escaped('moved a file out')\n"),
        }, record)
        for name, run in runs.items():  # the kernel refused (EROFS, EACCES, or EXDEV off the tmpfs)
            if name != "correct":
                assert all("[Errno" in e and "sandbox:" not in e for e in _errors(run)), run
        assert not [path for path in targets.values() if os.path.lexists(path)]
    finally:
        for path in targets.values():
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            elif os.path.lexists(path):
                os.unlink(path)


@pytest.mark.parametrize("mode", MODES)
def test_kill_parent(mode, record):
    """Kills its parent (os.kill(os.getppid(), SIGKILL), its group, a pidfd), or opens its memory."""
    runs = _attack(mode, {
        "os.kill(ppid)": Program("import signal\nos.kill(os.getppid(), signal.SIGKILL)\nescaped('signalled')\n"),
        "os.killpg(parent's group)": Program(
            "import signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\nescaped('signalled')\n"),
        "pidfd_send_signal": Program(
            "import signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)\n"
            "escaped('signalled')\n"),
        "open /proc/<ppid>/mem": Program("open(f'/proc/{os.getppid()}/mem', 'r+b')\nescaped('opened')\n"),
    }, record)
    # the trainer lived to run the correct program (_attack); each attempt failed at the kernel
    for name, run in runs.items():
        if name != "correct":
            assert len(run["records"]) == 2 and all(_errors(run)), run


@pytest.mark.parametrize("mode", MODES)
def test_detached_child(mode, record):
    """Leaves a detached child (double fork + setsid) or a thread that outlives the run."""
    runs = _attack(mode, {
        "double fork + setsid": Program(
            "import time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(30)\n"
            "    os._exit(0)\nescaped('detached a child')\n"),
        "non-daemon thread that outlives": Program(
            "import threading, time\nthreading.Thread(target=time.sleep, args=(30,)).start()\n"
            "def add(a, b):\n    return 0\n"),
    }, record)
    assert all("Operation not permitted" in e for e in _errors(runs["double fork + setsid"]))
    assert runs["non-daemon thread that outlives"]["status"] == "ok"  # ended at once despite the thread
    _assert_no_survivor()


@pytest.mark.slow  # moves gigabytes through the sandbox
@pytest.mark.parametrize("mode", MODES)
def test_output_flood(mode, record):
    """Prints 1 GB to stdout or stderr (or to the result pipe): bounded memory, clear failure."""
    gib = "for _ in range(1024):\n    {}\n"
    runs = _attack(mode, {
        "print 1 GiB": Program(gib.format("print('x' * (1 << 20))"), STDIO),
        "stderr 1 GiB": Program(gib.format("sys.stderr.write('x' * (1 << 20))"), STDIO),
        "fd 1 1 GiB": Program(gib.format("os.write(1, b'x' * (1 << 20))"), STDIO),
        "result pipe 1 GiB, one line": Program(gib.format("os.write(FD, b'x' * (1 << 20))"), STDIO),
        "result pipe 1 GiB of lines": Program(gib.format("os.write(FD, b'{}\\n' * (1 << 18))"), STDIO),
    }, record)
    cap = CodeConfig().limits().max_output_bytes  # kept per case; the rest is dropped as written
    assert all(len(r["stdout"]) <= cap for r in runs["print 1 GiB"]["records"])
    assert all(e in (f"stdout over {cap} bytes", "case timeout") for e in _errors(runs["print 1 GiB"]))
    assert all("File too large" in e for e in _errors(runs["stderr 1 GiB"]))
    assert [r["stdout"] for r in runs["fd 1 1 GiB"]["records"]] == ["", ""]  # fd 1 is /dev/null
    for name in ("result pipe 1 GiB, one line", "result pipe 1 GiB of lines"):
        assert runs[name]["status"] == "overflow", runs[name]


@pytest.mark.parametrize("mode", MODES)
def test_environment_secrets(mode, record):
    """Reads secrets from the environment (WANDB_API_KEY, AWS_SECRET_ACCESS_KEY of the trainer)."""
    _plain_needs_landlock(mode, "reads of /proc/<trainer pid>/environ")
    spy = ("import glob\n"
           "print('keys', sorted(os.environ))\n"
           "for path in ['/proc/self/environ', f'/proc/{os.getppid()}/environ'] + glob.glob('/proc/[0-9]*/environ'):\n"
           "    try:\n"
           "        print(path, open(path, 'rb').read().decode(errors='replace'))\n"
           "    except OSError as e:\n"
           "        print(path, e)\n")
    runs = _attack(mode, {"environ and /proc/*/environ": Program(spy, STDIO)}, record, env=SECRETS)
    run = runs["environ and /proc/*/environ"]
    assert run["records"] and all(r["stdout"].startswith("keys ['LANG', 'PATH']\n") for r in run["records"]), run
    leaked = [name for name, value in SECRETS.items() if value in json.dumps(run)]
    assert not leaked, f"the program saw {leaked}"
