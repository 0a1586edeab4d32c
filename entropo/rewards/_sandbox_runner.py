"""The process that runs untrusted code for :mod:`entropo.rewards.sandbox` (stdlib only).

Run as ``python -I _sandbox_runner.py RESULT_FD ISOLATION`` with a JSON job on stdin;
writes a first line (``setup``, ``setup_error`` or ``compile_error``), then one JSON line per
test case, then ``{"done": true}``, to ``RESULT_FD``. ``ISOLATION`` is ``namespace`` (inside
``unshare``: set up mounts first) or ``plain``. The order matters:
read the job, set up mounts (needs the mount syscall), set resource limits, enter the Landlock
domain, install the seccomp filter (blocks mount and the rest), install the audit hook, run
the cases. What each layer guarantees is documented in :mod:`entropo.rewards.sandbox`.
"""

import builtins
import ctypes
import ctypes.util
import io
import json
import numbers
import os
import platform
import resource
import signal
import struct
import sys

# ---- mounts (namespace mode) ----------------------------------------------------------------
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
_FLAG_NAMES = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
               "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(libc, src, target, fstype, flags, data):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _mount_points():
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            point = parts[4].encode().decode("unicode_escape")  # "\040" is a space
            points.append((point, parts[5].split(",")))
    return points


def setup_namespace(workdir, tmpfs_mb, pid_max):
    """Private writable tmpfs at the workdir; every other mount read-only, nodev, nosuid."""
    libc = _libc()
    try:
        with open("/proc/sys/kernel/pid_max", "w") as f:  # the new PID namespace's own limit
            f.write(str(pid_max))
    except OSError as e:
        raise OSError(f"pid_max: {e}") from None
    _mount(libc, "tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=0700")
    os.chdir(workdir)
    failed = []
    for point, opts in _mount_points():
        if point == workdir:
            continue
        keep = 0
        for o in opts:
            keep |= _FLAG_NAMES.get(o, 0)
        try:
            _mount(libc, None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NODEV | MS_NOSUID | keep, None)
        except OSError:
            failed.append(point)
    if "/" in failed:
        raise OSError("could not make / read-only")
    return failed


# ---- resource limits ---------------------------------------------------------------------------
def set_limits(lim):
    mb = 1 << 20
    for res, value in ((resource.RLIMIT_CPU, lim["cpu_s"]), (resource.RLIMIT_AS, lim["memory_mb"] * mb),
                       (resource.RLIMIT_FSIZE, lim["fsize_mb"] * mb), (resource.RLIMIT_NPROC, lim["nproc"]),
                       (resource.RLIMIT_NOFILE, lim["nofile"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))


# ---- seccomp -------------------------------------------------------------------------------------
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
RET_ALLOW, RET_ERRNO, RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
EPERM, ENOSYS = 1, 38
CLONE_THREAD = 0x00010000
# Blocked: sockets (all families: no network, no unix sockets), new processes and programs,
# debugging other processes, mounts and namespaces, bpf, io_uring, signals to other processes
# (every call that can send one: kill, tkill, rt_sigqueueinfo, rt_tgsigqueueinfo and
# pidfd_send_signal; in plain mode the parent is a same-user process that these could kill)
# and taking another process's file descriptors (pidfd_getfd).
_ARCHES = {
    "x86_64": dict(audit=0xC000003E, x32_bit=0x40000000, block=dict(
        socket=41, socketpair=53, fork=57, vfork=58, execve=59, execveat=322, ptrace=101,
        mount=165, umount2=166, pivot_root=155, chroot=161, unshare=272, setns=308, bpf=321,
        io_uring_setup=425, process_vm_readv=310, process_vm_writev=311, kill=62, tkill=200,
        rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, pidfd_send_signal=424, pidfd_getfd=438),
        clone=56, clone3=435, tgkill=234),
    "aarch64": dict(audit=0xC00000B7, x32_bit=None, block=dict(
        socket=198, socketpair=199, execve=221, execveat=281, ptrace=117, mount=40, umount2=39,
        pivot_root=41, chroot=51, unshare=97, setns=268, bpf=280, io_uring_setup=425,
        process_vm_readv=270, process_vm_writev=271, kill=129, tkill=130,
        rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, pidfd_send_signal=424, pidfd_getfd=438),
        clone=220, clone3=435, tgkill=131),
}


def _bpf(code, k, jt=0, jf=0):
    return struct.pack("HBBI", code, jt, jf, k)


def install_seccomp():
    """A seccomp filter returning EPERM for the blocked syscalls (see ``_ARCHES``)."""
    arch = _ARCHES.get(platform.machine())
    if arch is None:
        raise OSError(f"no seccomp syscall table for {platform.machine()}")
    LD, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, JSET|K, BPF_RET|K
    deny = RET_ERRNO | EPERM
    prog = [_bpf(LD, 4), _bpf(JEQ, arch["audit"], 1, 0), _bpf(RET, RET_KILL_PROCESS), _bpf(LD, 0)]
    if arch["x32_bit"]:
        prog += [_bpf(0x35, arch["x32_bit"], 0, 1), _bpf(RET, deny)]  # BPF_JGE: x32 calls
    for nr in arch["block"].values():
        prog += [_bpf(JEQ, nr, 0, 1), _bpf(RET, deny)]
    # clone3 -> ENOSYS so that glibc falls back to clone, whose flags BPF can read.
    prog += [_bpf(JEQ, arch["clone3"], 0, 1), _bpf(RET, RET_ERRNO | ENOSYS)]
    # clone: threads (CLONE_THREAD) only.
    prog += [_bpf(JEQ, arch["clone"], 0, 4), _bpf(LD, 16), _bpf(JSET, CLONE_THREAD, 1, 0), _bpf(RET, deny),
             _bpf(RET, RET_ALLOW)]
    # tgkill: only to this process (Python and glibc signal themselves with it).
    prog += [_bpf(JEQ, arch["tgkill"], 0, 3), _bpf(LD, 16), _bpf(JEQ, os.getpid(), 1, 0), _bpf(RET, deny)]
    prog += [_bpf(RET, RET_ALLOW)]
    buf = ctypes.create_string_buffer(b"".join(prog))

    class FProg(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = FProg(len(prog), ctypes.addressof(buf))
    libc = _libc()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(SECCOMP)")


# ---- Landlock ------------------------------------------------------------------------------------
# uapi/linux/landlock.h. The syscall numbers are the same on x86_64 and aarch64.
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
LANDLOCK_READ_FILE = 1 << 2
# Rights that change the file system, by the ABI version that added them: write, remove
# dir/file, make char/dir/reg/sock/fifo/block/sym (1); refer, i.e. link or rename across
# directories (2); truncate (3).
_LANDLOCK_FS_WRITE = ((1, 1 << 1 | 0b111111111 << 4), (2, 1 << 13), (3, 1 << 14))
LANDLOCK_NET_TCP = 0b11  # bind, connect (ABI 4)
LANDLOCK_SCOPES = 0b11  # abstract unix sockets, signals: only within the domain (ABI 6)
PROC_READABLE = ("self", "sys", "cpuinfo", "meminfo", "stat", "loadavg", "uptime", "version")
"""What files under /proc a program may read: its own, and system-wide figures. Not the other
processes': in plain mode ``/proc/<pid>/environ`` of the trainer holds its secrets, and
Landlock's ptrace scoping does not cover ``environ`` (checked on Linux 6.18)."""


def landlock_abi(libc=None):
    """The kernel's Landlock ABI version; 0 when it has none (not built, or not enabled at boot)."""
    libc = libc or _libc()
    abi = libc.syscall(ctypes.c_long(LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                       ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return max(abi, 0)


def install_landlock(workdir):
    """Confine the process to a Landlock domain; returns its ABI version, 0 without Landlock.

    The domain allows changes to the file system beneath ``workdir`` only (in plain mode too,
    and even with the audit hook bypassed, a write elsewhere fails with EACCES); file reads
    anywhere except under ``/proc``, where only :data:`PROC_READABLE` is; no TCP (ABI 4); no
    signals or abstract unix sockets to processes outside the domain (ABI 6). Any domain also
    denies ptrace-mode access (``/proc/<pid>/mem``, ``exe``, ``fd/*``) to processes outside it.
    """
    libc = _libc()
    abi = landlock_abi(libc)
    if abi == 0:
        return 0
    write = sum(bits for version, bits in _LANDLOCK_FS_WRITE if abi >= version)
    attr = struct.pack("QQQ", write | LANDLOCK_READ_FILE, LANDLOCK_NET_TCP if abi >= 4 else 0,
                       LANDLOCK_SCOPES if abi >= 6 else 0)
    ruleset = libc.syscall(ctypes.c_long(LANDLOCK_CREATE_RULESET), ctypes.create_string_buffer(attr, len(attr)),
                           ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    readable = [os.path.join("/", e) for e in os.listdir("/") if e != "proc"]
    readable += [os.path.join("/proc", e) for e in PROC_READABLE]
    try:
        _landlock_allow(libc, ruleset, workdir, write | LANDLOCK_READ_FILE, required=True)
        for path in readable:
            _landlock_allow(libc, ruleset, path, LANDLOCK_READ_FILE, required=False)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS)")
        if libc.syscall(ctypes.c_long(LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _landlock_allow(libc, ruleset, path, access, required):
    try:
        fd = os.open(path, os.O_PATH)
    except OSError:
        if required:
            raise
        return  # e.g. a dangling symlink in /
    try:
        beneath = struct.pack("=Qi", access, fd)  # a packed struct: 12 bytes
        if libc.syscall(ctypes.c_long(LANDLOCK_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                        ctypes.create_string_buffer(beneath, len(beneath)), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
    finally:
        os.close(fd)


# ---- audit hook ----------------------------------------------------------------------------------
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
                "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
_BLOCKED_EVENTS = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
                   "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                   "os.forkpty", "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
                   "mmap.__new__", "os.chdir", "sys.addaudithook"}


def install_audit_hook(workdir):
    """Block sockets, processes, ctypes and writes outside ``workdir`` at the Python level."""
    root = os.path.realpath(workdir)

    def inside(path):
        if isinstance(path, int):
            return True
        p = os.path.realpath(os.path.join(root, os.fsdecode(path)))
        return p == root or p.startswith(root + os.sep)

    def hook(event, args):
        if event in _BLOCKED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args and args[0] in ("_ctypes", "ctypes", "_posixsubprocess"):
            raise PermissionError(f"sandbox: import {args[0]} is not allowed")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2] or 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & _WRITE_FLAGS
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
        if event in _PATH_EVENTS:
            for a in args[:2]:
                if isinstance(a, (str, bytes, os.PathLike)) and not inside(a):
                    raise PermissionError(f"sandbox: {event} outside the working directory")

    sys.addaudithook(hook)


# ---- running the cases ---------------------------------------------------------------------------
class CaseTimeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise CaseTimeout()


def _number(x):
    # numbers that are not int/float (numpy scalars, Fraction) compare by value, as == does
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return float(x)
    raise TypeError(f"{type(x).__name__} is not JSON")


def _jsonable(x):
    try:
        return json.loads(json.dumps(x, default=_number))
    except (TypeError, ValueError):
        return {"__repr__": repr(x)[:1000]}


class CappedOutput(io.BytesIO):
    """Keeps the first ``cap`` bytes written and drops the rest, so that a flood of output costs
    time, never memory; ``over`` says that something was dropped."""

    def __init__(self, cap):
        super().__init__()
        self.cap, self.over = cap, False

    def write(self, b):
        n = len(b)
        room = self.cap - self.tell()
        if n > room:
            self.over = True
            b = memoryview(b)[:max(room, 0)]
        super().write(b)
        return n


def run_case(code, kind, case, fn_name, case_timeout, max_output):
    stdin = io.TextIOWrapper(io.BytesIO(str(case.get("input", "")).encode()), encoding="utf-8")
    out_bytes = CappedOutput(max_output)
    stdout = io.TextIOWrapper(out_bytes, encoding="utf-8", write_through=True)
    saved = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = stdin, stdout
    rec = {"error": None}
    g = {"__name__": "__main__" if kind == "stdio" else "__solution__", "__builtins__": builtins}
    signal.setitimer(signal.ITIMER_REAL, case_timeout)
    try:
        try:
            exec(code, g)
            if kind == "call":
                fn = g.get(fn_name)
                if fn is None and "Solution" in g:  # LeetCode style
                    fn = getattr(g["Solution"](), fn_name, None)
                if fn is None:
                    raise NameError(f"no function '{fn_name}'")
                rec["result"] = _jsonable(fn(*case.get("args", [])))
            elif kind == "assert" and "expr" in case:  # the parent compares it with the expected value
                rec["result"] = _jsonable(eval(case["expr"], g))
            elif kind == "assert":
                exec(case["src"], g)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except SystemExit as e:
        # Only a stdio program may end itself, with status 0, and then its output is graded.
        # Anywhere else an exit skips the test's code, which must not read as a pass.
        if kind != "stdio" or e.code not in (None, 0):
            rec["error"] = f"SystemExit: {str(e.code)[:200]}"
    except CaseTimeout:
        rec["error"] = "case timeout"
    except MemoryError:
        rec["error"] = "MemoryError"
    except BaseException as e:  # the case failed; the next one still runs
        rec["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        sys.stdin, sys.stdout = saved
    if kind == "stdio":
        rec["stdout"] = out_bytes.getvalue().decode("utf-8", "replace")
        if out_bytes.over and rec["error"] is None:  # graded on a cut output it could pass wrongly
            rec["error"] = f"stdout over {max_output} bytes"
    return rec


def main():
    fd, isolation = int(sys.argv[1]), sys.argv[2]
    sys.dont_write_bytecode = True
    job = json.loads(sys.stdin.buffer.read())
    sys.stdin = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")

    def emit(rec):
        line = json.dumps(rec)  # ASCII: characters are bytes
        if len(line) > lim["max_record_bytes"]:  # the parent stops reading at a longer line
            line = json.dumps({"i": rec.get("i"), "error": f"record over {lim['max_record_bytes']} bytes"})
        os.write(fd, (line + "\n").encode())

    lim = job["limits"]
    try:
        failed = setup_namespace(job["workdir"], lim["tmpfs_mb"], lim["pid_max"]) if isolation == "namespace" else []
        set_limits(lim)
        landlock = install_landlock(os.getcwd())
        if job["seccomp"]:
            install_seccomp()
        for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
            del sys.modules[name]  # re-importing it then goes through the audit hook
        if job["audit_hook"]:
            install_audit_hook(os.getcwd())
    except Exception as e:
        emit({"setup_error": f"{type(e).__name__}: {e}"})
        os._exit(3)
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        code = compile(job["code"], "<solution>", "exec")
    except (SyntaxError, ValueError) as e:
        emit({"compile_error": f"{type(e).__name__}: {e}"})
        emit({"done": True})
        os._exit(0)
    # The first line, and the last one written before the program runs (and could write too).
    emit({"setup": "ok", "ro_failed": failed, "landlock": landlock})
    for i, case in enumerate(job["cases"]):
        rec = run_case(code, job["kind"], case, job.get("fn_name"), lim["case_timeout_s"], lim["max_output_bytes"])
        rec["i"] = i
        emit(rec)
    emit({"done": True})
    os._exit(0)  # skip interpreter teardown (user code may have left threads or handlers)


if __name__ == "__main__":
    main()
