"""Asynchronous rollouts: one background thread that runs the engine's ``generate`` while the trainer optimises.

Why a thread and not a process. The engines already live in the training process (the HF engine on its own
copy of the weights, vLLM in process with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``), weights are pushed into them
as tensors, without serialisation, and every push is verified by ``VLLMRolloutRefresh`` through the same
engine object. A thread keeps all of that, and overlaps whatever releases the GIL (torch kernels, CUDA work).
Measured limit: with the miniature's 1M-parameter model on CPU the step is dominated by Python (vLLM's
scheduler, Lightning, the HF generate loop), which holds the GIL, so the two threads mostly take turns:
configs/r1.yaml, 100 steps, 1 torch thread each: 4.9 min asynchronous vs 3.8 min synchronous (README). A
separate process (vLLM's multiprocess engine core, pushed in buckets) or an engine on its own device is what
removes that limit; this interface (``generate`` / ``update_weights`` at defined points) stays the same.

The protocol, which is what makes pushes, checkpoints and the staleness bound exact:

* the module submits at most one job at a time (one rollout batch in flight), always after waiting for the
  previous one, so the engine is only ever used by one thread;
* weights are pushed (and verified) only by the module's thread, only while no job runs (``idle``);
* every job records the policy version of the weights it sampled from (:class:`RolloutJob`);
* :meth:`RolloutWorker.close` cancels what has not started and waits for what has: after it returns no
  thread of this worker is alive.

CPU threads: torch's intra-op thread count is process-wide. While a worker runs, the trainer and the
engine share the cores; :class:`RolloutWorker` halves ``torch.get_num_threads()`` (at least 1 each), so
the two thread pools do not oversubscribe the cores (on 2 cores: 1 + 1; two OpenMP pools of 2 threads on a
loaded 2-core machine spin against each other), and restores the count at :meth:`close`.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from r1lightning.rollout.base import RolloutBatch, RolloutEngine, SamplingSettings

log = logging.getLogger(__name__)

THREAD_PREFIX = "r1l-rollout"
"""Name prefix of the worker thread (tests look for leftovers by it)."""


@dataclass
class RolloutJob:
    """One rollout batch handed to the worker: the prompts, their data columns, and the versions of the
    weights the engine held when it started (they cannot change while the job runs: no push while busy)."""

    prompt_ids: list[list[int]]
    columns: dict[str, list]
    sampling: SamplingSettings
    policy_version: int
    """Optimizer steps of the sampling weights (``GRPOModule._policy_version``)."""
    rollout_version: int
    """Training steps that changed the weights, up to the sampling weights (what staleness is counted in)."""
    future: Optional[Future] = field(default=None, repr=False)
    result_: Optional[tuple[RolloutBatch, float]] = field(default=None, repr=False)

    def result(self) -> tuple[RolloutBatch, float]:
        """(the rollout, generation seconds); waits for the worker when the job still runs."""
        if self.result_ is None:
            self.result_ = self.future.result()
            self.future = None
        return self.result_

    @property
    def done(self) -> bool:
        return self.result_ is not None or (self.future is not None and self.future.done())

    def state_dict(self) -> dict[str, Any]:
        """Plain data (``torch.load(weights_only=True)`` safe): the finished rollout, not a future."""
        rollout, seconds = self.result()
        return {"prompt_ids": self.prompt_ids, "columns": self.columns, "policy_version": self.policy_version,
                "rollout_version": self.rollout_version, "seconds": seconds,
                "sampling": {k: getattr(self.sampling, k) for k in SamplingSettings.__dataclass_fields__},
                "rollout": {"prompt_ids": rollout.prompt_ids, "completion_ids": rollout.completion_ids,
                            "texts": rollout.texts, "truncated": rollout.truncated, "n": rollout.n,
                            "logprobs": rollout.logprobs, "stats": dict(rollout.stats)}}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "RolloutJob":
        sampling = SamplingSettings(**state["sampling"])
        return cls(prompt_ids=state["prompt_ids"], columns=state["columns"], sampling=sampling,
                   policy_version=int(state["policy_version"]), rollout_version=int(state["rollout_version"]),
                   result_=(RolloutBatch(**state["rollout"]), float(state["seconds"])))


class RolloutWorker:
    """A single background thread generating rollout batches with ``engine`` (see the module docstring)."""

    def __init__(self, engine: RolloutEngine, split_threads: bool = True):
        self.engine = engine
        self._job: Optional[RolloutJob] = None
        self._threads_before: Optional[int] = None
        if split_threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(max(1, self._threads_before // 2))
        self._pool: Optional[ThreadPoolExecutor] = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=THREAD_PREFIX, initializer=_match_threads,
            initargs=(torch.get_num_threads(),))
        self.busy_s = 0.0  # seconds the worker spent generating

    @property
    def idle(self) -> bool:
        """No job is running or queued (the engine may be pushed weights)."""
        return self._job is None or self._job.done

    def submit(self, job: RolloutJob) -> RolloutJob:
        """Start ``job``; the previous job must have finished (one batch in flight, one user of the engine)."""
        if self._pool is None:
            raise RuntimeError("the rollout worker is closed")
        if not self.idle:
            raise RuntimeError("a rollout job is still running: wait for it before submitting the next one")
        job.future = self._pool.submit(self._run, job.prompt_ids, job.sampling)
        self._job = job
        return job

    def _run(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> tuple[RolloutBatch, float]:
        t0 = time.perf_counter()
        out = self.engine.generate(prompt_ids, sampling)
        seconds = time.perf_counter() - t0
        self.busy_s += seconds
        return out, seconds

    def wait(self) -> None:
        """Block until the current job (if any) finished; its result stays in the job."""
        if self._job is not None:
            self._job.result()

    def close(self) -> None:
        """Cancel a job that has not started, wait for a running one, stop the thread; idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None


def _match_threads(n: int) -> None:
    """A new thread's OpenMP pool starts at the machine's default size, not torch's setting; vLLM's CPU attention
    checks that the two agree (its metadata is sized by one, its kernel by the other). Set both in this thread."""
    torch.set_num_threads(n)


def worker_threads_alive() -> list[threading.Thread]:
    """Rollout worker threads alive in this process (none after every worker was closed)."""
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]
