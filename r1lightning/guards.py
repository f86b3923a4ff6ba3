"""Finiteness guards, as pure functions: what keeps one bad number from reaching the weights or a checkpoint.

On a shared cluster a run meets values nobody planned for: a reward function that returns 1e308 (finite
in Python's float64, ``inf`` in the float32 tensor the advantages are computed in), a loss that overflows,
a gradient that is NaN. One such value turns every weight into NaN in a single AdamW step, and the next
checkpoint then overwrites ``last.ckpt`` with garbage. The trainer uses these helpers to

- score a completion whose reward is not finite *in float32* 0.0, the same rule
  :class:`~r1lightning.rewards.WeightedReward` applies to a reward function that raises or returns
  inf/NaN (a bad score is a reward failure, never a crash and never a poisoned advantage), and count it;
- name the floating tensors of a state dict (or optimizer state) that hold a non-finite value, so a
  checkpoint of non-finite weights is refused instead of written.

Skipping an optimizer step whose loss or gradient norm is not finite needs the trainer (the decision is
reduced over ranks), so it lives in :meth:`r1lightning.modules.GRPOModule.optimize`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


def finite_rewards(rewards: Sequence[float], dtype: torch.dtype = torch.float32) -> tuple[Tensor, int]:
    """Rewards as an ``(N,)`` tensor of ``dtype`` with every entry that is not finite *in that dtype*
    (NaN, +-inf, or a float64 value beyond its range, such as 1e308 in float32) replaced by 0.0.

    Returns ``(rewards, num_replaced)``.
    """
    t = torch.tensor([float(r) for r in rewards], dtype=torch.float64).to(dtype)  # (N,) overflow -> inf here
    bad = ~torch.isfinite(t)  # (N,)
    return t.masked_fill(bad, 0.0), int(bad.sum())


def finite_scores(scores: Sequence[float], dtype: torch.dtype = torch.float32) -> list[float]:
    """``scores`` with the entries that are not finite in ``dtype`` replaced by 0.0 (the logged per-function
    scores, kept consistent with :func:`finite_rewards`)."""
    return finite_rewards(scores, dtype)[0].tolist() if scores else []


def _floating_tensors(obj: Any, prefix: str) -> Iterator[tuple[str, Tensor]]:
    if isinstance(obj, Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _floating_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _floating_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Names (dotted paths) of the floating tensors anywhere in ``obj`` (a tensor, or nested dicts, lists
    and tuples of them: a state dict, an optimizer state) that hold at least one NaN or inf. A sharded tensor
    (DTensor) is checked on this rank's shard, with no collective: callers reduce the answer over ranks."""
    bad = []
    for name, t in _floating_tensors(obj, prefix):
        local = t.to_local() if hasattr(t, "to_local") else t
        if not bool(torch.isfinite(local.detach()).all()):
            bad.append(name)
    return bad
