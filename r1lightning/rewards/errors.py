"""The one exception rewards raise on purpose."""

from __future__ import annotations

__all__ = ["RewardConfigError"]


class RewardConfigError(ValueError):
    """Bad reward *configuration*: an unknown reward or language, a bad weight or option, a
    missing or malformed dataset column.

    Rewards never raise on model output. :class:`~r1lightning.rewards.combine.WeightedReward`
    scores a failing reward 0.0 for the batch and carries on, except for this error, which it
    lets through: a missing ``answer`` column would otherwise silently zero the reward on every
    step.
    """
