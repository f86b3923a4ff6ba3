"""The rollout-engine interface: token ids in, G sampled completions per prompt out.

Engines (HF ``generate`` now, vLLM colocated) differ only in speed; the trainer sees the same
:class:`RolloutBatch`. Completions come back group-contiguous: the G samples of prompt i occupy rows
``i*G .. i*G+G-1``, so group-relative advantages are computed without any reshuffling.
"""

from __future__ import annotations

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
    """Generates from the current policy. Engines that hold their own copy of the weights implement
    :meth:`update_weights`; the trainer (or ``VLLMRolloutRefresh``) calls it after optimizer steps."""

    holds_weights: bool = False

    @abstractmethod
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> RolloutBatch: ...

    def update_weights(self, policy) -> dict:
        return {}
