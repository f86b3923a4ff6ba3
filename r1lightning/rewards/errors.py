"""The exceptions rewards raise on purpose."""

from __future__ import annotations

__all__ = ["RewardConfigError", "RewardFailedError"]


class RewardConfigError(ValueError):
    """Bad reward *configuration*: an unknown reward or language, a bad weight or option, a
    missing or malformed dataset column.

    Rewards never raise on model output. :class:`~r1lightning.rewards.combine.WeightedReward`
    scores a failing reward 0.0 for the batch and carries on, except for this error, which it
    lets through: a missing ``answer`` column would otherwise silently zero the reward on every
    step.
    """


class RewardFailedError(RuntimeError):
    """A reward function is broken, not the model output: it returned the wrong number of
    scores (or no sequence at all), or it raised / timed out on ``max_consecutive_failures``
    batches in a row. :class:`~r1lightning.rewards.combine.WeightedReward` raises it to stop the
    run instead of training on zeros forever; the message names the reward.
    """
