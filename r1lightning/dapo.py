"""DAPO dynamic sampling as pure functions: which groups to keep, which to regenerate, and the splice.

DAPO (Yu et al. 2025, section 3.2, "Dynamic Sampling") observes that a group whose G rewards are all
equal (every sample right, or every sample wrong) has zero advantage, so it contributes no policy
gradient and only dilutes the batch. DAPO over-samples and keeps filling the batch until every group
has reward variance. This module gives the pieces a trainer needs, with no trainer state:

- :func:`keep_mask`: ``(N,)`` bool, True for the rows of groups with reward variance (the 'filter'
  mode trains on these rows only);
- :func:`zero_variance_groups`: the indices of the groups to regenerate (the 'resample' mode);
- :func:`splice_groups`: put the regenerated groups in place of the old ones, row for row.

Departure from DAPO: DAPO draws new *prompts* until the batch is full; :func:`splice_groups` serves a
trainer that regenerates the *same* prompts for a bounded number of rounds and then filters, so the
data loader's position does not depend on the rewards, at the cost of a batch that can end up with
fewer informative groups than asked.

Layout as in :mod:`r1lightning.advantages`: rows are group-contiguous, rows ``[k*G, (k+1)*G)`` answer
prompt ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from r1lightning.advantages import expand_group_mask, zero_std_group_mask


def keep_mask(rewards: Tensor | Sequence[float], group_size: int) -> Tensor:
    """Rows whose group has reward variance (DAPO dynamic sampling keeps these).

    Args:
        rewards: ``(N,)`` group-contiguous rewards (a tensor or a list of floats),
            ``N = num_groups * group_size``.
        group_size: G.

    Returns:
        ``(N,)`` bool, True for every row of a group whose rewards are not all exactly equal (the same
        exact test as :func:`~r1lightning.advantages.zero_std_group_mask`). With G = 1 every row is
        False: a lone sample has no spread.
    """
    rewards = torch.as_tensor(rewards)
    return ~expand_group_mask(zero_std_group_mask(rewards, group_size), group_size)  # (N,)


def zero_variance_groups(rewards: Tensor | Sequence[float], group_size: int) -> list[int]:
    """Indices (ascending) of the groups whose rewards are all equal: the ones to regenerate.

    Args:
        rewards: ``(N,)`` group-contiguous rewards (a tensor or a list of floats).
        group_size: G.

    Returns:
        Group indices ``k`` in ``[0, N / G)``; empty when every group has variance.
    """
    rewards = torch.as_tensor(rewards)
    return zero_std_group_mask(rewards, group_size).nonzero().flatten().tolist()


@dataclass
class ScoredCompletions:
    """Completions and their scores, one entry per row, group-contiguous (rows ``[k*G, (k+1)*G)``
    answer prompt ``k``). Plain lists, as a rollout engine and the reward functions return them."""

    completion_ids: list[list[int]]
    """Token ids of each completion."""
    texts: list[str]
    """Decoded completions."""
    truncated: list[bool]
    """True where the completion hit the length cap."""
    rewards: list[float]
    """Total (weighted) reward of each completion."""
    per_fn: dict[str, list[float]]
    """Score of each completion under each reward function, by name."""
    logprobs: Optional[list[list[float]]] = None
    """Engine log-prob of each sampled token, when the engine was asked for them."""

    def __len__(self) -> int:
        return len(self.texts)

    def _check(self, what: str) -> None:
        n = len(self.texts)
        lengths = {"completion_ids": len(self.completion_ids), "texts": n, "truncated": len(self.truncated),
                   "rewards": len(self.rewards)}
        lengths.update({f"per_fn[{k!r}]": len(v) for k, v in self.per_fn.items()})
        if self.logprobs is not None:
            lengths["logprobs"] = len(self.logprobs)
        bad = {k: v for k, v in lengths.items() if v != n}
        if bad:
            raise ValueError(f"{what}: every field needs one entry per row ({n} texts), got {bad}")


def splice_groups(old: ScoredCompletions, groups: Sequence[int], new: ScoredCompletions,
                  group_size: int) -> ScoredCompletions:
    """Replace whole groups of ``old`` by regenerated ones, without touching the inputs.

    Args:
        old: The batch, ``num_groups * G`` rows.
        groups: Indices of the regenerated groups, in the order ``new`` holds them: group
            ``groups[j]`` of ``old`` becomes rows ``[j*G, (j+1)*G)`` of ``new``. Distinct, in
            ``[0, num_groups)``; any order.
        new: The regenerated rows, ``len(groups) * G`` of them, with the same reward functions.
        group_size: G.

    Returns:
        A new :class:`ScoredCompletions` with fresh lists (``old`` and ``new`` are not modified; the
        inner token-id / log-prob lists are shared, not copied). Rows of groups not in ``groups`` are
        ``old``'s. ``logprobs`` is ``old``'s with the same rows replaced, or None when neither has them.

    Raises:
        ValueError: fields of unequal length, ``old`` not a whole number of groups, ``new`` not
            ``len(groups) * G`` rows, a group index out of range or repeated, different ``per_fn``
            names, or log-probs in only one of ``old`` / ``new`` (splicing would leave rows whose
            log-probs belong to another completion, or rows without any).
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    old._check("old")
    new._check("new")
    if len(old) % group_size != 0:
        raise ValueError(f"old has {len(old)} rows, not a multiple of group_size={group_size}")
    num_groups = len(old) // group_size
    groups = list(groups)
    if len(new) != len(groups) * group_size:
        raise ValueError(f"new has {len(new)} rows; {len(groups)} regenerated groups of {group_size} need "
                         f"{len(groups) * group_size}")
    if any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < num_groups for k in groups):
        raise ValueError(f"group indices must be ints in [0, {num_groups}), got {groups}")
    if len(set(groups)) != len(groups):
        raise ValueError(f"group indices must be distinct, got {groups}")
    if set(old.per_fn) != set(new.per_fn):
        raise ValueError(f"old and new were scored by different reward functions: {sorted(old.per_fn)} vs "
                         f"{sorted(new.per_fn)}")
    if (old.logprobs is None) != (new.logprobs is None):
        raise ValueError("log-probs in only one of old / new: generate both with the same "
                         "SamplingSettings.logprobs")

    out = ScoredCompletions(
        completion_ids=list(old.completion_ids), texts=list(old.texts), truncated=list(old.truncated),
        rewards=list(old.rewards), per_fn={k: list(v) for k, v in old.per_fn.items()},
        logprobs=None if old.logprobs is None else list(old.logprobs),
    )
    g = group_size
    for j, k in enumerate(groups):
        src, dst = slice(j * g, (j + 1) * g), slice(k * g, (k + 1) * g)
        out.completion_ids[dst] = new.completion_ids[src]
        out.texts[dst] = new.texts[src]
        out.truncated[dst] = new.truncated[src]
        out.rewards[dst] = new.rewards[src]
        for name in out.per_fn:
            out.per_fn[name][dst] = new.per_fn[name][src]
        if out.logprobs is not None:
            out.logprobs[dst] = new.logprobs[src]
    return out
