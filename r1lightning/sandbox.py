"""Run untrusted, model-generated Python in a sandbox (for code rewards and code evaluation).

Isolation is built from util-linux's ``unshare`` and ``setpriv`` (present on any Linux with
util-linux; no extra package) plus kernel resource limits. Each program runs as::

    unshare --pid --fork --kill-child --mount --mount-proc --net --ipc --uts [--user -r]
      python -I -S -c <BOOT>        # PID 1 of the new namespaces: mounts, limits, watchdog
        setpriv <drop all privileges> -- python -I -c <HARNESS>   # runs the program

Two modes, chosen automatically (``mode="auto"``):

* ``root`` (the process has CAP_SYS_ADMIN, e.g. root in a container or CI): namespaces without a
  user namespace; the program runs as a fresh unprivileged uid/gid claimed for this run only
  (``UID_BASE + slot``, slots locked with ``flock`` so concurrent runs, even from other
  processes, never share one), no supplementary groups, no capabilities, ``no_new_privs``.
* ``userns`` (an ordinary user, e.g. on a GPU cluster): an unprivileged user namespace
  (``--user -r``, i.e. ``--map-root-user``); the program keeps the caller's uid on the host but has no
  capabilities (empty bounding set, ``noroot`` securebits, ``no_new_privs``). Needs
  unprivileged user namespaces enabled (``kernel.unprivileged_userns_clone=1``, no AppArmor
  ``restrict_unprivileged_userns``); otherwise :class:`SandboxUnavailable` says so. Nothing
  runs unsandboxed as a fallback.

What holds in both modes (each item has a test in ``tests/test_sandbox.py``):

* **No network**: a new network namespace has only a loopback device that is down; the host's
  servers (also those on 127.0.0.1) and abstract unix sockets are unreachable.
* **Filesystem**: every mount is remounted read-only (and nosuid) in a private mount namespace;
  ``/tmp`` (the working directory, ``HOME`` and ``TMPDIR``) and ``/dev/shm`` are fresh tmpfs
  of ``disk_mb`` each that vanish with the namespace, so nothing written survives the run and
  nothing outside can be written or deleted. ``/root``, ``/home``, ``/run`` and ``/var/tmp``
  are hidden behind empty read-only tmpfs (only the Python installation is bound back in, read
  only, when it lives there). Other world-readable files (``/etc``, ``/usr``, the source tree
  if world-readable) can be *read*.
* **Processes**: a new PID namespace; the program cannot see or signal the caller or any host
  process (``os.kill(os.getppid(), 9)``, ``kill -9 -1`` reach only the sandbox). When the
  program exits, times out or the caller kills the run, PID 1 of the namespace dies and the
  kernel kills every process left in it (background grandchildren, daemons, a ``setsid``
  escapee). RLIMIT_NPROC bounds the process count (a fork bomb fails with EAGAIN).
* **Resources**: RLIMIT_CPU (``cpu_s``), RLIMIT_AS (``memory_mb``, per process), RLIMIT_NPROC
  (``max_processes``), RLIMIT_NOFILE, no core files; the wall clock (``wall_s``) is enforced by
  the caller *and* by the namespace's PID 1 (an alarm), so a run ends even if the caller dies.
  stdout/stderr are captured up to ``max_output_bytes`` each; a program printing more is
  killed (status ``"output_limit"``).
* **Environment**: the program gets a fixed minimal environment (``PATH``, ``HOME``, ``LANG``,
  ``TMPDIR``), never the caller's; the caller's ``/proc/<pid>/environ`` is not visible.
* **Exit protocol**: ``"passed"`` is reported only when the harness itself reaches the end of
  the source (and of every test) and writes a per-run random token to a private pipe, so
  ``os._exit(0)`` or ``sys.exit(0)`` mid-test is ``"failed"``.

What it does not guarantee:

* It is not a security boundary against kernel exploits, nor against a program that
  deliberately searches the harness's own memory for the run token (the program and harness
  share a process); it is built against accidents and reward hacking by ordinary code, not an
  attacker with a kernel 0-day. Use a VM (gVisor, Firecracker) for that.
* Memory is limited per process (address space), not for the whole tree: ``max_processes``
  processes can each use ``memory_mb``, plus ``2 * disk_mb`` of tmpfs, so a pool of ``w``
  sandboxes can take ``w * (max_processes * memory_mb + 2 * disk_mb)`` MiB at worst (4.1 GiB
  per sandbox with the defaults). No cgroup is used (none is writable for ordinary users on
  clusters).
* CPU time is per process too; a program that forks workers gets ``cpu_s`` for each, but all
  stop at ``wall_s``.
* ``userns`` mode: the program has the caller's uid on the host, so the read-only mounts (not
  file permissions) keep it from writing the caller's files; supplementary groups cannot be
  dropped in an unprivileged user namespace (they can only matter for reading files here).
  RLIMIT_NPROC counts the namespace's processes (tested with a real unprivileged caller); it
  does not bind when a root caller forces ``mode="userns"`` (the namespace's uid 0 is then
  the host's root, which the kernel exempts). Inside a Docker container (default seccomp
  profile) or where ``/proc`` has masked sub-mounts, an unprivileged caller cannot create the
  namespaces or mount ``/proc``: :class:`SandboxUnavailable`.
* The harness compiles with asserts on; a program that returns objects whose ``__eq__`` is
  always true passes ``assert f(x) == y`` tests: that is a weakness of the tests, not of the
  sandbox.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "STATUSES",
    "check_sandbox",
    "run_many",
    "run_python",
]

#: Every status a :class:`SandboxResult` can have.
STATUSES = ("passed", "failed", "timeout", "memory", "output_limit", "error")
#: First uid of the range root mode runs programs as (one per concurrent run; no passwd entry).
UID_BASE = 0x70000000
UID_SLOTS = 4096
#: Directories replaced by empty read-only tmpfs inside the sandbox (home directories and
#: runtime sockets may hold credentials: ~/.ssh, ~/.netrc, HF tokens, docker.sock).
HIDDEN_DIRS = ("/root", "/home", "/run", "/var/tmp")
#: The fixed environment of the program (nothing of the caller's).
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
    # BLAS/OpenMP start a thread per core at import; threads count against RLIMIT_NPROC and
    # each reserves address space, so on a 128-core node `import numpy` would fail.
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


#: ``detail`` prefix of a timeout caused by :func:`run_many`'s deadline, not the program.
DEADLINE_DETAIL = "stopped at the caller's deadline"


class SandboxUnavailable(RuntimeError):
    """Isolation cannot be set up on this host; the message names what is missing."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run. All are enforced by the kernel except ``wall_s`` and
    ``max_output_bytes``, which the caller and the sandbox's PID 1 enforce."""

    cpu_s: float = 10.0
    """CPU seconds per process (RLIMIT_CPU; SIGXCPU, then SIGKILL one second later)."""
    wall_s: float = 15.0
    """Wall-clock seconds for the whole run, interpreter start-up included."""
    memory_mb: int = 512
    """Address space per process, MiB (RLIMIT_AS). Python itself needs about 30 MiB, with
    numpy about 300. The whole program can use up to ``max_processes * memory_mb``: keep that
    product under the host's memory divided by the pool size."""
    max_output_bytes: int = 1 << 20
    """stdout and stderr are each kept up to this many bytes; more kills the run."""
    max_processes: int = 8
    """Processes and threads the program may have at once (RLIMIT_NPROC)."""
    max_open_files: int = 256
    """File descriptors per process (RLIMIT_NOFILE)."""
    disk_mb: int = 64
    """Size of the writable tmpfs at /tmp (and of /dev/shm), MiB."""

    def __post_init__(self) -> None:
        for name in ("cpu_s", "wall_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                math.isfinite(v) and v > 0
            ):
                raise ValueError(f"SandboxLimits.{name} must be a positive number, got {v!r}")
        minimum = {"memory_mb": 32, "max_output_bytes": 1, "max_processes": 1,
                   "max_open_files": 16, "disk_mb": 1}
        for name, lo in minimum.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"SandboxLimits.{name} must be an int >= {lo}, got {v!r}")


@dataclass
class SandboxResult:
    """What one run did.

    ``status``: ``"passed"`` (the source and every test ran to the end without an uncaught
    exception, confirmed by the harness's token), ``"failed"`` (an exception, ``SystemExit``,
    an early ``os._exit``, a crash), ``"timeout"`` (wall or CPU limit), ``"memory"``
    (``MemoryError``), ``"output_limit"`` (printed more than ``max_output_bytes``) or
    ``"error"`` (the sandbox itself failed; ``detail`` says why).
    """

    status: str
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    cpu_s: float | None = None
    #: Per test (see :func:`run_python`): True passed, False failed, None never finished.
    test_results: list[bool | None] = field(default_factory=list)
    #: Exception class names the harness saw (source first, then failing tests).
    errors: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def tests_passed(self) -> int:
        return sum(r is True for r in self.test_results)


# ------------------------------------------------------------------------------------------
# Code run inside the namespaces. BOOT runs as PID 1 with the namespace's privileges; it never
# runs model code. HARNESS runs model code after every privilege is gone.

_BOOT = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
rfd = cfg["report_fd"]
def report(msg):
    os.write(rfd, (msg + "\n").encode())
def fail(msg):
    report("boot-error " + msg)
    os._exit(70)
libc = ctypes.CDLL(None, use_errno=True)
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC = 1, 2, 4, 8, 32, 4096, 16384
ATIME = {"noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24}
def mount(src, target, fstype, flags, data):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "mount %s: %s" % (target, os.strerror(e)))
def unescape(p):
    return p.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")
try:
    os.set_inheritable(rfd, False)
    keep = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in cfg["expose"]]
    # Everything read-only and nosuid; locked flags (nodev, noexec, atime) must be kept or a
    # user namespace refuses the remount.
    skipped = []
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        mp, opts = unescape(f[4]), f[5].split(",")
        flags = REMOUNT | BIND | RDONLY | NOSUID
        flags |= (NODEV if "nodev" in opts else 0) | (NOEXEC if "noexec" in opts else 0)
        flags |= sum(v for k, v in ATIME.items() if k in opts)
        try:
            mount(None, mp, None, flags, None)
        except OSError as e:
            if mp == "/" or "ro" not in opts:
                skipped.append("%s (%s)" % (mp, e.strerror))
    if skipped:
        fail("cannot make these mounts read-only: " + ", ".join(skipped))
    size = "size=%dm" % cfg["disk_mb"]
    mount("tmpfs", "/tmp", "tmpfs", NOSUID | NODEV, "mode=1777," + size)
    if os.path.isdir("/dev/shm"):
        mount("tmpfs", "/dev/shm", "tmpfs", NOSUID | NODEV, "mode=1777," + size)
    hidden = [d for d in cfg["hide"] if os.path.isdir(d) and not os.path.islink(d)]
    for d in hidden:
        mount("tmpfs", d, "tmpfs", NOSUID | NODEV, "mode=755,size=1m")
    for fd, path in zip(keep, cfg["expose"]):
        if any(path == d or path.startswith(d.rstrip("/") + "/") for d in hidden + ["/tmp"]):
            os.makedirs(path, mode=0o755, exist_ok=True)
            mount("/proc/self/fd/%d" % fd, path, None, BIND | REC, None)
            mount(None, path, None, REMOUNT | BIND | RDONLY | NOSUID, None)
        os.close(fd)
    for d in hidden:
        mount(None, d, None, REMOUNT | RDONLY | NOSUID | NODEV, None)
    os.chdir("/tmp")
except Exception as e:
    fail("%s: %s" % (type(e).__name__, e))
# Watchdog: PID 1 exiting kills the whole namespace, even if the caller is gone.
signal.signal(signal.SIGALRM, lambda *a: (report("wall"), os._exit(71)))
signal.setitimer(signal.ITIMER_REAL, cfg["wall_s"])
pid = os.fork()
if pid == 0:
    try:
        os.setsid()
        lim = cfg["limits"]
        cpu = max(1, int(lim["cpu_s"] + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        mem = lim["memory_mb"] << 20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["disk_mb"] << 20, cfg["disk_mb"] << 20))
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as e:
        os.write(2, ("sandbox exec failed: %r\n" % (e,)).encode())
    os._exit(127)
while True:
    try:
        got, status, ru = os.wait4(-1, 0)
    except ChildProcessError:
        fail("lost the program")
    except InterruptedError:
        continue
    if got == pid:
        report("exit %d %.6f" % (status, ru.ru_utime + ru.ru_stime))
        os._exit(0)
"""

_HARNESS = r"""
import builtins, json, linecache, os, sys, traceback
_write, _exit, _fd = os.write, os._exit, int(sys.argv[1])
payload = json.loads(sys.stdin.buffer.read().decode("utf-8"))
sys.stdin.close()
sys.stdin = open(os.devnull)
_token = payload.pop("token")
def _report(*parts):
    _write(_fd, ("\n" + _token + " " + " ".join(map(str, parts)) + "\n").encode())
def _run(src, name, g):
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    try:
        exec(compile(src, name, "exec", dont_inherit=True, optimize=0), g)
        return None
    except BaseException as e:
        try:  # the harness's own frame is noise in the program's traceback
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        except BaseException:
            pass
        return type(e).__name__
g = {"__name__": payload["name"], "__builtins__": builtins}
err = _run(payload["source"], "<source>", g)
_report("source", "ok" if err is None else "fail " + err)
for i, test in enumerate(payload["tests"]):
    terr = _run(test, "<test %d>" % i, g) if err is None else "NotRun"
    _report("test", i, "ok" if terr is None else "fail " + terr)
try:
    sys.stdout.flush()
    sys.stderr.flush()
except BaseException:
    pass
_report("done")
_exit(0)
"""


# ------------------------------------------------------------------------------------------
# host side


def _tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise SandboxUnavailable(
            f"the sandbox needs util-linux's `{name}` (apt-get install util-linux / "
            f"dnf install util-linux); it was not found on PATH"
        )
    return path


def _has_cap_sys_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 21))
    except OSError:
        pass
    return False


def _resolve_mode(mode: str) -> str:
    if mode not in ("auto", "root", "userns"):
        raise ValueError(f"sandbox mode must be 'auto', 'root' or 'userns', got {mode!r}")
    if mode == "auto":
        return "root" if os.geteuid() == 0 and _has_cap_sys_admin() else "userns"
    return mode


class _UidSlot:
    """A uid reserved for one run in root mode: ``flock`` on a per-slot file, so concurrent
    runs from any process on the host never share a uid (RLIMIT_NPROC counts per uid)."""

    _lock_dir = os.path.join(tempfile.gettempdir(), "r1lightning-sandbox-uids")
    _next = 0
    _guard = threading.Lock()

    def __enter__(self) -> int:
        os.makedirs(self._lock_dir, mode=0o700, exist_ok=True)
        with self._guard:
            start = _UidSlot._next
            _UidSlot._next = (start + 1) % UID_SLOTS
        for k in range(UID_SLOTS):
            slot = (start + k) % UID_SLOTS
            fd = os.open(os.path.join(self._lock_dir, str(slot)), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._fd = fd
            return UID_BASE + slot
        raise SandboxUnavailable(f"all {UID_SLOTS} sandbox uids are in use")

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)  # releases the flock


def _expose_paths() -> list[str]:
    """Directories the interpreter needs, bound back in read-only when they are hidden."""
    exe = os.path.realpath(sys.executable)
    paths = {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix),
             os.path.dirname(os.path.dirname(exe)),
             os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))}
    return sorted(p for p in paths if os.path.isdir(p))


def _command(limits: SandboxLimits, mode: str, uid: int | None, report_fd: int,
             status_fd: int) -> list[str]:
    unshare, setpriv = _tool("unshare"), _tool("setpriv")
    if not sys.executable:
        raise SandboxUnavailable("sys.executable is empty: no interpreter to run programs with")
    # Not the real path: a virtual environment's packages need its own bin/python.
    python = os.path.abspath(sys.executable)
    drop = [setpriv, "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
    if mode == "root":
        drop += [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        nproc = limits.max_processes
    else:
        # uid 0 of the namespace must not regain capabilities on exec.
        drop += ["--securebits=+noroot,+noroot_locked,+no_setuid_fixup,"
                 "+no_setuid_fixup_locked,+keep_caps_locked"]
        # The namespace's uid also owns PID 1 (BOOT) and unshare itself, which moved into the
        # user namespace it created: both count against the limit.
        nproc = limits.max_processes + 2
    cfg = {
        "report_fd": report_fd,
        "expose": _expose_paths(),
        "hide": list(HIDDEN_DIRS),
        "disk_mb": limits.disk_mb,
        "wall_s": limits.wall_s + 1.0,
        "limits": {"cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "nproc": nproc,
                   "nofile": limits.max_open_files},
        "argv": drop + ["--", python, "-I", "-c", _HARNESS, str(status_fd)],
        "env": SANDBOX_ENV,
    }
    ns = ["--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--net", "--ipc", "--uts"]
    if mode == "userns":
        ns = ["--user", "--map-root-user"] + ns
    return [unshare, *ns, "--", python, "-I", "-S", "-c", _BOOT, json.dumps(cfg)]


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def run_python(
    source: str,
    limits: SandboxLimits | None = None,
    *,
    tests: Sequence[str] = (),
    module_name: str | None = None,
    mode: str = "auto",
) -> SandboxResult:
    """Run ``source`` in the sandbox and then each of ``tests`` in its namespace.

    Every test runs even when an earlier one failed (``test_results`` has one entry per
    test); the status is ``"passed"`` only when the source and all tests finished without an
    uncaught exception. ``module_name`` is the program's ``__name__``: ``"__main__"`` by
    default without tests, ``"candidate"`` with tests (so a ``if __name__ == "__main__":``
    demo block of a candidate does not run, as in HumanEval's harness).

    Raises :class:`SandboxUnavailable` when isolation cannot be set up on this host (missing
    tools, user namespaces disabled); the program is never run unsandboxed. Once
    :func:`check_sandbox` has succeeded in this process, a later one-off setup failure is
    that run's status ``"error"`` instead.
    """
    limits = SandboxLimits() if limits is None else limits
    if not isinstance(limits, SandboxLimits):
        raise TypeError(f"limits must be a SandboxLimits, got {type(limits).__name__}")
    mode = _resolve_mode(mode)
    tests = [str(t) for t in tests]
    name = module_name or ("candidate" if tests else "__main__")
    token = secrets.token_hex(16)
    payload = json.dumps(
        {"token": token, "source": str(source), "tests": tests, "name": name},
        ensure_ascii=True,  # lone surrogates in model output must not break the transport
    ).encode()
    if mode == "root":
        with _UidSlot() as uid:
            return _run(payload, token, limits, mode, uid, len(tests))
    return _run(payload, token, limits, mode, None, len(tests))


def _run(payload: bytes, token: str, limits: SandboxLimits, mode: str, uid: int | None,
         n_tests: int) -> SandboxResult:
    report_r, report_w = os.pipe()  # BOOT -> caller (the program never holds it)
    status_r, status_w = os.pipe()  # harness -> caller (token-authenticated lines)
    cmd = _command(limits, mode, uid, report_w, status_w)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(report_w, status_w), start_new_session=True, close_fds=True,
            env={"PATH": SANDBOX_ENV["PATH"], "LANG": "C.UTF-8"},
        )
    except OSError as exc:
        for fd in (report_r, report_w, status_r, status_w):
            os.close(fd)
        raise SandboxUnavailable(f"cannot start `unshare`: {exc}") from exc
    os.close(report_w)
    os.close(status_w)
    bufs = {"stdout": bytearray(), "stderr": bytearray(), "status": bytearray(),
            "report": bytearray()}
    caps = {"stdout": limits.max_output_bytes, "stderr": limits.max_output_bytes,
            "status": 1 << 20, "report": 1 << 16}
    sel = selectors.DefaultSelector()
    for key, f in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        os.set_blocking(f.fileno(), False)
        sel.register(f.fileno(), selectors.EVENT_READ, key)
    for key, fd in (("status", status_r), ("report", report_r)):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, key)
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE, "stdin")
    sent = 0
    deadline = start + limits.wall_s
    killed_for: str | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if killed_for is None and now >= deadline:
                killed_for = "timeout"
                _kill(proc)
                deadline = now + 5.0  # drain what the dying tree still holds
            elif killed_for is not None and now >= deadline:
                break
            for key, _ in sel.select(timeout=max(0.0, deadline - now)):
                tag = key.data
                if tag == "stdin":
                    try:
                        sent += os.write(stdin_fd, payload[sent:sent + (1 << 16)])
                    except (BrokenPipeError, OSError):
                        sent = len(payload)
                    if sent >= len(payload):
                        sel.unregister(stdin_fd)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[tag]
                room = caps[tag] - len(buf)
                buf += chunk[:max(0, room)]
                if len(chunk) > room and killed_for is None:
                    killed_for = "output_limit"
                    _kill(proc)
                    deadline = time.monotonic() + 5.0
    finally:
        for key in list(sel.get_map().values()):
            sel.unregister(key.fd)
        sel.close()
        if proc.poll() is None:
            _kill(proc)
        try:
            _, wait_status, _ = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(wait_status)
        except ChildProcessError:
            proc.wait()
        for f in (proc.stdout, proc.stderr, proc.stdin):
            try:
                f.close()
            except OSError:
                pass
        os.close(status_r)
        os.close(report_r)
    wall = time.monotonic() - start
    return _interpret(bufs, token, killed_for, limits, wall, n_tests, proc.returncode, mode)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL unshare: --kill-child takes PID 1 of the namespace, and the kernel the rest."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def _interpret(bufs: dict, token: str, killed_for: str | None, limits: SandboxLimits,
               wall: float, n_tests: int, unshare_rc: int | None, mode: str) -> SandboxResult:
    report = _decode(bytes(bufs["report"])).splitlines()
    stdout, stderr = _decode(bytes(bufs["stdout"])), _decode(bytes(bufs["stderr"]))
    result = SandboxResult(status="failed", stdout=stdout, stderr=stderr, wall_s=wall,
                           test_results=[None] * n_tests)
    boot_error = next((line[len("boot-error "):] for line in report
                       if line.startswith("boot-error ")), None)
    exit_line = next((line for line in report if line.startswith("exit ")), None)
    problem = None
    if boot_error is not None:
        problem = f"sandbox setup failed inside the namespaces: {boot_error}"
    elif exit_line is None and killed_for is None and "wall" not in report:
        # unshare itself could not create the namespaces (EPERM, userns disabled, ...).
        problem = (
            f"`unshare` could not set up the sandbox (exit {unshare_rc}): "
            f"{stderr.strip()[-500:] or 'no message'}; unprivileged users need user namespaces "
            "enabled (sysctl kernel.unprivileged_userns_clone=1, and on Ubuntu 24.04 "
            "kernel.apparmor_restrict_unprivileged_userns=0)"
        )
    if problem is not None:
        if not _checked.get(mode):
            raise SandboxUnavailable(problem)
        # The sandbox worked before on this host: a one-off (the host's OOM killer took PID 1,
        # say) is this run's error, not a reason to stop a training run.
        result.status, result.detail = "error", problem
        return result
    if exit_line is not None:
        _, raw_status, cpu = exit_line.split()
        result.returncode = os.waitstatus_to_exitcode(int(raw_status))
        result.cpu_s = float(cpu)
    # Harness lines: only those carrying this run's token count.
    source_ok = done = False
    for line in _decode(bytes(bufs["status"])).splitlines():
        at = line.find(token)
        if at < 0:
            continue
        parts = line[at + len(token):].split()
        if parts[:2] == ["source", "ok"]:
            source_ok = True
        elif parts[:2] == ["source", "fail"] and len(parts) > 2:
            result.errors.append(parts[2])
        elif parts[:1] == ["test"] and len(parts) >= 3 and parts[1].isdigit():
            i = int(parts[1])
            if i < n_tests:
                result.test_results[i] = parts[2] == "ok"
                if parts[2] == "fail" and len(parts) > 3 and parts[3] != "NotRun":
                    result.errors.append(parts[3])
        elif parts == ["done"]:
            done = True
    # SIGXCPU at the soft limit, SIGKILL at the hard one (soft + 1s) if SIGXCPU is handled.
    cpu_killed = result.returncode == -signal.SIGXCPU or (
        result.returncode == -signal.SIGKILL
        and result.cpu_s is not None
        and result.cpu_s >= int(limits.cpu_s + 0.999)
    )
    if killed_for == "output_limit":
        result.status, result.detail = "output_limit", "printed more than max_output_bytes"
    elif killed_for == "timeout" or "wall" in report:
        result.status, result.detail = "timeout", f"wall clock over {limits.wall_s:g}s"
    elif cpu_killed:
        result.status, result.detail = "timeout", f"CPU time over {limits.cpu_s:g}s"
    elif "MemoryError" in result.errors:
        result.status, result.detail = "memory", "MemoryError (memory_mb reached)"
    elif done and source_ok and result.returncode == 0 and all(result.test_results):
        result.status = "passed"
    else:
        result.status = "failed"
        if not done:
            result.detail = f"the program ended before the harness finished (exit " \
                            f"{result.returncode})"
    return result


_checked: dict[str, bool] = {}
_check_lock = threading.Lock()


def check_sandbox(mode: str = "auto") -> str:
    """Run a trivial program once; returns the mode used or raises :class:`SandboxUnavailable`.
    Cached per mode after the first success."""
    mode = _resolve_mode(mode)
    with _check_lock:
        if not _checked.get(mode):
            res = run_python("print('ok')", SandboxLimits(wall_s=30.0), mode=mode)
            if res.status != "passed" or res.stdout.strip() != "ok":
                raise SandboxUnavailable(
                    f"the sandbox ({mode} mode) cannot run a trivial program: status "
                    f"{res.status}, {res.detail}; stderr: {res.stderr.strip()[-500:]}"
                )
            _checked[mode] = True
    return mode


def default_workers() -> int:
    """CPUs this process may use (the pool size :func:`run_many` uses by default)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_many(
    sources: Sequence[str],
    limits: SandboxLimits | None = None,
    max_workers: int | None = None,
    *,
    tests: Sequence[Sequence[str]] | None = None,
    mode: str = "auto",
    deadline: float | None = None,
) -> list[SandboxResult | None]:
    """:func:`run_python` over ``sources`` with at most ``max_workers`` (default: the CPUs
    this process may use) sandboxes at once; results in input order.

    ``tests[i]`` are the tests of ``sources[i]``. ``deadline`` (a ``time.monotonic()``
    instant) bounds the whole call: a program not started by then is not run (its result is
    ``None``) and one started gets at most the time left as its wall limit (if that cuts it
    short, its ``detail`` starts with :data:`DEADLINE_DETAIL`).
    """
    if max_workers is None:
        max_workers = default_workers()
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
    limits = SandboxLimits() if limits is None else limits
    if tests is not None and len(tests) != len(sources):
        raise ValueError(f"{len(tests)} test lists for {len(sources)} sources")
    check_sandbox(mode)

    def one(i: int) -> SandboxResult | None:
        run_limits = limits
        if deadline is not None:
            left = deadline - time.monotonic()
            if left < 0.5:  # not even enough to start Python
                return None
            if left < limits.wall_s:
                run_limits = replace(limits, wall_s=left)
        result = run_python(sources[i], run_limits, tests=tests[i] if tests else (), mode=mode)
        if run_limits is not limits and result.status == "timeout":
            result.detail = f"{DEADLINE_DETAIL} ({result.detail})"
        return result

    if not sources:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(sources)),
                            thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, range(len(sources))))
