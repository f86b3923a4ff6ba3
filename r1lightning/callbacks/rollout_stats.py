"""Shared plumbing of the callbacks that measure each rollout batch (R1's emergent behaviours).

:class:`~r1lightning.modules.GRPOModule`'s ``training_step`` returns the batch it just trained on as
``outputs["trajectory"]`` (a :class:`~r1lightning.modules.grpo.Trajectory`), which Lightning hands to
``on_train_batch_end``: its ``rollout`` (a :class:`~r1lightning.rollout.base.RolloutBatch`) and the unweighted
per-completion rewards ``per_fn`` (``{label: [score, ...]}``). A subclass turns them into scalars
(``pl_module.log``) and, when the logger is TensorBoard, histograms.

Conventions every subclass follows:

* The step axis is the logger's: the number of training batches (rollout batches) so far,
  which is what Lightning writes the ``pl_module.log`` scalars against. Under GRPO's manual
  optimisation ``trainer.global_step`` counts *optimizer* steps (``num_minibatches`` per rollout),
  so it is not used for logging.
* ``every_n_steps`` skips the work on other batches. Lightning itself writes ``on_step`` scalars
  only every ``Trainer(log_every_n_steps)`` batches, so make ``every_n_steps`` a multiple of that
  or the skipped-by-Lightning batches are computed for nothing (histograms are written anyway).
* A completion is *correct* when ``per_fn[correctness_reward][i] > 0.5`` (the accuracy
  reward is 0 or 1). Without that reward the ``correct`` / ``incorrect`` splits are not logged,
  and one warning says so.
* The same rollout object is never measured twice (a step that produced no new rollout logs
  nothing).
* Under DDP each rank measures its own completions and Lightning's logger writes rank 0's; no
  collectives are issued, so a split missing on one rank cannot hang the others.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from r1lightning.rollout.base import RolloutBatch

log = logging.getLogger(__name__)

__all__ = ["RolloutStatsCallback", "logger_step", "mean", "tensorboard_experiments"]


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean, ``None`` for an empty sequence (the metric is then not logged)."""
    return sum(values) / len(values) if len(values) else None


def logger_step(trainer: Any) -> int:
    """The step Lightning writes ``pl_module.log`` scalars at: training batches so far.

    Lightning's own ``LearningRateMonitor`` reads the same counter. Falls back to
    ``trainer.global_step`` for trainers without a fit loop (tests).
    """
    epoch_loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(epoch_loop, "_batches_that_stepped", None)
    return int(step) if step is not None else int(getattr(trainer, "global_step", 0))


def tensorboard_experiments(trainer: Any) -> list:
    """``SummaryWriter``-like experiments of every TensorBoard logger of ``trainer`` (maybe none)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return [lg.experiment for lg in (getattr(trainer, "loggers", None) or []) if isinstance(lg, TensorBoardLogger)]


class RolloutStatsCallback(Callback):
    """Base class: reads the last rollout after each training batch and logs what :meth:`measure` returns."""

    def __init__(self, correctness_reward: str = "accuracy", log_histograms: bool = True, every_n_steps: int = 1):
        """
        Args:
            correctness_reward: Label in the trajectory's ``per_fn`` whose score > 0.5 marks a correct completion.
            log_histograms: Also write per-completion histograms when the logger is TensorBoard.
            every_n_steps: Measure every N training (rollout) batches.
        """
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        if not isinstance(correctness_reward, str) or not correctness_reward:
            raise ValueError(f"correctness_reward must be a reward label such as 'accuracy', got {correctness_reward!r}")
        self.correctness_reward = correctness_reward
        self.log_histograms = log_histograms
        self.every_n_steps = every_n_steps
        self._seen: Any | None = None  # weak reference to the last rollout measured
        self._warned_correctness = False

    # ---------------------------------------------------------------- subclass API
    def measure(self, rollout: RolloutBatch, correct: list[bool] | None) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Return ``(scalars, histograms)`` for one rollout; ``correct`` is None when unknown."""
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers
    def correctness(self, rewards: Any, n: int) -> list[bool] | None:
        """Per-completion correctness from ``rewards[self.correctness_reward]``, or None (warned once)."""
        scores = rewards.get(self.correctness_reward) if isinstance(rewards, Mapping) else None
        if scores is not None and len(scores) == n:
            return [float(s) > 0.5 for s in scores]
        if not self._warned_correctness:
            self._warned_correctness = True
            if scores is None:
                why = (f"no reward labelled {self.correctness_reward!r} in the trajectory's rewards "
                       f"(labels: {sorted(rewards) if isinstance(rewards, Mapping) else rewards!r})")
            else:
                why = f"reward {self.correctness_reward!r} has {len(scores)} scores for {n} completions"
            log.warning("%s: %s; the correct/incorrect splits are not logged. Set correctness_reward to the "
                        "label of a 0/1 accuracy reward.", type(self).__name__, why)
        return None

    def _is_new(self, rollout: Any) -> bool:
        seen = self._seen() if self._seen is not None else None
        if seen is rollout:
            return False
        try:
            self._seen = weakref.ref(rollout)
        except TypeError:  # an object without weakref support: hold nothing, measure every time
            self._seen = None
        return True

    # ---------------------------------------------------------------- Lightning hook
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        trajectory = outputs.get("trajectory") if isinstance(outputs, Mapping) else None
        rollout = getattr(trajectory, "rollout", None)
        if rollout is None or not getattr(rollout, "texts", None):
            return
        step = logger_step(trainer)
        # `+ 1`: Lightning's own log_every_n_steps test (the counter is bumped after this hook)
        if (step + 1) % self.every_n_steps != 0 or not self._is_new(rollout):
            return
        correct = self.correctness(getattr(trajectory, "per_fn", None) or {}, len(rollout.texts))
        scalars, histograms = self.measure(rollout, correct)
        for name, value in scalars.items():
            pl_module.log(name, float(value), on_step=True, on_epoch=False, batch_size=len(rollout.texts))
        if self.log_histograms:
            import numpy as np

            for experiment in tensorboard_experiments(trainer):
                for tag, values in histograms.items():
                    if len(values):
                        experiment.add_histogram(tag, np.asarray(values, dtype=np.float64), global_step=step)
