"""GRPO and distillation losses, pure tensor math.

The GRPO objective (DeepSeekMath eq. 3; DeepSeek-R1 section 2.2.1) maximised per token is

    min(rho_t * A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_i) - beta * KL_t(pi || pi_ref),
    rho_t = pi(o_t) / pi_old(o_t),

with the KL estimated per sampled token by Schulman's unbiased, non-negative k3,
``exp(ref - logp) - (ref - logp) - 1``. Here everything is a *loss* (the negated objective).

Shapes: ``B`` sequences (completions), ``T`` completion tokens (right-padded), ``V`` vocabulary.
``logp``-style tensors are ``(B, T)`` log-probabilities of the sampled tokens; ``mask`` is
``(B, T)``, bool or 0/1, nonzero on completion tokens. Values at masked positions are never
used, and may be anything, even inf/NaN: they are replaced before any exp, so they cannot leak
NaN into the loss or the gradients.

Choices and departures, all deliberate:

- ``epsilon_low``/``epsilon_high`` are separate (DAPO's clip-higher); ``epsilon_high`` defaults
  to ``epsilon_low``. R1's Nature version uses epsilon = 10, i.e. effectively no clipping: any
  epsilon >= 0 works (``1 - 10`` as a lower bound simply never binds since ratios are > 0).
- ``delta`` is verl's dual clip (Ye et al. 2020): for A < 0 the objective is floored at
  ``delta * A`` so one token whose ratio exploded cannot dominate the step. Off by default,
  as in R1.
- The loss aggregation is a choice (:func:`aggregate_loss`): ``"grpo"`` (per-sequence mean,
  then mean over sequences: the paper's ``1/G sum_i 1/|o_i| sum_t``, our default),
  ``"token_mean"`` (DAPO, TRL's default) and ``"dr_grpo"`` (sum / (B * max_len)).
  Each takes explicit step-wide normalisers, so that the trainer can split a rollout batch into
  micro-batches, accumulate gradients, and get exactly the full-batch loss.
- Half-precision inputs are upcast to float32; float64 stays float64.
- No clamping of log-ratios (verl clamps to +-20): an exploding ratio is a real divergence and
  should be visible, not hidden.
- Off-policy rollouts (asynchronous rollouts, or an engine whose numerics differ from the trainer's):
  the *decoupled* objective of AReaL (Fu et al. 2025, eq. 5) with verl's truncated importance weight
  (``tis_imp_ratio_cap``; Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy
  RL training"): the PPO ratio is taken against pi_old recomputed by the trainer (the proximal policy),
  and each token's loss is multiplied by ``min(pi_old / pi_behaviour, C)``, pi_behaviour being the
  engine's sampling log-probs (:func:`truncated_importance_weights`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

KLKind = Literal["k1", "k2", "k3"]
LossAgg = Literal["grpo", "token_mean", "dr_grpo"]
KDKind = Literal["forward_kl", "reverse_kl", "jsd"]
KL_KINDS = ("k1", "k2", "k3")
LOSS_AGGS = ("grpo", "token_mean", "dr_grpo")
KD_KINDS = ("forward_kl", "reverse_kl", "jsd")


def _f32(x: Tensor) -> Tensor:
    """Upcast half precision to float32 (keeps float32/float64 as they are)."""
    return x.float() if x.dtype.itemsize < 4 or not x.is_floating_point() else x


def _check_bt(name: str, x: Tensor, mask: Tensor) -> None:
    if x.shape != mask.shape or x.dim() != 2:
        raise ValueError(f"{name} must be (B, T) like mask {tuple(mask.shape)}, got {tuple(x.shape)}")


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over ``mask`` (both ``(B, T)``, mask bool); 0 when the mask is empty."""
    return torch.where(mask, x, 0).sum() / mask.sum().clamp(min=1)


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k3", mask: Tensor | None = None) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled tokens' log-probabilities.

    Schulman, "Approximating KL divergence" (2020), with ``log r = ref_logp - logp``:
    ``k1 = -log r`` (unbiased, can be negative), ``k2 = (log r)^2 / 2`` (biased, low variance),
    ``k3 = (r - 1) - log r`` (unbiased and >= 0; the one GRPO / R1 use).

    Args:
        logp: ``(B, T)`` log pi(o_t) under the current policy.
        ref_logp: ``(B, T)`` log pi_ref(o_t) under the reference policy.
        kind: ``"k1"``, ``"k2"`` or ``"k3"``.
        mask: optional ``(B, T)``; where it is zero the result and its gradient are exactly 0
            (never NaN), whatever the inputs hold there.

    Returns:
        ``(B, T)`` per-token KL estimate (no reduction, no stats).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KL_KINDS}")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} differ in shape")
    log_r = _f32(ref_logp) - _f32(logp)  # (B, T)
    if mask is not None:
        if mask.shape != logp.shape:
            raise ValueError(f"mask {tuple(mask.shape)} must match logp {tuple(logp.shape)}")
        log_r = torch.where(mask.bool(), log_r, 0)
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r.square()
    # expm1(x) - x == exp(x) - 1 - x, without exp(x) - 1 cancelling to noise when pi ~ pi_ref.
    return torch.expm1(log_r) - log_r


def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO clipped surrogate *loss*, ``-min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A)``.

    Args:
        logp: ``(B, T)`` log pi(o_t), carries the gradient.
        old_logp: ``(B, T)`` log pi_old(o_t) from the sampling policy (detached here).
        advantages: ``(B,)`` one advantage per sequence (GRPO), or ``(B, T)`` per token.
        mask: ``(B, T)`` completion tokens.
        epsilon_low: lower clip range, ratio floored at ``1 - epsilon_low`` when A < 0.
        epsilon_high: upper clip range, ratio capped at ``1 + epsilon_high`` when A > 0;
            None means ``epsilon_low``. R1 (Nature) uses 10 for both: effectively no clipping.
        delta: dual-clip constant (> 1): for A < 0 the objective is at least ``delta * A``.
            None disables it.

    Returns:
        ``(per_token_loss, stats)``: ``(B, T)`` loss, exactly 0 where ``mask`` is 0. Stats
        (detached scalars, means over masked tokens, 0 when there are none): ``clip_low``
        (A < 0 and ratio < 1 - eps_low), ``clip_high`` (A > 0 and ratio > 1 + eps_high),
        ``clip_region`` (either), ``ratio_mean``, ``ratio_max``, and with ``delta``
        ``clip_dual`` (A < 0 and ratio > delta).
    """
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    if epsilon_low < 0 or epsilon_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got epsilon_low={epsilon_low}, epsilon_high={epsilon_high}")
    if delta is not None and delta <= 1:
        raise ValueError(f"dual-clip delta must be > 1, got {delta}")
    _check_bt("logp", logp, mask)
    _check_bt("old_logp", old_logp, mask)
    mask = mask.bool()
    logp = _f32(logp)
    adv = _f32(advantages).detach()
    if adv.dim() == 1:
        if adv.shape[0] != logp.shape[0]:
            raise ValueError(f"advantages {tuple(adv.shape)} must be (B,) or (B, T) with B={logp.shape[0]}")
        adv = adv[:, None]  # (B, 1)
    elif adv.shape != logp.shape:
        raise ValueError(f"advantages {tuple(adv.shape)} must be (B,) or (B, T) = {tuple(logp.shape)}")
    adv = adv.expand_as(logp)  # (B, T)

    # Replace padding before exp: exp(garbage) could be inf, and 0 * inf is NaN in the backward.
    log_ratio = torch.where(mask, logp - _f32(old_logp).detach(), 0)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)  # (B, T)
    objective = torch.minimum(ratio * adv, clipped * adv)  # (B, T)
    if delta is not None:
        objective = torch.where(adv < 0, torch.maximum(objective, delta * adv), objective)
    loss = torch.where(mask, -objective, 0)  # (B, T)

    with torch.no_grad():
        low = (ratio < 1 - epsilon_low) & (adv < 0)  # (B, T)
        high = (ratio > 1 + epsilon_high) & (adv > 0)  # (B, T)
        stats = {
            "clip_low": _masked_mean(low.to(ratio.dtype), mask),
            "clip_high": _masked_mean(high.to(ratio.dtype), mask),
            "clip_region": _masked_mean((low | high).to(ratio.dtype), mask),
            "ratio_mean": _masked_mean(ratio, mask),
            "ratio_max": torch.where(mask, ratio, 0).max() if ratio.numel() else ratio.new_zeros(()),
        }
        if delta is not None:
            stats["clip_dual"] = _masked_mean(((ratio > delta) & (adv < 0)).to(ratio.dtype), mask)
    return loss, stats


def aggregate_loss(
    per_token_loss: Tensor,
    mask: Tensor,
    mode: LossAgg = "grpo",
    max_len: int | None = None,
    total_tokens: float | Tensor | None = None,
    num_sequences: int | None = None,
) -> Tensor:
    """Reduce a ``(B, T)`` per-token loss to a scalar.

    Micro-batching: when a rollout batch is split into micro-batches whose gradients are
    accumulated, pass the *whole step's* normalisers to every call; then the micro-batch losses
    (and gradients) sum exactly to the full-batch loss. Each mode reads only its own normalisers,
    so the trainer may pass all of them whatever the mode:

    - ``"grpo"``: ``sum_i (sum_t l_it / n_i) / num_sequences``, ``n_i`` = tokens in sequence i
      (the paper's ``1/G sum_i 1/|o_i| sum_t``). Uses ``num_sequences`` (default B). A sequence
      with no tokens contributes 0 *and still counts* in ``num_sequences`` (like TRL): its sample
      was drawn, it just has nothing to learn from, and the denominator stays a constant the
      trainer knows before splitting.
    - ``"token_mean"`` (DAPO): ``sum_it l_it / total_tokens``. Uses ``total_tokens`` (default:
      this call's token count).
    - ``"dr_grpo"``: ``sum_it l_it / (num_sequences * max_len)``. Uses ``num_sequences``
      (default B) and ``max_len``, the maximum completion length *constant* (default T; pass it
      explicitly when micro-batches are padded to different lengths).

    A token count below 1 is treated as 1, so a fully masked batch gives 0, never NaN.

    Args:
        per_token_loss: ``(B, T)``.
        mask: ``(B, T)`` completion tokens; masked entries are ignored whatever their value.
        mode: ``"grpo"``, ``"token_mean"`` or ``"dr_grpo"``.
        max_len: ``dr_grpo`` length normaliser (>= 1).
        total_tokens: ``token_mean`` denominator (>= 0), float or scalar tensor (e.g. the step's
            token count, all-reduced by the caller).
        num_sequences: ``grpo`` / ``dr_grpo`` sequence count (>= 1).

    Returns:
        Scalar loss (no stats).
    """
    if mode not in LOSS_AGGS:
        raise ValueError(f"mode={mode!r}: expected one of {LOSS_AGGS}")
    _check_bt("per_token_loss", per_token_loss, mask)
    for name, value in (("max_len", max_len), ("num_sequences", num_sequences)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if total_tokens is not None and not isinstance(total_tokens, Tensor) and total_tokens < 0:
        raise ValueError(f"total_tokens must be >= 0, got {total_tokens}")
    mask = mask.bool()
    masked = torch.where(mask, per_token_loss, 0)  # (B, T)
    batch, length = mask.shape
    if mode == "grpo":
        per_seq = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B,)
        return per_seq.sum() / (max(batch, 1) if num_sequences is None else num_sequences)
    if mode == "token_mean":
        denom = mask.sum() if total_tokens is None else torch.as_tensor(total_tokens, device=masked.device)
        return masked.sum() / denom.to(masked.dtype).clamp(min=1)
    seqs = max(batch, 1) if num_sequences is None else num_sequences
    return masked.sum() / (seqs * (max(length, 1) if max_len is None else max_len))


def truncated_importance_weights(
    old_logp: Tensor,
    behaviour_logp: Tensor,
    mask: Tensor,
    cap: float = 2.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token truncated importance weight ``min(pi_old(o_t) / pi_behaviour(o_t), cap)``, detached.

    The token-level correction for completions sampled by another policy than the one the PPO ratio is
    taken against: an asynchronous engine one policy version behind, or an engine whose kernels differ
    from the trainer's. verl multiplies the per-token policy-gradient loss by it (``tis_imp_ratio_cap``,
    default 2); AReaL's decoupled PPO uses the same weight with pi_old the *proximal* policy (the trainer's
    weights when the step starts). Truncating from above bounds the variance a rare token with a tiny
    behaviour probability would otherwise add (the weight is unbounded); there is no lower truncation
    (a small weight only shrinks that token's gradient).

    Args:
        old_logp: ``(B, T)`` log pi_old(o_t), the trainer's log-probs before this step's updates.
        behaviour_logp: ``(B, T)`` log pi_behaviour(o_t), the engine's sampling log-probs.
        mask: ``(B, T)`` completion tokens.
        cap: upper truncation ``C`` (> 0).

    Returns:
        ``(weights, stats)``: ``(B, T)`` weights, no gradient, exactly 0 where ``mask`` is 0 (whatever the
        inputs hold there). Stats (detached scalars over masked tokens, 0 when there are none): ``tis_mean``,
        ``tis_max`` (before truncation, so a blow-up is visible), ``tis_min``, ``tis_truncated`` (fraction
        of tokens whose weight was cut to ``cap``).
    """
    if not cap > 0:
        raise ValueError(f"the truncation cap must be > 0, got {cap!r}")
    _check_bt("old_logp", old_logp, mask)
    _check_bt("behaviour_logp", behaviour_logp, mask)
    mask = mask.bool()
    with torch.no_grad():
        log_w = torch.where(mask, _f32(old_logp) - _f32(behaviour_logp), 0)  # (B, T)
        raw = torch.exp(log_w)  # (B, T)
        weights = torch.where(mask, torch.clamp(raw, max=cap), 0)  # (B, T)
        any_tok = bool(mask.any())
        stats = {
            "tis_mean": _masked_mean(weights, mask),
            "tis_max": raw[mask].max() if any_tok else raw.new_zeros(()),
            "tis_min": raw[mask].min() if any_tok else raw.new_zeros(()),
            "tis_truncated": _masked_mean((raw > cap).to(raw.dtype), mask),
        }
    return weights, stats


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    beta: float = 0.0,
    kl_kind: KLKind = "k3",
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    loss_agg: LossAgg = "grpo",
    max_len: int | None = None,
    total_tokens: float | Tensor | None = None,
    num_sequences: int | None = None,
    behaviour_logp: Tensor | None = None,
    tis_cap: float = 2.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss: per token ``-w_t * surrogate + beta * KL(pi || pi_ref)``, then aggregated
    (``w_t = 1`` unless ``behaviour_logp`` is given).

    Args:
        logp: ``(B, T)`` log pi(o_t) under the current policy (carries the gradient).
        old_logp: ``(B, T)`` log pi_old(o_t) from the sampling policy, or None for the on-policy
            case (one pass per rollout, mu = 1): then ``logp.detach()`` is used, the ratio is 1
            and the gradient is ``-A * grad logp`` per token (before aggregation).
        ref_logp: ``(B, T)`` log pi_ref(o_t), or None. Required when ``beta > 0``; with
            ``beta == 0`` it is only used for ``stats["kl"]`` and adds nothing to the loss.
        advantages: ``(B,)`` (or ``(B, T)``) from :func:`r1lightning.advantages.group_advantages`.
        mask: ``(B, T)`` completion tokens.
        beta: KL coefficient (R1: 0.001; 0 drops the term, TRL's default).
        kl_kind: estimator, see :func:`kl_estimate` (GRPO: ``"k3"``).
        epsilon_low, epsilon_high, delta: see :func:`clipped_surrogate` (R1 Nature: 10, 10).
        loss_agg: see :func:`aggregate_loss` (R1 / GRPO: ``"grpo"``).
        max_len, total_tokens, num_sequences: step-wide normalisers, see :func:`aggregate_loss`.
        behaviour_logp: ``(B, T)`` log-probs of the policy that *sampled* the completions (the engine's),
            or None (on-policy: the sampler is pi_old). Given, the surrogate of each token is weighted by
            :func:`truncated_importance_weights` ``(old_logp, behaviour_logp, mask, tis_cap)`` (decoupled
            PPO); the KL term is not weighted (it is an estimate under the current policy's own samples
            in GRPO as in verl). With ``old_logp`` None the proximal policy is the current one
            (``logp.detach()``: the first and only update of the batch), which is exact, not an approximation.
        tis_cap: truncation of those weights.

    Returns:
        ``(loss, stats)``: scalar loss; stats (detached scalars): ``policy_loss`` (the surrogate
        part, aggregated like the loss, so it also sums over micro-batches), ``kl`` (mean k-estimate
        over masked tokens, when ``ref_logp`` is given), the clip fractions and ratio stats of
        :func:`clipped_surrogate`, and ``num_tokens`` (this call's masked token count, to weight
        the per-token means when combining micro-batches); with ``behaviour_logp`` also the
        ``tis_*`` stats of :func:`truncated_importance_weights`.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError(f"beta={beta} > 0 needs ref_logp (reference model log-probabilities)")
    if old_logp is None:
        old_logp = logp.detach()
    mask = mask.bool()
    policy_tok, stats = clipped_surrogate(
        logp, old_logp, advantages, mask, epsilon_low=epsilon_low, epsilon_high=epsilon_high, delta=delta
    )  # (B, T)
    if behaviour_logp is not None:
        weights, tis_stats = truncated_importance_weights(old_logp, behaviour_logp, mask, tis_cap)  # (B, T)
        policy_tok = policy_tok * weights  # (B, T); weights are 0 on padding, where policy_tok is 0 too
        stats.update(tis_stats)
    per_token = policy_tok
    norms = dict(max_len=max_len, total_tokens=total_tokens, num_sequences=num_sequences)
    if ref_logp is not None:
        _check_bt("ref_logp", ref_logp, mask)
        with torch.set_grad_enabled(beta > 0 and torch.is_grad_enabled()):
            kl = kl_estimate(logp, ref_logp.detach(), kind=kl_kind, mask=mask)  # (B, T)
        stats["kl"] = _masked_mean(kl.detach(), mask)
        if beta > 0:
            per_token = per_token + beta * kl
    loss = aggregate_loss(per_token, mask, loss_agg, **norms)
    stats["policy_loss"] = aggregate_loss(policy_tok.detach(), mask, loss_agg, **norms)
    stats["num_tokens"] = mask.sum().to(policy_tok.dtype)
    return loss, stats


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    kind: KDKind = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    total_tokens: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Logit-level distillation loss for a student that shares the teacher's tokenizer.

    R1-Distill itself is plain SFT on teacher traces; this is the natural extension (GKD, Agarwal
    et al. 2024, whose generalised JSD this follows). With ``p`` the teacher and ``q`` the student
    distributions over the vocabulary at each position:

    - ``"forward_kl"``: KL(p || q), mean-seeking (classic KD).
    - ``"reverse_kl"``: KL(q || p), mode-seeking (MiniLLM).
    - ``"jsd"``: ``beta * KL(p || m) + (1 - beta) * KL(q || m)``, ``m = beta * p + (1 - beta) * q``
      (``jsd_beta = 0.5`` is the symmetric JSD; 0 and 1 would make it vanish, use the KLs).

    Computed in float32 (float64 stays) from ``log_softmax(logits / temperature)``. The loss is
    not multiplied by ``temperature**2`` (Hinton's scaling); scale it yourself if you want that.
    Teacher logits are detached; teacher entries of ``-inf`` (probability 0) are handled.

    Args:
        student_logits: ``(B, T, V)``.
        teacher_logits: ``(B, T, V)``.
        mask: ``(B, T)`` positions to distil.
        kind: ``"forward_kl"``, ``"reverse_kl"`` or ``"jsd"``.
        temperature: > 0, divides both logits.
        jsd_beta: mixture weight of the teacher in ``"jsd"``, in (0, 1).
        total_tokens: token-mean denominator for micro-batching (see :func:`aggregate_loss`);
            default this call's masked token count.

    Returns:
        ``(loss, stats)``: scalar token-mean loss over the mask (0 if the mask is empty); stats
        (detached): ``kd`` (the loss) and ``top1_agreement`` (fraction of masked positions where
        student and teacher argmax agree).
    """
    if kind not in KD_KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KD_KINDS}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if kind == "jsd" and not 0 < jsd_beta < 1:
        raise ValueError(f"jsd_beta must be in (0, 1), got {jsd_beta}; use forward_kl / reverse_kl for the ends")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "must both be (B, T, V)"
        )
    if mask.shape != student_logits.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} must be (B, T) = {tuple(student_logits.shape[:2])}")
    mask = mask.bool()
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    log_q = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)  # (B, T, V) student
    log_p = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=-1)  # (B, T, V) teacher

    def kl(log_a: Tensor, log_b: Tensor) -> Tensor:
        """KL(a || b) over V, ``(B, T)``; terms with a = 0 are 0 (0 * log 0 = 0)."""
        a = log_a.exp()
        terms = torch.where(a > 0, a * (log_a - torch.where(a > 0, log_b, 0)), 0)  # (B, T, V)
        return terms.sum(dim=-1)

    if kind == "forward_kl":
        per_token = kl(log_p, log_q)  # (B, T)
    elif kind == "reverse_kl":
        per_token = kl(log_q, log_p)  # (B, T)
    else:
        log_m = torch.logsumexp(
            torch.stack([log_p + math.log(jsd_beta), log_q + math.log(1 - jsd_beta)]),
            dim=0,
        )  # (B, T, V)
        per_token = jsd_beta * kl(log_p, log_m) + (1 - jsd_beta) * kl(log_q, log_m)  # (B, T)

    loss = aggregate_loss(per_token, mask, "token_mean", total_tokens=total_tokens)
    with torch.no_grad():
        agree = (log_q.argmax(dim=-1) == log_p.argmax(dim=-1)).to(dtype)  # (B, T)
        stats = {"kd": loss.detach(), "top1_agreement": _masked_mean(agree, mask)}
    return loss, stats
