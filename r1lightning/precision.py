"""Master weights stay float32: refuse to train bf16 / fp16 weights.

An AdamW step moves a weight by about ``lr`` (Adam's ``m / sqrt(v)`` is of order 1), and a bf16
number has 8 significant bits: a weight near 0.02 has neighbours 2**-13 = 1.2e-4 apart, so a step of
R1's lr 3e-6 is 2.5% of the spacing and rounds back to the same weight (only weights below ~1e-3 in
magnitude are fine-grained enough to move). fp16 (11 bits, spacing 1.5e-5 near 0.02) rounds it away
too. Training bf16 weights at R1's learning rate therefore mostly does nothing, silently: 100 steps
at lr 3e-6 on a small model changed 3.9% of the bf16 weights (mean |dw| 1.2e-5, against 3e-4 with
fp32 master weights); ``tests/test_precision.py`` measures the same on the tiny policy.

The fix is mixed precision: keep the parameters (and so AdamW's moments) in float32 and compute in
bf16 under autocast, i.e. ``trainer.precision: bf16-mixed`` with ``policy.dtype: float32``. It costs
4 bytes per parameter more than bf16 weights (plus fp32 rather than bf16 AdamW moments and gradients);
a colocated vLLM engine can still sample in bf16.

Only trainable parameters matter: a frozen bf16 base under fp32 LoRA adapters (peft keeps adapters in
float32 by default) and a frozen bf16 reference model are fine. There is no opt-out: the optimisers
here are plain AdamW, and nothing in this project compensates the rounding (Kahan summation,
stochastic rounding), so bf16 trainable weights are always a mistake here rather than a trade-off.
The one exception is a strategy that keeps its own fp32 master copy while exposing bf16 parameters:
DeepSpeed ZeRO (stages 1-3) with ``bf16`` enabled, whose optimizer holds fp32 master partitions and
fp32 AdamW moments; ``r1lightning.zero.keeps_fp32_master`` tells the modules to skip this check there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

import torch
from torch import Tensor

LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)
HALF_WEIGHT_PRECISIONS = ("bf16-true", "16-true")
"""Lightning precision settings that convert the whole module, trainable weights included, to half."""

_FIX = ("keep fp32 master weights: trainer.precision: bf16-mixed with policy.dtype: float32 (bf16 autocast "
        "compute; the vLLM engine may still sample in bf16), e.g. `--trainer.precision bf16-mixed "
        "--model.init_args.policy.dtype float32`")
_WHY = ("AdamW updates of the size of the learning rate (R1: 3e-6) round away in bf16/fp16 weights, so most "
        "weights would never change")


def check_master_weights(named_parameters: Iterable[tuple[str, Tensor]], precision: Optional[str] = None) -> None:
    """Raise unless every trainable parameter is float32 (or float64) and ``precision`` keeps it so.

    Args:
        named_parameters: ``(name, parameter)`` pairs, e.g. ``model.named_parameters()``. Parameters
            with ``requires_grad=False`` are ignored (a frozen base model may be bf16).
        precision: The Lightning precision in use (``trainer.precision``: ``"32-true"``,
            ``"bf16-mixed"``, ``"bf16-true"``, ...), or None without a trainer.

    Raises:
        ValueError: ``precision`` is ``"bf16-true"`` / ``"16-true"`` (Lightning converts the module, so
            the trainable weights are or will be half precision), or a trainable parameter is
            bf16 / fp16 (``policy.dtype: bfloat16``, or ``auto`` on a bf16 checkpoint). The message
            names the parameters and the settings to change.
    """
    if precision in HALF_WEIGHT_PRECISIONS:
        half = "bfloat16" if precision.startswith("bf16") else "float16"
        raise ValueError(
            f"trainer.precision={precision!r} converts the model, trainable weights included, to {half}: "
            f"{_WHY}. Instead {_FIX}"
        )
    low = [(name, p.dtype) for name, p in named_parameters if p.requires_grad and p.dtype in LOW_PRECISION_DTYPES]
    if low:
        dtypes = sorted({str(d).removeprefix("torch.") for _, d in low})
        names = ", ".join(name for name, _ in low[:3]) + (f" and {len(low) - 3} more" if len(low) > 3 else "")
        where = f" with trainer.precision={precision!r}" if precision is not None else ""
        raise ValueError(
            f"{len(low)} trainable parameters are {'/'.join(dtypes)} ({names}){where}: the policy was built in "
            f"half precision (policy.dtype: bfloat16 / float16, or auto on a half-precision checkpoint). "
            f"{_WHY}. Instead {_FIX}"
        )
