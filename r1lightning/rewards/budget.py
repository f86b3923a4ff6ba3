"""Time limits a reward call runs under, shared between :class:`WeightedReward` and the rewards.

:class:`~r1lightning.rewards.combine.WeightedReward` gives every reward call a wall-clock
*deadline* (the sooner of its per-call limit and what is left of the batch budget) and a *sink*
for timeouts. A reward that bounds its own work item by item (math-verify's process pool) reads
:func:`deadline` to stop in time and calls :func:`report_timeouts` with how many items it scored
0.0 for time; WeightedReward adds them to ``WeightedReward.timeouts[label]``. Outside
WeightedReward there is no deadline and reports go nowhere, so the rewards still work as plain
functions. Both travel in :mod:`contextvars`, so they follow a call into the worker thread
WeightedReward runs a user reward in (``contextvars.copy_context().run``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["deadline", "remaining", "report_timeouts"]

# time.monotonic() value after which the caller stops waiting, or None (no limit).
_DEADLINE: ContextVar[float | None] = ContextVar("r1lightning_reward_deadline", default=None)
# Timed-out item counts reported by the running reward (a list, so a copied context shares it).
_SINK: ContextVar[list[int] | None] = ContextVar("r1lightning_reward_timeouts", default=None)


def deadline() -> float | None:
    """The ``time.monotonic()`` instant the caller stops waiting for this reward call, or None."""
    return _DEADLINE.get()


def remaining() -> float | None:
    """Seconds left before :func:`deadline` (may be <= 0), or None when there is no deadline."""
    end = _DEADLINE.get()
    return None if end is None else end - time.monotonic()


def report_timeouts(n: int) -> None:
    """Record that ``n`` items of the current call were scored 0.0 because they ran out of time."""
    sink = _SINK.get()
    if sink is not None and n > 0:
        sink.append(int(n))


@contextmanager
def bounded(end: float | None) -> Iterator[list[int]]:
    """Run the body with deadline ``end``; yields the list timeout reports are appended to."""
    sink: list[int] = []
    tokens = (_DEADLINE.set(end), _SINK.set(sink))
    try:
        yield sink
    finally:
        _SINK.reset(tokens[1])
        _DEADLINE.reset(tokens[0])
