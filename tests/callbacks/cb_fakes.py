"""Fakes for the callback unit tests (imported as ``from cb_fakes import ...``; pytest puts this folder on sys.path)."""

from __future__ import annotations

from types import SimpleNamespace

from r1lightning.rollout.base import RolloutBatch, SamplingSettings


class FakeModule(SimpleNamespace):
    """``sampling`` / ``engine`` plus a ``log`` that records; ``last_rollout`` / ``last_rewards`` are what the
    step would return, handed to the callbacks as ``outputs`` (see :attr:`outputs`)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("sampling", SamplingSettings())
        kwargs.setdefault("engine", None)
        super().__init__(**kwargs)
        self.logged: dict[str, float] = {}
        self.log_calls: list[tuple[str, float, dict]] = []

    @property
    def outputs(self):
        """What GRPOModule.training_step returns: ``{"trajectory": ...}`` with ``rollout`` and ``per_fn``."""
        rollout = getattr(self, "last_rollout", None)
        if rollout is None:
            return None
        return {"trajectory": SimpleNamespace(rollout=rollout, per_fn=getattr(self, "last_rewards", None) or {})}

    def log(self, name, value, **kwargs):
        self.logged[name] = value
        self.log_calls.append((name, value, kwargs))


def make_rollout(texts: list[str], num_tokens: list[int] | None = None) -> RolloutBatch:
    """One group holding ``texts``; completion i has ``num_tokens[i]`` token ids (default: 10 each)."""
    num_tokens = num_tokens if num_tokens is not None else [10] * len(texts)
    return RolloutBatch(prompt_ids=[[1]], completion_ids=[[7] * n for n in num_tokens], texts=list(texts),
                        truncated=[False] * len(texts), n=len(texts))


def fake_trainer(global_step: int = 0, loggers: list | None = None) -> SimpleNamespace:
    """What the callbacks read from a Trainer; without a fit loop the logging step is ``global_step``."""
    return SimpleNamespace(global_step=global_step, loggers=loggers or [])
