"""A rollout engine's work done in a process of its own (asynchronous rollouts).

With rollouts in a thread of the training process the two phases take turns on the GIL (generation loops,
vLLM's scheduler and Lightning are Python), so an asynchronous step is barely shorter than a synchronous one.
:class:`EngineProcess` runs a server in a spawned process and answers requests over a pipe; the calling
thread (the rollout worker) waits in ``poll`` without holding the GIL. Used by
:class:`~r1lightning.rollout.hf.HFProcessRolloutEngine` and
:class:`~r1lightning.rollout.vllm.VLLMProcessRolloutEngine`.

Protocol: the trainer sends ``(op, args)``; the server answers ``("ok", value)`` or ``("error", text)``, and
stops on ``None`` or when the pipe closes (the trainer died: no orphan is left). One request at a time: the
asynchronous protocol never overlaps a push, a probe and a generate.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any, Optional

log = logging.getLogger(__name__)

PROCESS_NAME = "r1l-engine"
"""Name of every engine process (tests look for leftovers by it)."""


def serve(conn, handlers: dict[str, Callable[..., Any]], ready: Any = None,
          on_exit: Optional[Callable[[], None]] = None) -> None:
    """The server loop, run in the engine process: announce ``ready``, then answer ``(op, args)`` with
    ``handlers[op](*args)`` until told to stop (None) or the pipe closes; ``on_exit`` runs either way."""
    try:
        conn.send(("ready", ready))
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if msg is None:
                return
            op, args = msg
            try:
                reply = ("ok", handlers[op](*args))
            except Exception as exc:  # reported to the trainer, which raises it there
                reply = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            try:
                conn.send(reply)
            except (BrokenPipeError, OSError):
                return
    finally:
        if on_exit is not None:
            on_exit()


class EngineProcess:
    """The trainer's side of an engine process: start it, call it, stop it.

    ``target(conn, *args)`` runs in a spawned process (``torch.multiprocessing``, so CPU tensors among
    ``args`` arrive as shared memory, not copies) and must call :func:`serve`. The constructor waits for its
    ``ready`` value (:attr:`info`) at most ``start_timeout_s``.
    """

    def __init__(self, target: Callable[..., None], args: tuple, start_timeout_s: float = 300.0,
                 daemon: bool = True):
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=target, name=PROCESS_NAME, daemon=daemon, args=(child, *args))
        self._proc.start()
        child.close()
        self.info = self._receive("start", start_timeout_s)

    def _receive(self, what: str, timeout_s: Optional[float] = None):
        t0 = time.monotonic()
        while not self._conn.poll(1.0):
            if not self._proc.is_alive():
                raise RuntimeError(f"the rollout engine process died during {what} (exit code {self._proc.exitcode})")
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                self.close()
                raise TimeoutError(f"the rollout engine process did not answer {what} within {timeout_s:.0f} s")
        kind, value = self._conn.recv()
        if kind == "error":
            raise RuntimeError(f"the rollout engine process failed in {what}: {value}")
        return value

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    def call(self, op: str, *args):
        """Run ``op`` in the process and return its value (its exception is raised here as a RuntimeError)."""
        if self._proc is None:
            raise RuntimeError("the rollout engine process is closed")
        self._conn.send((op, args))
        return self._receive(op)

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop the process (a running request finishes first); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        proc.join(timeout=timeout_s)
        if proc.is_alive():
            log.warning("the rollout engine process did not stop within %.0f s; terminating it", timeout_s)
            proc.terminate()
            proc.join(timeout=10)
        self._conn.close()


class ProcessBackedEngine:
    """What an engine whose work runs in an :class:`EngineProcess` (``self._process``) shares: the marker the
    module closes such engines by (``runs_in_process``), liveness, ``generate`` through the pipe, and closing."""

    runs_in_process = True
    _process: Optional[EngineProcess] = None

    def _call(self, op: str, *args):
        if self._process is None:
            raise RuntimeError("the rollout engine process is closed")
        return self._process.call(op, *args)

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.alive

    @property
    def pid(self) -> Optional[int]:
        return None if self._process is None else self._process.pid

    def generate(self, prompt_ids, sampling):
        return self._call("generate", [list(p) for p in prompt_ids], sampling)

    def close(self) -> None:
        """Stop the process (a running request finishes first); idempotent."""
        process, self._process = self._process, None
        if process is not None:
            process.close()

    def __del__(self):
        if getattr(self, "_process", None) is not None:
            self.close()
