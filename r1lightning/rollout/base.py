"""The rollout-engine interface: token ids in, G sampled completions per prompt out.

Engines (HF ``generate`` now, vLLM colocated) differ only in speed; the trainer sees the same
:class:`RolloutBatch`. Completions come back group-contiguous: the G samples of prompt i occupy rows
``i*G .. i*G+G-1``, so group-relative advantages are computed without any reshuffling.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SamplingSettings:
    """How completions are sampled (mapped one to one onto each engine's parameters)."""

    n: int = 8
    """Completions per prompt (GRPO's group size G; R1 used 16)."""
    temperature: float = 1.0
    """Sampling temperature (R1 RL: 1.0; R1 evaluation: 0.6)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    max_new_tokens: int = 512
    """Longest completion; longer ones are cut and reported as truncated (R1: 32,768 -> 65,536)."""
    stop: Optional[list[str]] = None
    """Extra stop strings (the tokenizer's eos always stops)."""
    seed: Optional[int] = None
    """Sampling seed (None = not reseeded)."""
    logprobs: bool = False
    """Return the engine's log-prob of each sampled token (train/inference mismatch diagnostics)."""

    def __post_init__(self) -> None:
        # checked when built (YAML, dataclasses.replace): a bad value fails here, naming itself, instead of deep
        # inside an engine at the first rollout. temperature 0 is legitimate here (every engine samples greedily
        # at temperature <= 0, as evaluation may want); GRPOModule refuses it for its training rollouts.
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"sampling n must be an int >= 1 (completions per prompt), got {self.n!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(
                f"sampling temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"sampling max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"sampling top_k must be an int >= 0 (0 = off), got {self.top_k!r}")


@dataclass
class RolloutBatch:
    """Sampled completions, ``len(prompt_ids) * n`` rows, group-contiguous."""

    prompt_ids: list[list[int]]
    """Per prompt (not repeated)."""
    completion_ids: list[list[int]]
    """Per completion, including the eos token when the completion stopped on it."""
    texts: list[str]
    """Decoded completions (special tokens removed, reasoning tags kept)."""
    truncated: list[bool]
    """True where generation hit max_new_tokens before eos / a stop string."""
    n: int
    logprobs: Optional[list[list[float]]] = None
    stats: dict = field(default_factory=dict)

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


class RolloutEngine(ABC):
    """Generates from the current policy. Engines that hold their own copy of the weights
    (``holds_weights``) implement :meth:`update_weights`; the LightningModule calls it before a rollout
    whenever the policy changed since the last push, then tells the callbacks (``on_engine_sync``)."""

    holds_weights: bool = False

    @abstractmethod
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> RolloutBatch: ...

    def close(self) -> None:
        """Release what the engine holds (nothing by default)."""

    def update_weights(self, policy) -> dict:
        """Push the policy's current weights; returns ``{"seconds", "bytes", "tensors", ...}`` ({} = nothing to do)."""
        return {}


class EngineSettings:
    """How to build a rollout engine; one subclass per engine, picked in YAML by ``class_path``::

        rollout:
          class_path: r1lightning.rollout.VLLMEngineSettings
          init_args: {gpu_memory_utilization: 0.35}

    A plain class rather than a dataclass: jsonargparse offers ``class_path`` selection (and lists each
    subclass's ``__init__`` arguments in ``--help``) for ordinary classes. Subclasses keep their
    arguments as attributes of the same names; equality and ``repr`` follow those attributes, so
    settings restored from a checkpoint's hyperparameters compare equal to the originals.
    """

    # Asynchronous rollouts (class defaults: settings pickled before these existed still load, synchronous).
    async_rollouts: bool = False
    max_staleness: int = 1
    tis_cap: float = 2.0

    def _set_async(self, async_rollouts: bool, max_staleness: int, tis_cap: float) -> None:
        """Check and keep the asynchronous-rollout arguments every engine settings class takes:

        * ``async_rollouts``: the engine generates the next rollout batch in a background thread
          (:class:`~r1lightning.rollout.async_worker.RolloutWorker`) while the trainer optimises on the
          current one. Off by default: exact on-policy GRPO.
        * ``max_staleness``: most policy versions (training steps that changed the weights) between the
          weights that sampled a batch and the weights at the start of the step that trains it. The
          pipeline keeps one batch in flight, so 1 is the only value implemented (a larger one would need
          a weight snapshot per queued batch); it is checked on every trained batch.
        * ``tis_cap``: truncation ``C`` of the per-token importance weight ``min(pi_old / pi_behaviour, C)``
          (verl's ``tis_imp_ratio_cap``, default 2) that corrects for the stale sampler.
        """
        if not isinstance(async_rollouts, bool):
            raise ValueError(f"async_rollouts must be true or false, got {async_rollouts!r}")
        if isinstance(max_staleness, bool) or not isinstance(max_staleness, int) or max_staleness != 1:
            raise ValueError(f"max_staleness={max_staleness!r}: only 1 is implemented (one rollout batch in flight "
                             "while the trainer optimises on the previous one)")
        if not (isinstance(tis_cap, (int, float)) and not isinstance(tis_cap, bool) and math.isfinite(tis_cap)
                and tis_cap > 0):
            raise ValueError(f"tis_cap must be a finite number > 0, got {tis_cap!r}")
        self.async_rollouts = async_rollouts
        self.max_staleness = max_staleness
        self.tis_cap = float(tis_cap)

    def build(self, policy) -> RolloutEngine:
        """The engine for ``policy`` (a :class:`~r1lightning.policy.Policy`), holding its current weights."""
        raise NotImplementedError(f"{type(self).__name__} must implement build(policy)")

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, repr(sorted(vars(self).items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"
