"""A step-indexed schedule for the longest completion GRPO samples (DeepSeek-R1's 32,768 -> 65,536).

DeepSeek-R1 trained R1-Zero with a maximum generation length of 32,768 tokens and raised it to
65,536 at step 8,200 (of 10,400): by then responses had grown long enough that the cap truncated
many of them, and a truncated completion earns no accuracy reward. A fixed cap forces a choice
between wasting memory early and cutting the model's reasoning off late; a schedule avoids both.

Schedules (``trainer.global_step``, which counts optimizer steps as the paper's steps do):

* ``"r1"``: ``start`` (32,768) before ``at_step`` (8,200), ``end`` (65,536) from then on.
* ``"linear"``: from ``start`` at step 0 to ``end`` at ``ramp_steps``, then ``end``. Intermediate
  values are rounded to the nearest multiple of ``multiple_of`` (default 64), so the length
  changes in a few coarse increments (cheaper for engines that compile or pre-allocate per
  length) and stays on a hardware-friendly size; ``start`` and ``end`` themselves are exact.
* ``"steps"``: piecewise constant from ``milestones``, ``[(step, length), ...]`` with strictly
  increasing steps; before the first milestone the length is ``start``.

The callback sets ``pl_module.sampling.max_new_tokens`` before every training batch (so it is the
same on every rank, keyed off ``global_step``). Nothing else needs telling: the engines keep no
sampling state of their own but build their sampling parameters from the ``SamplingSettings`` passed
to each ``generate`` call, so the next rollout already uses the new cap, and so does everything in
GRPO that reads it: truncation, the DAPO overlong penalty window and the Dr. GRPO normaliser. What an
engine does fix at start-up is its context length: when the engine reports a ``max_model_len`` below
the scheduled cap a warning is logged once (vLLM cuts each completion to ``max_model_len`` minus the
prompt length, reported as truncated), naming the option to raise. Held-out evaluation
(``eval_sampling``) is not touched. Logged as ``gen/max_new_tokens``. The last applied length and
step are saved in checkpoints; on resume the schedule is re-applied at the restored step before the
first batch (and a warning is given when it disagrees with the checkpoint, i.e. the schedule was
changed between runs).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

__all__ = ["GenerationLengthScheduler"]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer number of tokens, got {value!r}")
    return value


def _step(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer step, got {value!r}")
    return value


class GenerationLengthScheduler(Callback):
    """Sets ``pl_module.sampling.max_new_tokens`` from a step schedule (R1: 32,768 -> 65,536 at step 8,200)."""

    def __init__(
        self,
        schedule: Literal["r1", "linear", "steps"] = "r1",
        milestones: list[tuple[int, int]] | None = None,
        start: int = 32768,
        end: int = 65536,
        ramp_steps: int = 0,
        at_step: int = 8200,
        multiple_of: int = 64,
    ):
        """
        Args:
            schedule: 'r1' (start, then end from at_step), 'linear' (start -> end over ramp_steps) or
                'steps' (piecewise constant from milestones).
            milestones: 'steps' only: [[step, length], ...], steps strictly increasing; start applies before the first.
            start: Length at step 0 (R1: 32,768).
            end: Final length for 'r1' and 'linear' (R1: 65,536).
            ramp_steps: 'linear' only: steps from start to end (>= 1).
            at_step: 'r1' only: the step the length switches to end (R1: 8,200).
            multiple_of: 'linear' only: intermediate lengths are rounded to a multiple of this.
        """
        if schedule not in ("r1", "linear", "steps"):
            raise ValueError(f"schedule must be 'r1', 'linear' or 'steps', got {schedule!r}")
        self.schedule = schedule
        self.start = _positive_int("start", start)
        self.end = _positive_int("end", end)
        self.at_step = _step("at_step", at_step)
        self.ramp_steps = _step("ramp_steps", ramp_steps)
        self.multiple_of = _positive_int("multiple_of", multiple_of)
        if milestones is not None and schedule != "steps":
            raise ValueError(f"milestones are only used by schedule='steps' (got schedule={schedule!r}); "
                             "remove them or set schedule: steps")
        if schedule == "linear" and self.ramp_steps < 1:
            raise ValueError("schedule='linear' needs ramp_steps >= 1 (the steps from start to end)")
        self.milestones: list[tuple[int, int]] = []
        if schedule == "steps":
            if not milestones:
                raise ValueError("schedule='steps' needs milestones, e.g. [[0, 32768], [8200, 65536]]")
            for k, item in enumerate(milestones):
                if not isinstance(item, (list, tuple)) or len(item) != 2:
                    raise ValueError(f"milestones[{k}] must be a (step, length) pair, got {item!r}")
                self.milestones.append((_step(f"milestones[{k}] step", item[0]),
                                        _positive_int(f"milestones[{k}] length", item[1])))
            steps = [s for s, _ in self.milestones]
            if any(b <= a for a, b in itertools.pairwise(steps)):
                raise ValueError(f"milestone steps must be strictly increasing, got {steps}")
        self.last_length: int | None = None
        self.last_step: int | None = None
        self._restored: tuple[int | None, int | None] | None = None
        self._warned: tuple[int, int] | None = None

    def max_new_tokens_at(self, step: int) -> int:
        """The scheduled length at optimizer step ``step``."""
        if self.schedule == "r1":
            return self.start if step < self.at_step else self.end
        if self.schedule == "linear":
            if step <= 0:
                return self.start
            if step >= self.ramp_steps:
                return self.end
            value = self.start + (self.end - self.start) * step / self.ramp_steps
            lo, hi = sorted((self.start, self.end))
            return min(hi, max(lo, self.multiple_of * int(value / self.multiple_of + 0.5)))
        length = self.start
        for s, n in self.milestones:
            if step < s:
                break
            length = n
        return length

    def apply(self, pl_module: pl.LightningModule, step: int) -> int:
        """Set the scheduled length for ``step`` on ``pl_module.sampling``; returns it."""
        sampling = getattr(pl_module, "sampling", None)
        if sampling is None or not hasattr(sampling, "max_new_tokens"):
            raise TypeError(f"GenerationLengthScheduler needs a module with `sampling.max_new_tokens` (GRPOModule); "
                            f"{type(pl_module).__name__} has none")
        length = self.max_new_tokens_at(step)
        if sampling.max_new_tokens != length:
            log.info("GenerationLengthScheduler: max_new_tokens %s -> %d at step %d", sampling.max_new_tokens, length, step)
            sampling.max_new_tokens = length
        # the engine reads max_new_tokens from the SamplingSettings of each generate call; only its
        # context length is fixed when it starts
        max_model_len = getattr(getattr(pl_module, "engine", None), "max_model_len", None)
        if isinstance(max_model_len, int) and length > max_model_len and self._warned != (length, max_model_len):
            self._warned = (length, max_model_len)  # once per (length, engine limit), not every step
            log.warning("GenerationLengthScheduler: max_new_tokens=%d exceeds the engine's max_model_len=%d, so "
                        "completions are cut at max_model_len minus the prompt length (and count as truncated); "
                        "raise max_model_len in r1lightning.rollout.VLLMEngineSettings (YAML: "
                        "model.init_args.rollout.init_args.max_model_len) to at least the longest prompt + %d",
                        length, max_model_len, length)
        self.last_length, self.last_step = length, step
        return length

    # ---------------------------------------------------------------- Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not hasattr(getattr(pl_module, "sampling", None), "max_new_tokens"):
            raise TypeError(f"GenerationLengthScheduler needs a module with `sampling.max_new_tokens` (GRPOModule); "
                            f"{type(pl_module).__name__} has none")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs after the checkpoint's global_step is restored: the first rollout already uses the resumed length.
        length = self.apply(pl_module, trainer.global_step)
        if self._restored is not None:
            old_length, old_step = self._restored
            if old_length is not None and old_length != length:
                log.warning("GenerationLengthScheduler: the checkpoint used max_new_tokens=%d at step %s; the "
                            "configured schedule gives %d at step %d (using %d)", old_length, old_step, length,
                            trainer.global_step, length)
            self._restored = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        length = self.apply(pl_module, trainer.global_step)
        pl_module.log("gen/max_new_tokens", float(length), on_step=True, on_epoch=False, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"last_length": self.last_length, "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_length = state_dict.get("last_length")
        self.last_step = state_dict.get("last_step")
        self._restored = (self.last_length, self.last_step)
