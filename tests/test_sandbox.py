"""Containment tests of r1lightning.sandbox: each runs a hostile program and checks both that
the specific harm was prevented and that the caller and the host are unharmed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from r1lightning import sandbox
from r1lightning.sandbox import (
    UID_BASE,
    UID_SLOTS,
    SandboxLimits,
    SandboxUnavailable,
    check_sandbox,
    run_many,
    run_python,
)

FAST = SandboxLimits(cpu_s=5, wall_s=5, memory_mb=512)
SLACK_S = 2.0  # start-up and kill of the namespace on a loaded 2-core machine


@pytest.fixture(scope="module", autouse=True)
def sandbox_works():
    check_sandbox()


def _host_pids_where(pred) -> list[int]:
    """Host pids whose /proc entry satisfies ``pred(uid, cmdline)``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, StopIteration):
            continue  # exited while we looked
        if pred(uid, cmdline):
            found.append(int(entry))
    return found


def _sandbox_uid_pids() -> list[int]:
    return _host_pids_where(lambda uid, _: UID_BASE <= uid < UID_BASE + UID_SLOTS)


def _gone_soon(pred, timeout: float = 3.0) -> list[int]:
    """Processes matching ``pred`` after giving the kernel ``timeout`` s to reap a dead tree."""
    end = time.monotonic() + timeout
    while True:
        left = _host_pids_where(pred)
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.1)


def test_plain_program_runs_with_its_output():
    res = run_python("import sys\nprint('out')\nprint('err', file=sys.stderr)", FAST)
    assert res.status == "passed" and res.returncode == 0
    assert res.stdout == "out\n" and res.stderr == "err\n"
    assert res.cpu_s is not None and res.cpu_s > 0


def test_tests_run_after_source_and_are_reported_one_by_one():
    res = run_python("def f(x):\n    return x + 1", FAST,
                     tests=["assert f(1) == 2", "assert f(1) == 3", "assert f(2) == 3"])
    assert res.status == "failed"
    assert res.test_results == [True, False, True]  # a failure does not stop later tests
    assert res.errors == ["AssertionError"]
    assert run_python("def f(x):\n    return x + 1", FAST, tests=["assert f(1) == 2"]).passed


def test_infinite_loop_is_killed_within_the_wall_limit():
    limits = SandboxLimits(cpu_s=60, wall_s=2)  # CPU limit out of reach: the wall clock acts
    start = time.monotonic()
    res = run_python("while True:\n    pass", limits)
    elapsed = time.monotonic() - start
    assert res.status == "timeout" and "wall" in res.detail
    assert elapsed < limits.wall_s + SLACK_S
    assert not _gone_soon(lambda uid, _: UID_BASE <= uid < UID_BASE + UID_SLOTS)


@pytest.mark.slow
def test_cpu_limit_kills_even_when_sigxcpu_is_ignored():
    src = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass"
    res = run_python(src, SandboxLimits(cpu_s=1, wall_s=20))
    assert res.status == "timeout" and "CPU" in res.detail
    assert res.wall_s < 10  # the hard limit (cpu_s + 1) fired, not the wall clock


@pytest.mark.slow
def test_fork_bomb_is_bounded_and_leaves_nothing():
    # Count how many processes the program can hold at once: bounded by max_processes.
    count = (
        "import os, time\nn = 0\n"
        "while n < 1000:\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
        "    n += 1\nprint(n)"
    )
    res = run_python(count, SandboxLimits(wall_s=10, max_processes=8))
    assert res.status == "passed", res
    assert int(res.stdout) == 7  # 8 processes: the program and 7 children
    # A real fork bomb that ignores errors and forks for ever: contained until the wall limit.
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    res = run_python(bomb, SandboxLimits(wall_s=3, max_processes=16))
    assert res.status == "timeout"
    assert not _gone_soon(lambda uid, _: UID_BASE <= uid < UID_BASE + UID_SLOTS)
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork


def test_unbounded_allocation_hits_the_memory_limit():
    res = run_python("x = []\nwhile True:\n    x.append(bytearray(10 ** 7))",
                     SandboxLimits(memory_mb=200, wall_s=20))
    assert res.status == "memory" and "MemoryError" in res.errors
    assert len(bytearray(300 * 2 ** 20)) == 300 * 2 ** 20  # the caller can still allocate


def test_socket_to_a_server_of_the_caller_fails_and_server_gets_nothing():
    received: list[bytes] = []
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            received.append(conn.recv(100) or b"<connected>")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        src = (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'leak')\n"
        )
        res = run_python(src, FAST)
        assert res.status == "failed"
        assert res.errors and res.errors[0] in ("OSError", "ConnectionRefusedError")
        outside = "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)"
        assert run_python(outside, FAST).status == "failed"
        # The server itself works: the caller can reach it.
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"host")
        for _ in range(50):
            if received:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert received == [b"host"]  # only the caller's own connection arrived


@pytest.fixture()
def outside_dir():
    """A world-writable directory (and file) outside the sandbox, visible to it, so only the
    sandbox's read-only mounts, not file permissions, stand between the program and it."""
    root = Path(__file__).resolve().parent
    path = Path(tempfile.mkdtemp(prefix=".sandbox-outside-", dir=root))
    try:
        os.chmod(path, 0o777)
        victim = path / "victim.txt"
        victim.write_text("precious")
        os.chmod(victim, 0o666)
        yield path
    finally:
        shutil.rmtree(path)


def test_writing_and_deleting_outside_the_work_dir_fails(outside_dir):
    victim = outside_dir / "victim.txt"
    attempts = [
        f"open({str(victim)!r}, 'w').write('overwritten')",
        f"import os\nos.remove({str(victim)!r})",
        f"open({str(outside_dir / 'new.txt')!r}, 'w').write('x')",
        f"import shutil\nshutil.rmtree({str(outside_dir)!r})",
        "open('/etc/r1l-sandbox-test', 'w').write('x')",
    ]
    for src in attempts:
        res = run_python(src, FAST)
        assert res.status == "failed", (src, res)
        assert res.errors and res.errors[0] in ("OSError", "PermissionError", "FileNotFoundError")
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in outside_dir.iterdir()) == ["victim.txt"]
    assert not os.path.exists("/etc/r1l-sandbox-test")


def test_work_dir_is_private_and_gone_afterwards():
    canary = f"r1l-canary-{uuid.uuid4().hex}"
    src = (
        "import os, tempfile\n"
        f"open('/tmp/{canary}', 'w').write('x')\n"
        f"open(os.path.join(tempfile.gettempdir(), '{canary}.2'), 'w').write('x')\n"
        f"open('/dev/shm/{canary}', 'w').write('x')\n"
        "print(os.getcwd(), sorted(os.listdir('/tmp')))"
    )
    res = run_python(src, FAST)
    assert res.passed, res
    assert res.stdout.startswith("/tmp ")
    for path in (f"/tmp/{canary}", f"/tmp/{canary}.2", f"/dev/shm/{canary}"):
        assert not os.path.exists(path)  # nothing reached the host
    # A second run starts from an empty directory: nothing of the first one is left.
    again = run_python(f"import os\nprint(os.path.exists('/tmp/{canary}'), os.listdir('/tmp'))",
                       FAST)
    assert again.stdout.strip() == "False []"


def test_parent_environment_is_not_visible(monkeypatch):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("R1L_TEST_SECRET", secret)
    src = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()] + "
        f"['{os.getpid()}', '{os.getppid()}']:\n"
        "    try:\n"
        "        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as e:\n"
        "        print(pid, type(e).__name__)\n"
    )
    res = run_python(src, FAST)
    assert res.passed, res
    assert secret not in res.stdout and secret not in res.stderr
    assert "R1L_TEST_SECRET" not in res.stdout
    assert "'HOME': '/tmp'" in res.stdout  # the fixed sandbox environment


def test_killing_the_parent_or_everything_fails():
    sentinel = subprocess.Popen(["sleep", "60"])
    try:
        src = (
            "import os, signal, subprocess\n"
            f"for pid in ({os.getpid()}, {sentinel.pid}, os.getppid()):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "    except OSError as e:\n"
            "        print(pid, type(e).__name__)\n"
            "subprocess.run(['kill', '-9', '-1'])\n"
            "os.kill(-1, signal.SIGKILL)\n"
        )
        res = run_python(src, FAST)
        # The program may kill itself with kill -1 (same uid), but nothing outside.
        assert res.status in ("failed", "passed")
        assert sentinel.poll() is None  # the host process is alive
        os.kill(os.getpid(), 0)  # and so are we (this line runs at all)
    finally:
        sentinel.kill()
        sentinel.wait()


def test_early_exit_does_not_count_as_passed():
    ok = "def f():\n    return 1"
    for exit_call in ("import os; os._exit(0)", "import sys; sys.exit(0)", "raise SystemExit"):
        # mid-test: the remaining test never runs
        res = run_python(ok, FAST, tests=["assert f() == 1", exit_call, "assert f() == 2"])
        assert res.status == "failed", exit_call
        # in the program itself, before any test
        assert run_python(f"{ok}\n{exit_call}", FAST, tests=["assert f() == 1"]).status == "failed"
    # Printing what a harness might print, on every descriptor, forges nothing.
    forge = (
        "import os\n"
        "for fd in range(3, 20):\n"
        "    for line in (b'source ok\\n', b'test 0 ok\\n', b'done\\n'):\n"
        "        try:\n"
        "            os.write(fd, line)\n"
        "        except OSError:\n"
        "            pass\n"
        "print('done')\n"
        "os._exit(0)"
    )
    assert run_python(forge, FAST, tests=["assert False"]).status == "failed"


def test_output_flood_is_bounded_and_does_not_hang():
    limits = SandboxLimits(wall_s=10, max_output_bytes=10_000)
    for stream in ("sys.stdout", "sys.stderr"):
        start = time.monotonic()
        res = run_python(f"import sys\nwhile True:\n    {stream}.write('x' * 4096)", limits)
        assert res.status == "output_limit"
        assert len(res.stdout) <= 10_000 and len(res.stderr) <= 10_000
        assert time.monotonic() - start < 5  # killed at the limit, not at the wall clock


@pytest.mark.slow
def test_children_are_killed_on_timeout_and_on_exit():
    for tail in ("while True:\n    pass", "print('bye')"):
        marker = str(900_000 + int(uuid.uuid4().int % 90_000))  # unique sleep length
        src = (
            "import os, subprocess\n"
            f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
            # a daemon: double fork + setsid, the classic way out of a process group
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            f"        os.execvp('sleep', ['sleep', '{marker}'])\n"
            "    os._exit(0)\n"
            "import time; time.sleep(0.5)\n"
            f"{tail}\n"
        )
        res = run_python(src, SandboxLimits(wall_s=3))
        assert res.status == ("timeout" if "while" in tail else "passed")
        assert not _gone_soon(lambda _, cmd, m=marker: cmd.strip() == f"sleep {m}")


def test_run_many_keeps_order_bounds_the_pool_and_uses_distinct_uids():
    srcs = [f"import os, time\ntime.sleep(0.5)\nprint({i}, os.getuid())" for i in range(6)]
    start = time.monotonic()
    results = run_many(srcs, FAST, max_workers=2)
    elapsed = time.monotonic() - start
    assert [r.stdout.split()[0] for r in results] == [str(i) for i in range(6)]
    assert elapsed >= 1.5  # 6 runs of 0.5 s, 2 at a time: 3 waves
    if os.geteuid() == 0 and sandbox._resolve_mode("auto") == "root":
        uids = [int(r.stdout.split()[1]) for r in results]
        assert all(UID_BASE <= u < UID_BASE + UID_SLOTS for u in uids)
        # two at a time: neighbours in a wave never share a uid
        assert all(uids[k] != uids[k + 1] for k in range(0, 6, 2))


def test_run_many_deadline_skips_unstarted_programs():
    srcs = ["import time\ntime.sleep(5)"] * 4
    start = time.monotonic()
    results = run_many(srcs, FAST, max_workers=1, deadline=time.monotonic() + 1.5)
    assert time.monotonic() - start < 1.5 + SLACK_S
    assert results[0].status == "timeout"
    assert results[0].detail.startswith(sandbox.DEADLINE_DETAIL)
    assert results[1:] == [None, None, None]


def test_limits_are_validated():
    for bad in ({"cpu_s": 0}, {"wall_s": -1}, {"wall_s": float("nan")}, {"memory_mb": 1},
                {"max_processes": 0}, {"max_output_bytes": 1.5}, {"disk_mb": True}):
        with pytest.raises(ValueError):
            SandboxLimits(**bad)


def test_missing_tool_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    monkeypatch.setattr(sandbox.os, "access", lambda path, mode: False)
    with pytest.raises(SandboxUnavailable, match="unshare"):
        run_python("print(1)", FAST, mode="root")


@pytest.mark.skipif(os.geteuid() != 0, reason="forces root mode")
def test_userns_mode_contains_the_basics(outside_dir):
    """The mode ordinary users get. (Run here as root, where the namespace's uid 0 is the
    host's root: RLIMIT_NPROC does not bind then, so the fork bomb is not tested.)"""
    victim = outside_dir / "victim.txt"
    src = (
        "import os, socket\n"
        "print(os.getuid())\n"
        f"for act in (lambda: open({str(victim)!r}, 'w'), lambda: os.remove({str(victim)!r}),\n"
        "            lambda: socket.create_connection(('127.0.0.1', 22), timeout=1),\n"
        "            lambda: os.listdir('/root/.ssh')):\n"
        "    try:\n"
        "        act()\n"
        "        print('ALLOWED')\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__)\n"
    )
    res = run_python(src, FAST, mode="userns")
    assert res.passed, res
    assert "ALLOWED" not in res.stdout
    assert victim.read_text() == "precious"
    assert run_python("while True:\n    pass", SandboxLimits(wall_s=2), mode="userns").status \
        == "timeout"


@pytest.mark.slow
def test_caller_death_does_not_leave_the_program_running():
    """The namespace's PID 1 enforces the wall clock itself: kill the caller mid-run."""
    marker = str(800_000 + int(uuid.uuid4().int % 90_000))
    code = (
        "from r1lightning.sandbox import run_python, SandboxLimits\n"
        f"run_python(\"import subprocess\\nsubprocess.run(['sleep', '{marker}'])\", "
        "SandboxLimits(wall_s=2))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    caller = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        for _ in range(100):  # wait until the program runs
            if _host_pids_where(lambda _, cmd: cmd.strip() == f"sleep {marker}"):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the sandboxed program never started")
    finally:
        caller.send_signal(signal.SIGKILL)
        caller.wait()
    # unshare survives its caller, but PID 1's alarm (wall_s + 1) ends the namespace.
    assert not _gone_soon(lambda _, cmd: cmd.strip() == f"sleep {marker}", timeout=6.0)


def test_namespace_failure_is_a_clear_error_not_an_unsandboxed_run(monkeypatch):
    """When unshare cannot create the namespaces (here: an option it refuses, as it refuses
    --user where user namespaces are disabled) the caller gets SandboxUnavailable."""
    real = sandbox._command

    def refused(*args, **kwargs):
        cmd = real(*args, **kwargs)
        return [cmd[0], "--user-namespaces-disabled-here"] + cmd[1:]

    monkeypatch.setattr(sandbox, "_command", refused)
    # Once the sandbox has worked in this process, a failure is that run's "error" ...
    res = run_python("print('ran')", FAST)
    assert res.status == "error" and "could not set up the sandbox" in res.detail
    assert "ran" not in res.stdout
    # ... before that (a fresh process on a host without user namespaces), it raises.
    monkeypatch.setattr(sandbox, "_checked", {})
    with pytest.raises(SandboxUnavailable, match="could not set up the sandbox"):
        run_python("print('ran')", FAST)
    with pytest.raises(SandboxUnavailable):
        check_sandbox()


UNPRIVILEGED_CALLER = r"""
import json, os, sys
import sandbox
victim, sentinel = sys.argv[1], int(sys.argv[2])
limits = sandbox.SandboxLimits(wall_s=5, max_processes=8)
fork = ("import os, time\nn = 0\nwhile n < 100:\n    try:\n        pid = os.fork()\n"
        "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n"
        "        os._exit(0)\n    n += 1\nprint(n)")
out = {"mode": sandbox._resolve_mode("auto"), "uid": os.getuid()}
for name, src in [
    ("fork", fork),
    ("write", f"open({victim!r}, 'w').write('overwritten')"),
    ("net", "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)"),
    ("kill", f"import os\nfor pid in ({sentinel}, -1):\n    try:\n        os.kill(pid, 9)\n"
             "    except OSError:\n        pass"),
    ("loop", "while True:\n    pass"),
]:
    res = sandbox.run_python(src, limits)
    out[name] = [res.status, res.stdout.strip(), res.errors]
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="needs root to become an unprivileged user, and a system python")
def test_unprivileged_caller_gets_userns_mode(tmp_path, outside_dir):
    """What a cluster user gets: the caller is uid 65534 with no capabilities, so the sandbox
    uses an unprivileged user namespace and the program has the caller's uid on the host. A
    sentinel process of that same uid survives kill -1: only the PID namespace protects it."""
    import json

    work = Path(tempfile.mkdtemp(prefix="sandbox-unpriv-"))
    try:
        shutil.copy(sandbox.__file__, work / "sandbox.py")  # stdlib only: importable alone
        os.chmod(work, 0o755)
        os.chmod(work / "sandbox.py", 0o644)
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all"]
        sentinel = subprocess.Popen(drop + ["sleep", "60"])
        try:
            victim = outside_dir / "victim.txt"
            proc = subprocess.run(
                drop + ["/usr/bin/python3", "-c", UNPRIVILEGED_CALLER, str(victim),
                        str(sentinel.pid)],
                cwd=work, capture_output=True, text=True, timeout=120,
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(work)},
            )
            if "SandboxUnavailable" in proc.stderr:
                pytest.skip(f"no unprivileged user namespaces here: {proc.stderr[-300:]}")
            assert proc.returncode == 0, proc.stderr
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            assert out["mode"] == "userns" and out["uid"] == 65534
            assert out["fork"][0] == "passed" and int(out["fork"][1]) < 8  # RLIMIT_NPROC binds
            assert out["write"][0] == "failed" and victim.read_text() == "precious"
            assert out["net"][0] == "failed"
            assert sentinel.poll() is None  # same host uid as the program, still alive
            assert out["loop"][0] == "timeout"
        finally:
            sentinel.kill()
            sentinel.wait()
    finally:
        shutil.rmtree(work)
