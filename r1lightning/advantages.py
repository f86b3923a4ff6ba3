"""Group-relative advantages (GRPO), pure tensor math.

GRPO (DeepSeekMath, section 4.1; DeepSeek-R1, section 2.2.1) samples G outputs per question from
the old policy and scores output i with the group-normalised reward

    A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)

which replaces PPO's learned value baseline. R1 used G = 16.

Layout: ``rewards`` is one flat ``(N,)`` tensor, group-contiguous, ``N = num_groups * G``
(samples ``[k*G, (k+1)*G)`` answer the same question). Nothing here talks to other ranks: the
rollout puts each question's whole group on one rank, so group statistics are local. For
``scale="batch"`` the std is over the rewards given, so a caller that wants a global batch std
all-gathers the (small) reward vector first.

Departures from the paper, all deliberate:

- ``eps`` (default 1e-4, as in TRL / DeepSeekMath's reference code) is added to the std, so a
  group with a tiny but non-zero spread does not blow up.
- A group whose rewards are all exactly equal gets an advantage of exactly 0 in every mode. The
  formula gives 0/eps there, but ``r_i - mean`` can be a rounding error away from 0 (three rewards
  of 0.1 in fp32), which would otherwise become a spurious ~1e-4 advantage; and with G = 1 the
  unbiased std is 0/0. Such groups carry no learning signal (DAPO's dynamic sampling drops them:
  see :func:`zero_std_group_mask`).
- The papers write "std" without saying which. ``std="unbiased"`` (the default) divides the sum of
  squares by G - 1, like ``torch.std``'s default and therefore TRL's GRPOTrainer;
  ``std="population"`` divides by G (``numpy.std``, ``torch.std(correction=0)``). The population std
  is smaller by sqrt((G - 1) / G), so its advantages are larger by sqrt(G / (G - 1)): 1.155x at
  G = 4, 1.033x at R1's G = 16. The same choice applies to ``scale="batch"`` and the logged
  ``reward_std``.
- ``scale`` also offers the peer variants: ``"batch"`` divides the group-centred reward by the
  std of all rewards in the batch (REINFORCE++ / Lite PPO, TRL ``scale_rewards="batch"``) and
  ``"none"`` does not divide at all (Dr. GRPO, which argues the std term biases towards
  too-easy/too-hard questions).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

AdvantageScale = Literal["group", "batch", "none"]
SCALES = ("group", "batch", "none")
StdEstimator = Literal["unbiased", "population"]
STDS = ("unbiased", "population")


def _check_group_size(n: int, group_size: int) -> int:
    """Number of groups, or a ValueError naming the problem."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if n == 0:
        raise ValueError("rewards is empty: need at least one group")
    if n % group_size != 0:
        raise ValueError(
            f"rewards has {n} entries, not a multiple of group_size={group_size}; "
            "rewards must be laid out group-contiguous, num_groups * group_size long"
        )
    return n // group_size


def _as_float(rewards: Tensor) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if rewards.is_floating_point() and rewards.dtype.itemsize >= 4:
        return rewards
    return rewards.float()  # bool / int rewards, and fp16/bf16 upcast for the statistics


def _std(x: Tensor, dim: int | None, unbiased: bool) -> Tensor:
    """``torch.std`` that returns 0 instead of NaN when the unbiased estimator has one sample."""
    n = x.numel() if dim is None else x.shape[dim]
    if unbiased and n < 2:
        return torch.zeros(() if dim is None else x.shape[:dim] + x.shape[dim + 1 :], dtype=x.dtype, device=x.device)
    return x.std(dim=dim, correction=1 if unbiased else 0)


def zero_std_group_mask(rewards: Tensor, group_size: int) -> Tensor:
    """Which groups have all rewards exactly equal (zero std, so zero advantage).

    Args:
        rewards: ``(N,)`` group-contiguous rewards, ``N = num_groups * group_size``.
        group_size: G.

    Returns:
        ``(num_groups,)`` bool, True where every reward in the group is equal. DAPO's dynamic
        sampling keeps only the groups where this is False. Exact equality (max == min), not a
        tolerance: rule-based rewards are usually exact, and a group with a real spread, however
        small, still has an ordering to learn from.
    """
    rewards = _as_float(rewards)
    num_groups = _check_group_size(rewards.numel(), group_size)
    grouped = rewards.view(num_groups, group_size)  # (num_groups, G)
    return grouped.amax(dim=1) == grouped.amin(dim=1)  # (num_groups,)


def expand_group_mask(group_mask: Tensor, group_size: int) -> Tensor:
    """Repeat a per-group value for each sample of its group.

    Args:
        group_mask: ``(num_groups,)`` (bool or any dtype).
        group_size: G.

    Returns:
        ``(num_groups * G,)``, entry ``k*G + j`` equal to ``group_mask[k]`` (the same
        group-contiguous layout as the rewards). ``rewards[~expand_group_mask(zero_std_group_mask(
        rewards, G), G)]`` keeps only the informative groups.
    """
    if group_mask.dim() != 1:
        raise ValueError(f"group_mask must be 1-D (num_groups,), got shape {tuple(group_mask.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    return group_mask.repeat_interleave(group_size)  # (N,)


def group_advantages(
    rewards: Tensor,
    group_size: int,
    scale: AdvantageScale = "group",
    eps: float = 1e-4,
    std: StdEstimator = "unbiased",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Group-relative advantages, ``A_i = (r_i - mean(group)) / (std + eps)`` (GRPO).

    Args:
        rewards: ``(N,)`` total reward per completion, group-contiguous,
            ``N = num_groups * group_size``. Bool/int rewards are cast to float32.
        group_size: G, completions per question (R1: 16). ``G == 1`` is allowed and gives all
            zero advantages: a lone sample has no group baseline to be compared with.
        scale: ``"group"`` divide by the group's std (GRPO / R1); ``"batch"`` divide by the std
            of all ``N`` rewards (REINFORCE++ / Lite PPO); ``"none"`` no division (Dr. GRPO).
        eps: added to the std before dividing.
        std: ``"unbiased"`` (divide by n - 1, ``torch.std``'s default, TRL) or ``"population"``
            (divide by n, ``numpy.std``). Applies to the group std, the batch std and
            ``stats["reward_std"]``; with G = 1 both give 0 (and the advantages are 0 anyway).

    Returns:
        ``(advantages, stats)``. ``advantages`` is ``(N,)``; groups whose rewards are all equal get
        exactly 0 in every mode. ``stats`` (detached): ``reward_mean`` and ``reward_std`` over the
        batch (scalars), ``frac_zero_std`` (fraction of groups with all rewards equal, scalar) and
        ``group_std`` (``(num_groups,)``).

    Raises:
        ValueError: empty or non-1-D ``rewards``, ``group_size < 1``, ``N`` not a multiple of G,
            unknown ``scale`` or ``std``, negative ``eps``.
    """
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: expected one of {SCALES}")
    if std not in STDS:
        raise ValueError(f"std={std!r}: expected one of {STDS}")
    unbiased = std == "unbiased"
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    rewards = _as_float(rewards)
    num_groups = _check_group_size(rewards.numel(), group_size)
    grouped = rewards.view(num_groups, group_size)  # (num_groups, G)

    group_mean = grouped.mean(dim=1, keepdim=True)  # (num_groups, 1)
    group_std = _std(grouped, dim=1, unbiased=unbiased)  # (num_groups,)
    zero_std = grouped.amax(dim=1) == grouped.amin(dim=1)  # (num_groups,)
    centred = grouped - group_mean  # (num_groups, G)

    if scale == "group":
        adv = centred / (group_std[:, None] + eps)
    elif scale == "batch":
        adv = centred / (_std(rewards, dim=None, unbiased=unbiased) + eps)
    else:
        adv = centred
    adv = torch.where(zero_std[:, None], torch.zeros_like(adv), adv).reshape(-1)  # (N,)

    stats = {
        "reward_mean": rewards.mean().detach(),
        "reward_std": _std(rewards, dim=None, unbiased=unbiased).detach(),
        "frac_zero_std": zero_std.float().mean().detach(),
        "group_std": group_std.detach(),
    }
    return adv, stats
