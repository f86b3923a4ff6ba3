"""Preemption: a run stopped by its scheduler leaves a checkpoint and says so in its exit code.

Lightning's signal connector already turns SIGTERM into ``trainer.received_sigterm`` and stops the loop
at the next batch boundary, but the process then exits with status 0 and saves nothing, so a scheduler
(and the person reading its log) cannot tell a preempted run from a finished one. :class:`Preemption`
adds the two missing pieces:

- at the end of the training batch in which the signal arrived it saves ``<checkpoint dir>/preempted.ckpt``
  (the ModelCheckpoint's folder; the same point in the loop where ModelCheckpoint saves, so resuming from
  it is an ordinary ``--ckpt_path`` resume);
- the process exits with ``128 + signal`` (143 for SIGTERM), the shell convention for "killed by a signal".

SIGUSR1 is treated like SIGTERM unless Lightning's SLURM auto-requeue owns it: under SLURM
(``SLURMEnvironment(auto_requeue=True)``, Lightning's default there) SIGUSR1 saves Lightning's
``hpc_ckpt_N.ckpt`` and requeues the job, and the requeued job resumes from it by itself.

Under DDP the decision is all-reduced once per training batch on every rank, so every rank saves
(``trainer.save_checkpoint`` is collective) and stops at the same step even if only one got the signal.
``r1lightning.cli.R1CLI`` adds this callback to every run that does not list it.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info


class Preemption(pl.Callback):
    """On SIGTERM (or SIGUSR1 outside SLURM auto-requeue): checkpoint at the next batch boundary, exit 128 + signal."""

    def __init__(self, filename: str = "preempted.ckpt"):
        """
        Args:
            filename: Checkpoint file written into the ModelCheckpoint's folder
                (``<default_root_dir>/checkpoints`` without one).
        """
        self.filename = filename
        self.signum: Optional[int] = None  # the signal that stopped the run
        self.saved_path: Optional[str] = None
        self._sigusr1_registered = False

    # ------------------------------------------------------------------ signals
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        env = trainer._accelerator_connector.cluster_environment
        slurm_requeue = isinstance(env, SLURMEnvironment) and env.auto_requeue
        if not slurm_requeue and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGUSR1, self._on_sigusr1)  # restored by Lightning's signal connector teardown
            self._sigusr1_registered = True

    def _on_sigusr1(self, signum: int, _frame: Any) -> None:
        self.signum = signum
        trainer = self._trainer
        if trainer is not None:
            # what Lightning's own SIGTERM handler sets: the loops stop at the next batch boundary
            trainer._signal_connector.received_sigterm = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._sigusr1_registered and signal.getsignal(signal.SIGUSR1) == self._on_sigusr1:
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self._sigusr1_registered = False
        self._trainer = None

    # ------------------------------------------------------------------ checkpoint
    def checkpoint_path(self, trainer: pl.Trainer) -> str:
        ckpt = trainer.checkpoint_callback
        folder = getattr(ckpt, "dirpath", None) or os.path.join(trainer.default_root_dir, "checkpoints")
        return os.path.join(folder, self.filename)

    def _save(self, trainer: pl.Trainer) -> None:
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        self.saved_path = path
        rank_zero_info(f"Preemption: signal {self.signum} -> saved {path} at step {trainer.global_step}; resume with "
                       f"--ckpt_path {path}")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # every rank, every batch, the same collective: a rank that got no signal still saves and stops with the rest
        stop = trainer.strategy.reduce_boolean_decision(bool(trainer.received_sigterm), all=False)
        if not stop or self.saved_path is not None:
            return
        if self.signum is None:
            self.signum = int(signal.SIGTERM)
        trainer._signal_connector.received_sigterm = True  # Lightning raises SIGTERMException right after this hook
        self._save(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        if self.signum is None:
            self.signum = int(signal.SIGTERM)
        if self.saved_path is None:  # the signal came outside a training batch (e.g. during validation)
            self._save(trainer)
        # Lightning's SIGTERMException is a SystemExit without a code, i.e. status 0: make the stop visible
        exception.code = 128 + self.signum
