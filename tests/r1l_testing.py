"""Helpers shared by tests (a unique module name: several test folders have a conftest.py)."""


def read_scalars(root) -> dict:
    """All TensorBoard scalars under ``root``: {tag: [(step, value), ...]}."""
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict = {}
    for path in sorted(glob.glob(f"{root}/**/events.out.tfevents*", recursive=True)):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def run_process_group(cmd: list, cwd, timeout: int, hang_message: str, pythonpath=None) -> str:
    """Run a multi-process command (ranks, torchrun) in its own session with one torch thread and the repository
    on PYTHONPATH; a hang kills the whole group (no rank left stuck in a collective) and fails with
    ``hang_message``; a non-zero exit fails with the log's tail. Returns the combined stdout / stderr."""
    import os
    import signal
    import subprocess
    from pathlib import Path

    import pytest

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(pythonpath or root)}
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(hang_message)
    assert proc.returncode == 0, log[-4000:]
    return log


def _run_print_config(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """``r1lightning.cli.main(args + ['--print_config'])`` in-process from the repository root (configs may name
    repository-relative paths; pytest's own arguments are not the CLI's): exit code, stdout, stderr."""
    import sys
    from pathlib import Path

    import pytest

    from r1lightning.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.setattr(sys, "argv", ["r1lightning"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def print_config(args: list[str], capsys, monkeypatch) -> dict:
    """The config ``--print_config`` prints for ``args`` (which must parse: exit code 0), as a dict."""
    import yaml

    code, out, err = _run_print_config(args, capsys, monkeypatch)
    assert code == 0, f"{args} exited with {code}:\n{err}"
    return yaml.safe_load(out)


def print_config_error(args: list[str], capsys, monkeypatch) -> str:
    """The stderr of ``--print_config`` for ``args``, which must be refused (non-zero exit)."""
    code, _, err = _run_print_config(args, capsys, monkeypatch)
    assert code != 0
    return err
