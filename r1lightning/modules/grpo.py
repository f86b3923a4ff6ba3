"""GRPO (DeepSeekMath; DeepSeek-R1 §2.2): the reinforcement-learning stage of R1-Zero and R1.

One ``training_step`` is one rollout batch, exactly the algorithm box, in named phases:

    sync      the rollout engine gets the current weights if the policy changed since its last push
    rollout   G completions of each prompt from the current policy (pi_old)
    score     rule-based rewards (accuracy, format, language consistency, ...)
    advantage A_i = (r_i - mean(r_group)) / (std(r_group) + eps)
    prepare   pi_old (when mu > 1 or num_minibatches > 1) and pi_ref log-probs of EVERY micro-batch of the
              rollout, under no_grad and in eval mode (as the sampler), before the first optimizer step
    optimize  mu passes over ``num_minibatches`` mini-batches, each an optimizer step:
              - 1/|o| sum_t min(rho_t A, clip(rho_t, 1-eps_low, 1+eps_high) A) + beta * KL_k3(pi || pi_ref)
    log       step metrics, reduced over ranks

Guards (r1lightning.guards): a reward that is not finite in float32 scores 0.0 (train/nonfinite_rewards); an
optimizer step whose loss or gradient norm is not finite on any rank is skipped on all of them
(train/skipped_steps; max_nonfinite_steps in a row stop the run); a checkpoint of non-finite weights is refused.

R1 values: lr 3e-6, beta 0.001, temperature 1.0, G = 16, 32 questions per optimizer step, a rollout of
8,192 outputs split into 16 mini-batches trained for one inner epoch, clip epsilon 10 (Nature version),
reference replaced by the current policy every 400 steps. ``global_step`` counts optimizer steps, as
the paper's steps do.

The policy trains in train mode (dropout as its config says, gradient checkpointing active); sampling,
pi_old and pi_ref run in eval mode. Micro-batches are packed (several sequences per row, position ids
restarting at 0, no padding computed) when the model supports it (``packing``).

Distributed data parallel: each prompt's whole group is generated and scored on one rank (advantages
stay local), but every rank runs the same number of micro-batches and optimizer steps in a step (the
ranks agree on the largest micro-batch count of each mini-batch and pad with zero-weight micro-batches;
a rank with no rows left still takes part), gradients are all-reduced once per optimizer step (no_sync
on the other micro-batches), and the loss is normalised by the step's *global* sequence / token count,
so a 2-rank run takes the same step as one process on the union of both ranks' rollouts.

FSDP2 (``trainer.strategy: ModelParallelStrategy``, see README "Scaling out"): the policy and the reference are
sharded (the reference is filled from the policy's own shards, and has no optimizer); gradients are
reduce-scattered after every micro-batch's backward (there is no no_sync), and a padding micro-batch also runs
the prepare phase's pi_old / pi_ref forwards, since every forward all-gathers. Sampling with the HF engine on the
training model runs with the weights gathered for the whole rollout or evaluation, so ranks may generate
different lengths and numbers of sequences; an engine with its own weights (vLLM, async HF) is pushed one
gathered tensor at a time, in the same order on every rank.

Asynchronous rollouts (``rollout.init_args.async_rollouts: true``, off by default): the engine generates
the next rollout batch in a background thread (:mod:`r1lightning.rollout.async_worker`) while this step
optimises on the batch the engine generated during the previous step. ``training_step`` then runs

    wait      for the batch in flight (generated from the weights of one policy version ago)
    sync      push the current weights into the (now idle) engine; VLLMRolloutRefresh verifies the push
    submit    this step's prompts to the engine (they are trained at the next step)
    score / advantage / prepare / optimize / log   on the waited-for batch, as above

so a batch is at most one policy version (one training step that changed the weights) stale: checked on
every trained batch against ``max_staleness`` and logged (train/async/staleness). The first step of a fit
only fills the pipeline (no update). The loss is AReaL's decoupled PPO with verl's truncated importance
weight (r1lightning.losses.truncated_importance_weights): the clipped ratio is taken against pi_old, the trainer's
weights before the step's first update (recomputed when mu > 1 or with several mini-batches; with one update per
batch it is logp.detach() of that update, as in synchronous mode), and each token's surrogate is weighted by
min(pi_old / pi_behaviour, tis_cap), pi_behaviour being the engine's sampling log-probs. The batch in flight
is part of the checkpoint (waited for, its rollout stored), so a resumed run trains it first: no prompt is
lost (Lightning's data position is already past it) and none is trained twice. DAPO's ``resample`` needs
the engine inside the step and is refused with asynchronous rollouts.

Departures from the paper, all optional and off unless configured: clip-higher (separate
epsilon_high, DAPO), dynamic sampling of zero-variance groups (DAPO), masking of truncated
completions and the soft overlong penalty (DAPO), Dr. GRPO / token-mean loss aggregation, the
population instead of the unbiased group std.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from r1lightning.advantages import group_advantages
from r1lightning.dapo import ScoredCompletions, keep_mask, splice_groups, zero_variance_groups
from r1lightning.guards import finite_rewards, finite_scores
from r1lightning.losses import grpo_loss
from r1lightning.modules.base import PolicyModule, expand_columns
from r1lightning.policy import (PackedRows, PolicyConfig, causal_lm_token_logprobs, eval_mode, gathered_for_inference,
                                pack_rows, pack_sequences, packed_token_logprobs)
from r1lightning.rewards import WeightedReward, reward_device
from r1lightning.rollout.async_worker import RolloutJob, RolloutWorker
from r1lightning.rollout.base import EngineSettings, RolloutBatch, RolloutEngine, SamplingSettings
from r1lightning.rollout.hf import HFEngineSettings

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- pure helpers
def build_sequences(prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                    device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Left-padded prompts + right-padded completions.

    Returns input_ids (B, P+C), attention_mask (B, P+C) and completion_mask (B, C), where C is the
    longest completion; completion token j of row b sits at column P + j.
    """
    width_p = max(len(p) for p in prompts)
    width_c = max(1, max(len(c) for c in completions))
    b = len(prompts)
    ids = torch.full((b, width_p + width_c), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    cmask = torch.zeros((b, width_c), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, width_p - len(p) : width_p] = torch.tensor(p, dtype=torch.long)
        attn[i, width_p - len(p) : width_p] = 1
        if c:
            ids[i, width_p : width_p + len(c)] = torch.tensor(c, dtype=torch.long)
            attn[i, width_p : width_p + len(c)] = 1
            cmask[i, : len(c)] = 1
    return ids.to(device), attn.to(device), cmask.to(device)


def micro_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Consecutive index groups whose padded size (rows x longest row) stays within ``token_budget``
    (a single longer row still forms its own micro-batch)."""
    groups, cur, cur_max = [], [], 0
    for i, n in enumerate(lengths):
        new_max = max(cur_max, n)
        if cur and new_max * (len(cur) + 1) > token_budget:
            groups.append(cur)
            cur, new_max = [], n
        cur.append(i)
        cur_max = new_max
    if cur:
        groups.append(cur)
    return groups


def packed_micro_batches(lengths: list[int], token_budget: int, max_widening: int = 4) -> list[list[list[int]]]:
    """Micro-batches of packed rows (lists of indices into ``lengths``).

    The sequences are packed first-fit decreasing into rows of width k x the longest sequence, for the k in
    1..``max_widening`` (and width within the budget) that leaves the fewest row x width slots (the smallest k
    on ties): a wider row fits more sequences (less fill), but sdpa / eager attention computes the whole
    block-diagonal row, so its cost per token grows with the width. Consecutive rows then form a micro-batch
    while rows x width stays within ``token_budget`` (one row at least): the budget counts real tokens plus
    the fill of the rows, no longer rows x the longest row."""
    if not lengths:
        return []
    longest = max(lengths)
    best = None
    for k in range(1, max_widening + 1):
        width = k * longest
        if k > 1 and width > token_budget:
            break
        rows = pack_rows(lengths, width)
        used = max(sum(lengths[i] for i in row) for row in rows)  # rows are as wide as the widest
        if best is None or len(rows) * used < best[0]:
            best = (len(rows) * used, used, rows)
    _, width, rows = best
    per_micro = max(1, token_budget // width)
    return [rows[i : i + per_micro] for i in range(0, len(rows), per_micro)]


def minibatch_rows(num_groups: int, group_size: int, num_minibatches: int) -> list[list[int]]:
    """Row indices of exactly ``num_minibatches`` mini-batches of whole groups, as even as possible
    (some are empty when there are fewer groups than mini-batches, so every rank makes the same number of
    optimizer steps even when its last batch is smaller)."""
    bounds = [j * num_groups // num_minibatches for j in range(num_minibatches + 1)]
    return [list(range(bounds[j] * group_size, bounds[j + 1] * group_size)) for j in range(num_minibatches)]


def overlong_penalty(lengths: list[int], max_new_tokens: int, buffer: int, factor: float) -> list[float]:
    """DAPO soft overlong punishment: 0 up to max - buffer, then linearly down to -factor at max."""
    if buffer <= 0:
        return [0.0] * len(lengths)
    start = max_new_tokens - buffer
    return [-factor * min(1.0, (n - start) / buffer) if n > start else 0.0 for n in lengths]


# ---------------------------------------------------------------- typed step objects
@dataclass
class Trajectory:
    """One scored rollout batch: what the optimisation phase and the callbacks need.

    Callbacks receive it as ``outputs["trajectory"]`` in ``on_train_batch_end``.
    """

    rollout: RolloutBatch
    """Completions, group-contiguous (``len(prompt_ids) * G`` rows)."""
    columns: dict[str, list]
    """The batch's per-prompt data columns (answer, id, ...)."""
    rewards: Tensor
    """(N,) total reward per completion, overlong penalty included."""
    per_fn: dict[str, list[float]]
    """Unweighted score of each reward function, per completion."""
    advantages: Tensor
    """(N,) group-relative advantages."""
    loss_rows: Tensor
    """(N,) bool: completions that enter the loss (dynamic sampling / truncation masking)."""
    policy_version: int
    """Optimizer steps the sampling policy had taken (the engine's weights are this version)."""
    adv_stats: dict = field(default_factory=dict)
    penalty: list[float] = field(default_factory=list)
    resampled_groups: int = 0
    nonfinite_rewards: int = 0
    """Completions whose reward was not finite in float32 and was scored 0.0 instead."""
    time_rollout: float = 0.0
    time_reward: float = 0.0
    staleness: Optional[int] = None
    """Asynchronous rollouts: training steps that changed the weights between the sampling weights and the
    weights at the start of the step that trains this batch (None: synchronous, always 0)."""
    time_wait: float = 0.0
    """Asynchronous rollouts: seconds the trainer waited for this batch's generation to finish."""

    @property
    def group_size(self) -> int:
        return self.rollout.n

    def prompt_of(self, row: int) -> list[int]:
        return self.rollout.prompt_ids[row // self.rollout.n]


@dataclass
class MicroBatch:
    """Tensors of one forward/backward pass, with pi_old / pi_ref computed in the prepare phase."""

    rows: list[int]
    ids: Tensor  # (b, P+C)
    attn: Tensor  # (b, P+C)
    cmask: Tensor  # (b, C)
    adv: Tensor  # (b,)
    old_logp: Optional[Tensor] = None  # (b, C) pi_old, None when the single on-policy pass uses logp.detach()
    ref_logp: Optional[Tensor] = None  # (b, C)
    engine_logp: Optional[Tensor] = None  # (b, C) the engine's sampling log-probs
    padding: bool = False  # a zero-weight micro-batch: equal collectives on every rank, no contribution
    packed: Optional[PackedRows] = None  # the same sequences packed several per row (forwards use it when set)


@dataclass
class MiniBatch:
    """One optimizer step's micro-batches and the step-wide normalisers, summed over all ranks."""

    micro: list[MicroBatch]
    num_sequences: float
    num_tokens: float


class WeightedMean:
    """A running weighted mean that can be summed over ranks (total and weight)."""

    __slots__ = ("total", "weight")

    def __init__(self) -> None:
        self.total, self.weight = 0.0, 0.0

    def add(self, value: float, weight: float = 1.0) -> None:
        self.total += float(value) * weight
        self.weight += weight

    @property
    def value(self) -> float:
        return self.total / self.weight if self.weight else 0.0


_TOKEN_STATS = ("kl", "clip_low", "clip_high", "clip_region", "ratio_mean", "entropy", "mismatch", "tis_mean",
                "tis_truncated")


@dataclass
class StepStats:
    """What the optimisation phase measured (per optimizer step or token-weighted), over applied steps only."""

    optimizer_steps: int = 0  # applied (skipped ones are counted in GRPOModule._skipped_steps)
    loss: float = 0.0  # summed over optimizer steps (divided by their count when logged)
    policy_loss: float = 0.0
    grad_norm: float = 0.0
    ratio_max: float = 0.0
    mismatch_max: float = 0.0
    tis_max: float = 0.0
    token: dict[str, WeightedMean] = field(default_factory=lambda: {k: WeightedMean() for k in _TOKEN_STATS})
    time_train: float = 0.0

    def merge(self, other: "StepStats") -> None:
        """Add one applied optimizer step's measurements (``other``) to the step's."""
        self.optimizer_steps += other.optimizer_steps
        self.loss += other.loss
        self.policy_loss += other.policy_loss
        self.grad_norm += other.grad_norm
        self.ratio_max = max(self.ratio_max, other.ratio_max)
        self.mismatch_max = max(self.mismatch_max, other.mismatch_max)
        self.tis_max = max(self.tis_max, other.tis_max)
        for k, wm in other.token.items():
            self.token[k].total += wm.total
            self.token[k].weight += wm.weight


# checkpoints store hyperparameters; let torch.load(weights_only=True) rebuild our plain config classes
torch.serialization.add_safe_globals([HFEngineSettings])


class GRPOModule(PolicyModule):
    """Group Relative Policy Optimization with rule-based rewards (manual optimisation)."""

    def __init__(
        self,
        policy: PolicyConfig,
        rewards: Any = None,
        sampling: Optional[SamplingSettings] = None,
        rollout: Optional[EngineSettings] = None,
        beta: float = 0.001,
        kl_estimator: Literal["k1", "k2", "k3"] = "k3",
        epsilon_low: float = 0.2,
        epsilon_high: Optional[float] = None,
        loss_aggregation: Literal["grpo", "token_mean", "dr_grpo"] = "grpo",
        advantage_scale: Literal["group", "batch", "none"] = "group",
        advantage_std: Literal["unbiased", "population"] = "unbiased",
        advantage_eps: float = 1e-4,
        mu: int = 1,
        num_minibatches: int = 1,
        micro_batch_tokens: int = 16384,
        packing: bool = True,
        ref_refresh_steps: int = 0,
        dynamic_sampling: Literal["off", "filter", "resample"] = "off",
        max_resample_rounds: int = 2,
        mask_truncated: bool = False,
        overlong_buffer: int = 0,
        overlong_penalty_factor: float = 1.0,
        max_grad_norm: Optional[float] = 1.0,
        max_empty_steps: int = 20,
        max_nonfinite_steps: int = 3,
        lr: float = 3e-6,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
        min_lr_ratio: float = 0.1,
        eval_sampling: Optional[SamplingSettings] = None,
        eval_reward: str = "accuracy",
        export_dir: Optional[str] = "auto",
    ):
        """
        Args:
            policy: The model to train (see PolicyConfig).
            rewards: Reward spec, e.g. {accuracy: 1.0, format: 1.0, language_consistency: {weight: 0.1, language: en}}.
            sampling: Rollout sampling; ``n`` is the group size G (R1: 16, temperature 1.0).
            rollout: Rollout engine and its options, chosen by class like any other class in the YAML:
                r1lightning.rollout.HFEngineSettings (transformers generate on the training model, the
                default) or r1lightning.rollout.VLLMEngineSettings (colocated vLLM). An engine holding
                its own weights is pushed the current policy before every rollout and evaluation in which
                the policy changed (no callback needed; VLLMRolloutRefresh adds verification).
            beta: KL coefficient (R1: 0.001). 0 loads no reference model.
            kl_estimator: 'k3' (unbiased, used by GRPO), 'k1' or 'k2'.
            epsilon_low: Lower clip range of the ratio (R1 Nature: 10; PPO/TRL: 0.2).
            epsilon_high: Upper clip range (clip-higher, DAPO: 0.28); default epsilon_low.
            loss_aggregation: 'grpo' (per-sequence mean, then mean), 'token_mean' (DAPO), 'dr_grpo'.
            advantage_scale: 'group' std (GRPO), 'batch' std, or 'none' (Dr. GRPO).
            advantage_std: 'unbiased' (n - 1, torch.std) or 'population' (n) standard deviation for
                advantage_scale group/batch.
            advantage_eps: Added to the std before dividing.
            mu: Passes over each rollout batch (GRPO's mu); >1 reuses samples with importance ratios.
            num_minibatches: Optimizer steps per rollout batch and pass (R1: 16). Each takes a slice of
                whole groups; pi_old of every slice is computed before the first step.
            micro_batch_tokens: Token budget of one forward/backward micro-batch: rows x row width (packed
                rows are as wide as the mini-batch's longest sequence; padded rows as their micro-batch's).
            packing: Pack several sequences per row in the log-prob forwards (policy, pi_old, reference), so
                no compute goes to padding; equal to the padded computation up to float rounding. Used when
                the model keeps packed sequences apart (probed once: transformers' sdpa / eager / flex / flash
                attention do); otherwise, or with false, rows are padded.
            ref_refresh_steps: Replace the reference by the current policy every N optimizer steps (R1: 400; 0 = never).
            dynamic_sampling: 'filter' drops zero-reward-variance groups from the loss; 'resample' first
                regenerates them (up to max_resample_rounds), then filters (DAPO).
            max_resample_rounds: Regeneration rounds for 'resample'.
            mask_truncated: Exclude completions cut at max_new_tokens from the loss (DAPO overlong filtering).
            overlong_buffer: DAPO soft overlong penalty window in tokens before max_new_tokens (0 = off).
            overlong_penalty_factor: Penalty at max_new_tokens.
            max_empty_steps: Stop with an error after this many consecutive rollout batches in which no
                completion survived filtering (dynamic sampling / mask_truncated): without reward variance
                the run can never take an optimizer step, and max_steps would never be reached.
            max_nonfinite_steps: Stop with an error after this many consecutive optimizer steps whose loss or
                gradient norm was not finite. Such a step is skipped on every rank (no optimizer or LR
                scheduler step, gradients zeroed, global_step not advanced) and counted in
                train/skipped_steps, so one NaN never reaches the weights; a run that keeps producing them has
                a real problem (learning rate, precision, a reward scale) and stops rather than loop forever.
            max_grad_norm: Clip the global gradient norm of each optimizer step (manual optimisation, so
                this replaces Trainer(gradient_clip_val)); None = no clipping.
            lr: Peak learning rate (R1: 3e-6).
            weight_decay: AdamW weight decay.
            betas: AdamW betas.
            warmup_steps: Linear LR warmup (optimizer steps).
            lr_schedule: 'constant' (R1), 'cosine' or 'linear' after warmup.
            min_lr_ratio: Final LR fraction for cosine/linear.
            eval_sampling: Held-out evaluation sampling (logs val/pass@1 at the start, every
                val_check_interval rollout steps, and at the end), through the rollout engine.
            eval_reward: Reward deciding correctness in evaluation.
            export_dir: save_pretrained target at the end of fit ('auto' = <log_dir>/hf_model, 'none' = skip).
        """
        super().__init__(policy, lr, weight_decay, betas, warmup_steps, lr_schedule, min_lr_ratio, eval_sampling,
                         eval_reward, export_dir)
        self.save_hyperparameters()
        self.automatic_optimization = False
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if mu < 1 or num_minibatches < 1:
            raise ValueError(f"mu and num_minibatches must be >= 1, got mu={mu}, num_minibatches={num_minibatches}")
        if epsilon_low < 0 or (epsilon_high is not None and epsilon_high < 0):
            raise ValueError("epsilon_low / epsilon_high must be >= 0")
        if advantage_std not in ("unbiased", "population"):
            raise ValueError(f"advantage_std must be 'unbiased' or 'population', got {advantage_std!r}")
        if max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        self.sampling = sampling or SamplingSettings()
        if self.sampling.n < 2:
            raise ValueError(f"sampling.n (the group size G) must be >= 2 for group-relative advantages, got {self.sampling.n}")
        if self.sampling.temperature <= 0:
            # the loss's log-probs are log_softmax(logits / T) at the sampling temperature: T = 0 divides by zero
            raise ValueError(
                f"sampling.temperature must be > 0 for GRPO's training rollouts, got {self.sampling.temperature}: the "
                "policy's log-probs are computed at the sampling temperature (logits / T), so greedy sampling has "
                "none. Greedy decoding is for evaluation: set eval_sampling.temperature to 0 instead")
        self.rollout_settings = rollout if rollout is not None else HFEngineSettings()
        if not isinstance(self.rollout_settings, EngineSettings):
            raise TypeError(f"rollout must be an engine settings object (r1lightning.rollout.HFEngineSettings or "
                            f"VLLMEngineSettings), got {type(self.rollout_settings).__name__}")
        if self.rollout_settings.async_rollouts and dynamic_sampling == "resample":
            raise ValueError("dynamic_sampling='resample' regenerates groups inside the step, with the engine the "
                             "asynchronous rollouts keep busy: use dynamic_sampling='filter' with async_rollouts")
        self.reward = WeightedReward(rewards if rewards is not None else {"accuracy": 1.0, "format": 1.0})
        self.ref_model: Optional[nn.Module] = None  # built in configure_model when beta > 0 (and no LoRA)
        self.engine: Optional[RolloutEngine] = None
        self._last_eval_step: Optional[int] = None
        self._tokens_seen = 0
        self._empty_steps = 0
        self._nonfinite_streak = 0  # consecutive optimizer steps skipped for a non-finite loss / gradient norm
        self._skipped_steps = 0  # all of them this run (equal on every rank; checkpointed)
        self._nonfinite_rewards = 0  # completions scored 0.0 for a reward not finite in float32, all ranks, this run
        self._ref_period = 0  # index of the ref_refresh_steps period the reference was last refreshed in
        self._policy_version = 0  # applied optimizer steps of the policy (checkpointed)
        self._engine_version: Optional[int] = None  # policy version the engine's weights are (None: unknown)
        # asynchronous rollouts (all checkpointed except the worker thread)
        self._worker: Optional[RolloutWorker] = None
        self._inflight: Optional[RolloutJob] = None  # the batch being generated (or generated) for the next step
        self._rollout_version = 0  # training steps that changed the weights: the unit of staleness
        self._rollouts_submitted = 0  # seeds each asynchronous job's sampling

    # ---------------------------------------------------------------- model set-up
    def configure_model(self) -> None:
        super().configure_model()
        if self.hparams.beta > 0 and not self.policy.is_lora and self.ref_model is None:
            if self.policy.sharded:
                # sharded like the policy, filled from this rank's shards of it; no optimizer ever sees it
                self.ref_model = self.policy.sharded_frozen_copy()
                return
            import copy

            ref = copy.deepcopy(self.policy.base_causal_lm())
            ref.requires_grad_(False)
            ref.eval()
            self.ref_model = ref

    def train(self, mode: bool = True):
        super().train(mode)
        if self.ref_model is not None:
            self.ref_model.eval()  # the reference never uses dropout
        return self

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)  # refuses non-finite weights
        checkpoint["r1lightning_grpo"] = {"ref_period": self._ref_period, "tokens_seen": self._tokens_seen,
                                          "skipped_steps": self._skipped_steps,
                                          "nonfinite_rewards": self._nonfinite_rewards,
                                          "policy_version": self._policy_version,
                                          "rollout_version": self._rollout_version,
                                          "rollouts_submitted": self._rollouts_submitted,
                                          "inflight": self._inflight_states()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("r1lightning_grpo", {})
        self._ref_period = int(state.get("ref_period", 0))
        self._tokens_seen = int(state.get("tokens_seen", 0))
        self._skipped_steps = int(state.get("skipped_steps", 0))
        self._nonfinite_rewards = int(state.get("nonfinite_rewards", 0))
        # the restored weights are this version; an engine built after the restore holds them, an older one does not
        self._policy_version = int(state.get("policy_version", 0))
        self._engine_version = None
        self._rollout_version = int(state.get("rollout_version", 0))
        self._rollouts_submitted = int(state.get("rollouts_submitted", 0))
        inflight = state.get("inflight") or []
        self._inflight = None
        if any(s is not None for s in inflight):
            if len(inflight) != self._world_size:
                log.warning("the checkpoint holds in-flight rollout batches of %d rank(s), this run has %d: they are "
                            "dropped (their prompts will not be trained)", len(inflight), self._world_size)
            elif inflight[self.global_rank] is not None:
                self._inflight = RolloutJob.from_state_dict(inflight[self.global_rank])
            if not self._async:
                log.warning("the checkpoint holds a rollout batch generated ahead by asynchronous rollouts; this run "
                            "is synchronous, so it is dropped (its prompts will not be trained)")
                self._inflight = None

    def _inflight_states(self) -> list:
        """Every rank's in-flight batch (waited for) as plain data, gathered so rank 0's checkpoint holds them all:
        Lightning's data position is already past these prompts, so without them a resume would lose them."""
        if self._inflight is None and not self._async:
            return []
        mine = self._inflight.state_dict() if self._inflight is not None else None  # waits for the worker
        if self._world_size <= 1:
            return [mine]
        states = [None] * self._world_size
        torch.distributed.all_gather_object(states, mine)
        return states

    # ---------------------------------------------------------------- asynchronous rollouts
    @property
    def _async(self) -> bool:
        return bool(getattr(self.rollout_settings, "async_rollouts", False))

    def stop_rollout_worker(self) -> None:
        """Stop the worker thread: a job not started is cancelled, a running one finishes first (call
        ``_drain_worker`` before to keep its rollout). Idempotent; called at the end of training, at teardown
        and on any exception, so no thread outlives a fit."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    def _drain_worker(self) -> None:
        """The engine is about to be used by this thread (evaluation, a push): let the job in flight finish."""
        if self._worker is not None:
            self._worker.wait()

    def configure_callbacks(self):
        return [_RolloutWorkerShutdown()] if self._async else []

    def refresh_reference(self) -> None:
        """pi_ref <- pi_theta (R1 replaces the reference every 400 steps)."""
        if self.ref_model is not None:
            self.ref_model.load_state_dict(self.policy.base_causal_lm().state_dict())

    def reference_logprobs(self, ids: Tensor, attn: Tensor, keep: int, mask: Tensor,
                           packed: Optional[PackedRows] = None) -> Tensor:
        """pi_ref log-probs (b, keep) of the padded batch, computed on ``packed`` (the same sequences) when given."""
        temp = self.sampling.temperature
        chunk = self.policy.config.logprob_chunk_tokens

        def logprobs(lm: nn.Module) -> Tensor:
            if packed is not None:
                return packed_token_logprobs(lm, packed, mask, temp, chunk)[0]
            return causal_lm_token_logprobs(lm, ids, attn, keep, temp, None, mask, chunk)[0]

        if self.policy.is_lora:  # the base model with the adapter switched off, without dropout, is the reference
            with self.policy.build().disable_adapter(), eval_mode(self.policy.build()):
                return logprobs(self.policy.base_causal_lm())
        return logprobs(self.ref_model)

    def policy_logprobs(self, m: MicroBatch) -> tuple[Tensor, Tensor]:
        """The policy's log-probs and entropies (b, C) of a micro-batch's completion tokens, packed when it is."""
        if m.packed is not None:
            return self.policy.packed_token_logprobs(m.packed, m.cmask, self.sampling.temperature)
        return self.policy.token_logprobs(m.ids, m.attn, logits_to_keep=m.cmask.shape[1],
                                         temperature=self.sampling.temperature, loss_mask=m.cmask)

    # ---------------------------------------------------------------- the engine and its weights
    def rollout_engine(self) -> RolloutEngine:
        """The rollout engine, built on first use from the policy's current weights."""
        if self.engine is None:
            self.engine = self.rollout_settings.build(self.policy)
            self._engine_version = self._policy_version
        return self.engine

    def sync_engine(self, reason: str = "rollout") -> Optional[dict]:
        """Push the policy into the engine when it changed since the last push (engines that hold their own
        copy of the weights only). Runs on every rank the same number of times: the policy version moves with
        optimizer steps, which are equal on all ranks. Each callback's optional
        ``on_engine_sync(trainer, pl_module, info)`` sees the push (``VLLMRolloutRefresh`` verifies it).
        Returns the push's info dict, or None when nothing was pushed."""
        engine = self.rollout_engine()
        if not getattr(engine, "holds_weights", False) or self._engine_version == self._policy_version:
            return None
        info = dict(engine.update_weights(self.policy) or {})
        self._engine_version = self._policy_version
        info.update(step=int(self.global_step), policy_version=self._policy_version, reason=reason)
        trainer = self._trainer
        for cb in (trainer.callbacks if trainer is not None else []):
            hook = getattr(cb, "on_engine_sync", None)
            if callable(hook):
                hook(trainer, self, info)
        return info

    def on_fit_start(self) -> None:
        if self.engine is not None:
            self._engine_version = None  # an engine alive from before (another fit, a test) may hold other weights

    def on_train_start(self) -> None:
        self.heldout_eval()  # the "before" point of the learning curve, at step 0

    def on_train_end(self) -> None:
        if self._last_eval_step != self.global_step:
            self.heldout_eval()  # the "after" point
        self._drain_worker()  # the batch in flight stays (finished) for a checkpoint written after this
        self.stop_rollout_worker()

    def teardown(self, stage: str) -> None:
        self.stop_rollout_worker()
        self.close_engine_process()

    def close_engine_process(self) -> None:
        """Stop an engine that runs in a process of its own (``engine_process: true``), so none
        outlives the fit; it is rebuilt from the policy's weights on next use. In-process engines stay (a vLLM
        engine is expensive to start and is reused across fit / validate / test)."""
        if getattr(self.engine, "runs_in_process", False):
            self.engine.close()
            self.engine = None

    def eval_engine(self) -> RolloutEngine:
        """Evaluation samples through the rollout engine, synced first (the trainer's current weights)."""
        self._drain_worker()
        self.sync_engine("eval")
        return self.engine

    # ---------------------------------------------------------------- distributed helpers
    @staticmethod
    def _split(values: list[float]) -> tuple[list[float], list[float]]:
        half = len(values) // 2
        return values[:half], values[half:]

    def _no_grad_sync(self):
        """No gradient all-reduce on this backward (DDP no_sync); the last micro-batch of a step syncs."""
        if self._world_size > 1 and hasattr(self.trainer.strategy, "block_backward_sync"):
            return self.trainer.strategy.block_backward_sync()
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- the algorithm
    def training_step(self, batch: dict, batch_idx: int) -> Optional[dict]:
        try:
            self.maybe_refresh_reference()
            if self._async:
                traj = self.async_rollout_and_score(batch["prompt_ids"], batch["columns"])
                if traj is None:
                    return None  # the first step of a fit only fills the pipeline
            else:
                traj = self.rollout_and_score(batch["prompt_ids"], batch["columns"])
            t0 = time.perf_counter()
            minibatches = self.prepare(traj)
            stats = self.optimize(minibatches)
            stats.time_train = time.perf_counter() - t0
            if stats.optimizer_steps:
                self._rollout_version += 1
            self.log_step(traj, stats)
            return {"trajectory": traj, "minibatches": minibatches}
        except BaseException:
            self.stop_rollout_worker()
            raise

    def maybe_refresh_reference(self) -> None:
        hp = self.hparams
        # every rank refreshes at the same global_step; with num_minibatches > 1 the step jumps, so compare
        # refresh periods rather than testing global_step % N == 0
        if hp.ref_refresh_steps and self.global_step // hp.ref_refresh_steps > self._ref_period:
            self.refresh_reference()
            self._ref_period = self.global_step // hp.ref_refresh_steps

    def _step_sampling(self) -> SamplingSettings:
        sampling = self.sampling
        if sampling.seed is not None:  # a per-step, per-rank seed: rollouts are reproducible across resumes
            sampling = dataclasses.replace(sampling, seed=sampling.seed + 1_000_003 * self.global_step + self.global_rank)
        return sampling

    def rollout_and_score(self, prompt_ids: list[list[int]], columns: dict[str, list]) -> Trajectory:
        """Phases sync -> rollout -> score -> advantages (DAPO regeneration of zero-variance groups when asked)."""
        engine = self.rollout_engine()
        self.sync_engine("rollout")
        sampling = self._step_sampling()
        # FSDP2 + sampling on the training model: gathered for the whole phase, since DAPO's regeneration runs
        # only on the ranks that have zero-variance groups
        with self._sampling_gathered():
            t0 = time.perf_counter()
            out = engine.generate(prompt_ids, sampling)
            t_gen = time.perf_counter() - t0
            return self.score(out, prompt_ids, columns, sampling, t_gen, self._policy_version)

    def _sampling_gathered(self):
        """The policy's weights gathered (FSDP2) while the HF engine samples from the training model itself:
        ranks may then sample different amounts (a rank without prompts, regenerated groups on one rank)."""
        from r1lightning.rollout.hf import HFRolloutEngine

        if self.policy.sharded and isinstance(self.engine, HFRolloutEngine) and self.engine.model is None:
            return gathered_for_inference(self.policy.build())
        return contextlib.nullcontext()

    def async_rollout_and_score(self, prompt_ids: list[list[int]], columns: dict[str, list]) -> Optional[Trajectory]:
        """Asynchronous phases wait -> sync -> submit this batch -> score the batch generated during the previous
        step (None on the first step of a fit, which only fills the pipeline)."""
        engine = self.rollout_engine()
        if self._worker is None:
            self._worker = RolloutWorker(engine, split_threads=self.device.type == "cpu")
        done, t_wait = self._inflight, 0.0
        if done is not None:
            t0 = time.perf_counter()
            done.result()
            t_wait = time.perf_counter() - t0
        self.sync_engine("rollout")  # the worker is idle: the one point where weights go in
        sampling = self.sampling
        if sampling.seed is not None:  # per job and rank: a resumed run samples what the uninterrupted one would
            sampling = dataclasses.replace(sampling, seed=sampling.seed + 1_000_003 * self._rollouts_submitted
                                           + self.global_rank)
        # the engine's sampling log-probs are the behaviour policy of the importance weight
        sampling = dataclasses.replace(sampling, logprobs=True)
        self._inflight = self._worker.submit(RolloutJob(
            prompt_ids=list(prompt_ids), columns=columns, sampling=sampling, policy_version=self._engine_version,
            rollout_version=self._rollout_version))
        self._rollouts_submitted += 1
        if done is None:
            return None
        staleness = self._rollout_version - done.rollout_version
        bound = self.rollout_settings.max_staleness
        if not 0 <= staleness <= bound:
            raise RuntimeError(f"asynchronous rollouts: a batch sampled at policy version {done.rollout_version} "
                               f"would be trained at version {self._rollout_version}, beyond max_staleness={bound}")
        out, t_gen = done.result()
        traj = self.score(out, done.prompt_ids, done.columns, done.sampling, t_gen, done.policy_version)
        traj.staleness, traj.time_wait = staleness, t_wait
        return traj

    def score(self, out: RolloutBatch, prompt_ids: list[list[int]], columns: dict[str, list],
              sampling: SamplingSettings, t_gen: float, policy_version: int) -> Trajectory:
        """Phases score -> advantages of a generated rollout (regenerating zero-variance groups for DAPO
        'resample', with ``sampling``)."""
        hp, g = self.hparams, self.sampling.n
        engine = self.engine
        t0 = time.perf_counter()
        with reward_device(self.device):  # a reward model (reward_model reward) runs where the policy trains
            total, per_fn = self.reward(out.texts, **expand_columns(columns, g))
        t_reward = time.perf_counter() - t0
        resampled = 0
        if hp.dynamic_sampling == "resample":
            for _ in range(hp.max_resample_rounds):
                dead = zero_variance_groups(total, g)
                if not dead:
                    break
                t0 = time.perf_counter()
                if sampling.seed is not None:
                    sampling = dataclasses.replace(sampling, seed=sampling.seed + 7919)
                again = engine.generate([prompt_ids[i] for i in dead], sampling)
                t_gen += time.perf_counter() - t0
                t0 = time.perf_counter()
                with reward_device(self.device):
                    new_total, new_per_fn = self.reward(
                        again.texts, **expand_columns({k: [v[i] for i in dead] for k, v in columns.items()}, g))
                t_reward += time.perf_counter() - t0
                merged = splice_groups(
                    ScoredCompletions(out.completion_ids, out.texts, out.truncated, total, per_fn, out.logprobs), dead,
                    ScoredCompletions(again.completion_ids, again.texts, again.truncated, new_total, new_per_fn,
                                      again.logprobs), g)
                out = dataclasses.replace(out, completion_ids=merged.completion_ids, texts=merged.texts,
                                          truncated=merged.truncated, logprobs=merged.logprobs)
                total, per_fn = merged.rewards, merged.per_fn
                resampled += len(dead)
        penalty = overlong_penalty([len(c) for c in out.completion_ids], self.sampling.max_new_tokens,
                                   hp.overlong_buffer, hp.overlong_penalty_factor)
        # a reward that is not finite in the float32 the advantages use (1e308 is finite in float64) would make
        # every advantage of its group NaN: it scores 0.0 instead, as a reward function failure does
        rewards, nonfinite = finite_rewards([r + p for r, p in zip(total, penalty)])  # (N,) float32
        per_fn = {name: finite_scores(scores) for name, scores in per_fn.items()}  # logged, so finite too
        if nonfinite:
            log.warning("%d completion(s) at step %d had a reward that is not finite in float32; scored 0.0",
                        nonfinite, self.global_step)
        adv, astats = group_advantages(rewards, g, scale=hp.advantage_scale, eps=hp.advantage_eps,
                                       std=hp.advantage_std)  # (N,)
        loss_rows = keep_mask(rewards, g) if hp.dynamic_sampling != "off" else torch.ones(len(rewards), dtype=torch.bool)
        if hp.mask_truncated:
            loss_rows &= ~torch.tensor(out.truncated, dtype=torch.bool)
        return Trajectory(rollout=out, columns=columns, rewards=rewards, per_fn=per_fn, advantages=adv,
                          loss_rows=loss_rows, policy_version=policy_version, adv_stats=astats,
                          penalty=penalty, resampled_groups=resampled, time_rollout=t_gen, time_reward=t_reward,
                          nonfinite_rewards=nonfinite)

    def prepare(self, traj: Trajectory) -> list[MiniBatch]:
        """Split the rollout into mini-batches and token-budget micro-batches, agree with the other ranks on
        the work (two reductions), and compute pi_old and pi_ref of every micro-batch before any update."""
        hp, out = self.hparams, traj.rollout
        completions = out.completion_ids
        slices = minibatch_rows(len(out.prompt_ids), out.n, hp.num_minibatches)
        local: list[list[list[int]]] = []  # per mini-batch, the row indices of each micro-batch
        counts: list[float] = []  # per mini-batch: micro-batches, sequences, tokens (this rank)
        packing = hp.packing and self.policy.supports_packing()
        layouts: list[list[Optional[list[list[int]]]]] = []  # per mini-batch and micro-batch: packed rows or None
        for rows in slices:
            rows = [r for r in rows if bool(traj.loss_rows[r])]
            if packing:
                # an empty completion scores nothing, so it is left out of the packed rows (it still counts among
                # the sequences that normalise the loss)
                scored = [r for r in rows if completions[r]]
                lengths = [len(traj.prompt_of(r)) + len(completions[r]) for r in scored]
                packed = packed_micro_batches(lengths, hp.micro_batch_tokens)
                groups = [[scored[i] for row in micro for i in row] for micro in packed]
                # the packed rows as positions in the micro-batch's row list
                layouts.append([[[sum(len(r) for r in micro[:j]) + k for k in range(len(row))]
                                 for j, row in enumerate(micro)] for micro in packed])
            else:
                lengths = [len(traj.prompt_of(r)) + len(completions[r]) for r in rows]
                groups = [[rows[i] for i in m] for m in micro_batches(lengths, hp.micro_batch_tokens)]
                layouts.append([None] * len(groups))
            local.append(groups)
            counts += [float(len(groups)), float(len(rows)), float(sum(len(completions[r]) for r in rows))]
        # every rank runs the largest micro-batch count of each mini-batch; the loss normalisers are global sums
        n_micro = self._reduce(counts[0::3], "max")
        n_seq, n_tok = self._split(self._reduce(counts[1::3] + counts[2::3], "sum"))
        # pi_old is needed as a tensor only when the weights change before a batch's last update. With one update
        # per batch (mu = 1, one mini-batch) it is the current policy, so the loss uses logp.detach(): exact, also
        # for asynchronous rollouts, whose decoupled PPO takes the ratio against this proximal policy and the
        # importance weight pi_old / pi_behaviour against the stale sampler's log-probs
        need_old = hp.mu > 1 or hp.num_minibatches > 1
        minibatches, padding = [], None
        for groups, layout, mb_micro, mb_seq, mb_tok in zip(local, layouts, n_micro, n_seq, n_tok):
            if mb_seq == 0:  # no rank has a row to learn from: every rank skips this optimizer step
                minibatches.append(MiniBatch([], 0.0, 0.0))
                continue
            # pi_old and pi_ref without dropout: the sampler (and the reference) run in eval mode too
            with eval_mode(self.policy.build()):
                micro = [self._prepare_micro(rows, traj, need_old, layout=lay) for rows, lay in zip(groups, layout)]
            if len(micro) < mb_micro:
                if self.policy.sharded:  # each padding slot takes part in the prepare phase's forwards (FSDP2)
                    with eval_mode(self.policy.build()):
                        micro += [self._prepare_micro([0], traj, need_old, padding=True)
                                  for _ in range(int(mb_micro - len(micro)))]
                else:
                    padding = padding or self._prepare_micro([0], traj, need_old=False, padding=True)
                    micro += [padding] * int(mb_micro - len(micro))
            minibatches.append(MiniBatch(micro, mb_seq, mb_tok))
        if sum(n_seq) == 0:
            self._note_empty_step()
        else:
            self._empty_steps = 0
        return minibatches

    def _note_empty_step(self) -> None:
        hp = self.hparams
        self._empty_steps += 1
        log.warning("no completion left to train on at step %d (zero reward variance / all truncated); "
                    "skipping the update", self.global_step)
        if self._empty_steps >= hp.max_empty_steps:
            raise RuntimeError(
                f"{self._empty_steps} consecutive rollout batches had no group with reward variance left after "
                f"dynamic_sampling={hp.dynamic_sampling!r} / mask_truncated={hp.mask_truncated}: every reward in "
                "each group was equal, so GRPO has no signal. Check the reward functions and the answer column, "
                "raise sampling.temperature / sampling.n, or use an easier starting point"
            )

    @torch.no_grad()
    def _prepare_micro(self, rows: list[int], traj: Trajectory, need_old: bool, padding: bool = False,
                       layout: Optional[list[list[int]]] = None) -> MicroBatch:
        """A micro-batch of ``rows`` (padded), packed as ``layout`` (lists of positions in ``rows``) when given,
        with pi_old (need_old) and pi_ref computed."""
        out = traj.rollout
        prompts, completions = [traj.prompt_of(r) for r in rows], [out.completion_ids[r] for r in rows]
        ids, attn, cmask = build_sequences(prompts, completions, self.tokenizer.pad_token_id, self.device)
        m = MicroBatch(rows=rows, ids=ids, attn=attn, cmask=cmask, adv=traj.advantages[rows].to(self.device),
                       padding=padding)
        if layout is not None and not padding:
            m.packed = pack_sequences([p + c for p, c in zip(prompts, completions)], [len(p) for p in prompts],
                                      layout, self.tokenizer.pad_token_id, self.device)
        if padding:
            # at least one scored position, so the LM head is in the graph too (an untied head would otherwise get
            # no gradient hook on this backward, and DDP's all-reduce would wait for it)
            cmask[0, 0] = 1
            if self.policy.sharded:
                # FSDP2 gathers weights in every forward, no_grad ones included: a padding slot runs the pi_old and
                # pi_ref forwards a real micro-batch runs, so every rank takes part in the same all-gathers
                if need_old:
                    self.policy_logprobs(m)
                if self.hparams.beta > 0:
                    self.reference_logprobs(ids, attn, cmask.shape[1], cmask, None)
            return m
        if out.logprobs is not None:
            elp = torch.zeros(cmask.shape, dtype=torch.float32)
            for j, r in enumerate(rows):
                elp[j, : len(out.logprobs[r])] = torch.tensor(out.logprobs[r], dtype=torch.float32)
            m.engine_logp = elp.to(self.device)
        if need_old:
            m.old_logp = self.policy_logprobs(m)[0]
        if self.hparams.beta > 0:
            m.ref_logp = self.reference_logprobs(ids, attn, cmask.shape[1], cmask, m.packed)
        return m

    def optimize(self, minibatches: list[MiniBatch]) -> StepStats:
        """mu passes of one optimizer step per mini-batch; gradients all-reduced once per step."""
        hp = self.hparams
        opt, sched = self.optimizers(), self.lr_schedulers()
        world = self._world_size
        stats = StepStats()
        for epoch in range(hp.mu):
            for mb in minibatches:
                if not mb.micro:
                    continue
                opt.zero_grad()
                part = StepStats()  # this optimizer step's measurements, kept only when it is applied
                last = len(mb.micro) - 1
                for k, m in enumerate(mb.micro):
                    with self._no_grad_sync() if k < last else contextlib.nullcontext():
                        logp, entropy = self.policy_logprobs(m)  # (b, C)
                        if m.padding:  # same graph, zero gradient: keeps DDP's collectives paired across ranks
                            self.manual_backward((logp * m.cmask).sum() * 0.0)
                            continue
                        loss, lstats = grpo_loss(
                            logp, m.old_logp, m.ref_logp, m.adv, m.cmask, beta=hp.beta, kl_kind=hp.kl_estimator,
                            epsilon_low=hp.epsilon_low, epsilon_high=hp.epsilon_high, loss_agg=hp.loss_aggregation,
                            max_len=self.sampling.max_new_tokens, total_tokens=mb.num_tokens,
                            num_sequences=mb.num_sequences, **self._behaviour(m),
                        )
                        # the normalisers are global; DDP averages gradients over ranks, so undo its 1/W
                        self.manual_backward(loss * world)
                    self._accumulate(part, m, logp, entropy, loss, lstats, first_pass=epoch == 0)
                    part.loss += float(loss.detach())
                    part.policy_loss += float(lstats["policy_loss"])
                part.grad_norm = self.grad_norm() or 0.0  # of the all-reduced gradients: equal on every rank
                if not self._step_is_finite(part.loss, part.grad_norm):
                    opt.zero_grad()  # no optimizer or scheduler step: weights, AdamW moments and LR stay as they were
                    self._note_nonfinite_step(part.loss, part.grad_norm)
                    continue
                self._nonfinite_streak = 0
                if hp.max_grad_norm:
                    self.clip_gradients(opt, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
                opt.step()
                sched.step()
                self._policy_version += 1  # only applied steps change the policy (and trigger an engine push)
                part.optimizer_steps = 1
                stats.merge(part)
        return stats

    def _behaviour(self, m: MicroBatch) -> dict:
        """grpo_loss arguments of the truncated importance weight (asynchronous rollouts only)."""
        if not self._async:
            return {}
        return {"behaviour_logp": m.engine_logp, "tis_cap": self.rollout_settings.tis_cap}

    def _step_is_finite(self, loss: float, grad_norm: float) -> bool:
        """Whether to apply this optimizer step: its loss and gradient norm are finite on every rank. The
        gradient norm is already global, but the loss is this rank's share, so the flag is reduced (one
        collective per optimizer step, which every rank takes) and all ranks skip or step together."""
        bad = 0.0 if (math.isfinite(loss) and math.isfinite(grad_norm)) else 1.0
        return self._reduce([bad], "max")[0] == 0.0

    def _note_nonfinite_step(self, loss: float, grad_norm: float) -> None:
        hp = self.hparams
        self._nonfinite_streak += 1
        self._skipped_steps += 1
        log.warning("skipped an optimizer step at step %d: loss %s, gradient norm %s on this rank (%d in a row)",
                    self.global_step, loss, grad_norm, self._nonfinite_streak)
        if self._nonfinite_streak >= hp.max_nonfinite_steps:
            raise RuntimeError(
                f"{self._nonfinite_streak} consecutive optimizer steps had a non-finite loss or gradient norm "
                f"(last: loss {loss}, gradient norm {grad_norm} on this rank) and were skipped "
                f"(max_nonfinite_steps={hp.max_nonfinite_steps}); no update was applied, so the weights and the last "
                "checkpoint are still finite. Check lr, the precision (fp16 overflows), the reward scale and "
                "sampling.temperature")

    @staticmethod
    def _accumulate(stats: StepStats, m: MicroBatch, logp: Tensor, entropy: Tensor, loss: Tensor, lstats: dict,
                    first_pass: bool) -> None:
        w = float(m.cmask.sum())
        tok = stats.token
        for k in ("kl", "clip_low", "clip_high", "clip_region", "ratio_mean", "tis_mean", "tis_truncated"):
            if k in lstats:
                tok[k].add(float(lstats[k]), w)
        stats.ratio_max = max(stats.ratio_max, float(lstats.get("ratio_max", 0.0)))
        stats.tis_max = max(stats.tis_max, float(lstats.get("tis_max", 0.0)))
        tok["entropy"].add(float((entropy * m.cmask).sum() / max(w, 1.0)), w)
        if first_pass and m.engine_logp is not None:
            # pi_old as the trainer computes it vs the engine's sampling log-probs of the same tokens (before any
            # update: old_logp, or this first and only pass when mu = 1 and one mini-batch)
            old = m.old_logp if m.old_logp is not None else logp.detach()
            diff = (old - m.engine_logp).abs() * m.cmask
            tok["mismatch"].add(float(diff.sum() / max(w, 1.0)), w)
            stats.mismatch_max = max(stats.mismatch_max, float(diff.max()))

    # ---------------------------------------------------------------- logging
    def log_step(self, traj: Trajectory, stats: StepStats) -> None:
        """train/* metrics of the step, over all ranks (sums, maxima and minima in three collectives)."""
        out, rewards = traj.rollout, traj.rewards
        g = out.n
        lengths = [float(len(c)) for c in out.completion_ids]
        n = float(len(lengths))
        sums = {
            "n": n, "groups": float(len(out.prompt_ids)), "reward": float(rewards.sum()),
            "reward_sq": float((rewards.double() ** 2).sum()),
            "zero_std_groups": float(traj.adv_stats["frac_zero_std"]) * len(out.prompt_ids),
            "length": sum(lengths), "truncated": float(sum(out.truncated)), "kept": float(traj.loss_rows.sum()),
            "adv_abs": float(traj.advantages.abs().sum()), "penalty": float(sum(traj.penalty)),
            "resampled": float(traj.resampled_groups), "tokens_per_s": float(out.stats.get("tokens_per_s", 0.0)),
            "loss": stats.loss, "policy_loss": stats.policy_loss, "steps": float(stats.optimizer_steps),
            "grad_norm": stats.grad_norm, "nonfinite_rewards": float(traj.nonfinite_rewards),
        }
        for k, wm in stats.token.items():
            sums[f"{k}.total"], sums[f"{k}.weight"] = wm.total, wm.weight
        per_fn = dict(traj.per_fn)
        if "accuracy" not in per_fn and "answer" in traj.columns:
            from r1lightning.rewards import accuracy_reward

            per_fn_acc = accuracy_reward(out.texts, **expand_columns(traj.columns, g))
        else:
            per_fn_acc = per_fn.get("accuracy")
        if "format" not in per_fn:
            from r1lightning.rewards import format_reward

            fmt = format_reward(out.texts)
        else:
            fmt = per_fn["format"]
        sums["format"] = float(sum(fmt))
        if per_fn_acc is not None:
            sums["accuracy"] = float(sum(per_fn_acc))
        for name, scores in per_fn.items():
            t = torch.tensor(scores, dtype=torch.float64)
            sums[f"fn.{name}.sum"], sums[f"fn.{name}.sq"] = float(t.sum()), float((t ** 2).sum())
            sums[f"fn.{name}.failures"] = float(self.reward.failures.get(name, 0))
            sums[f"fn.{name}.timeouts"] = float(self.reward.timeouts.get(name, 0))
        maxes = {"length_max": max(lengths), "ratio_max": stats.ratio_max, "mismatch_max": stats.mismatch_max,
                 "time/rollout": traj.time_rollout, "time/reward": traj.time_reward, "time/train": stats.time_train,
                 "tis_max": stats.tis_max, "staleness": float(traj.staleness or 0), "time/wait": traj.time_wait}
        mins = {"length_min": min(lengths)}
        keys_s, keys_x, keys_n = sorted(sums), sorted(maxes), sorted(mins)
        s = dict(zip(keys_s, self._reduce([sums[k] for k in keys_s], "sum")))
        x = dict(zip(keys_x, self._reduce([maxes[k] for k in keys_x], "max")))
        lo = dict(zip(keys_n, self._reduce([mins[k] for k in keys_n], "min")))
        self._tokens_seen += int(s["length"])
        self._nonfinite_rewards += int(s["nonfinite_rewards"])

        def std(total: float, sq: float, count: float) -> float:
            return max(0.0, (sq - total * total / count) / (count - 1)) ** 0.5 if count > 1 else 0.0

        steps = max(s["steps"] / self._world_size, 1.0)  # optimizer steps of the step (equal on every rank)
        tmean = {k: (s[f"{k}.total"] / s[f"{k}.weight"] if s[f"{k}.weight"] else 0.0) for k in _TOKEN_STATS}
        metrics = {
            "reward": s["reward"] / s["n"],
            "reward_std": std(s["reward"], s["reward_sq"], s["n"]),
            "frac_reward_zero_std": s["zero_std_groups"] / s["groups"],
            "completion_length/mean": s["length"] / s["n"],
            "completion_length/min": lo["length_min"],
            "completion_length/max": x["length_max"],
            "truncated_ratio": s["truncated"] / s["n"],
            "kept_ratio": s["kept"] / s["n"],  # share of completions that entered the loss
            "loss": s["loss"] / steps,  # mean over the step's optimizer steps (the sum over ranks is one loss)
            "policy_loss": s["policy_loss"] / steps,
            "optimizer_steps": steps if s["steps"] else 0.0,
            "kl": tmean["kl"],
            "clip_ratio/low": tmean["clip_low"],
            "clip_ratio/high": tmean["clip_high"],
            "clip_ratio/region": tmean["clip_region"],
            "ratio/mean": tmean["ratio_mean"],
            "ratio/max": x["ratio_max"],
            "entropy": tmean["entropy"],
            "grad_norm": s["grad_norm"] / max(s["steps"], 1.0),  # every rank clips the same all-reduced norm
            "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
            "tokens_per_s": s["tokens_per_s"],  # all ranks' engines together
            "num_tokens": float(self._tokens_seen),
            "time/rollout": x["time/rollout"],  # the slowest rank sets the step time
            "time/reward": x["time/reward"],
            "time/train": x["time/train"],
            "advantage_abs_mean": s["adv_abs"] / s["n"],
            "format_rate": s["format"] / s["n"],
            "policy_version": float(self._policy_version),
            # run totals (checkpointed): both stay 0 in a healthy run
            "skipped_steps": float(self._skipped_steps),  # optimizer steps skipped for a non-finite loss / grad norm
            "nonfinite_rewards": float(self._nonfinite_rewards),  # completions scored 0.0 (reward not finite in fp32)
        }
        if "accuracy" in s:
            metrics["accuracy"] = s["accuracy"] / s["n"]
        if out.logprobs is not None:
            metrics["logprob_mismatch/mean"] = tmean["mismatch"]
            metrics["logprob_mismatch/max"] = x["mismatch_max"]
        if traj.staleness is not None:
            metrics["async/staleness"] = x["staleness"]  # policy versions behind, the largest over ranks
            metrics["async/tis_mean"] = tmean["tis_mean"]  # truncated importance weight pi_old / pi_behaviour
            metrics["async/tis_max"] = x["tis_max"]  # before truncation
            metrics["async/tis_truncated"] = tmean["tis_truncated"]  # share of tokens cut to tis_cap
            metrics["time/wait"] = x["time/wait"]  # the trainer waiting for the engine (0 when fully overlapped)
        if self.hparams.dynamic_sampling == "resample":
            metrics["resampled_groups"] = s["resampled"]
        if self.hparams.overlong_buffer > 0:
            metrics["overlong_penalty"] = s["penalty"] / s["n"]
        for name in per_fn:
            metrics[f"rewards/{name}/mean"] = s[f"fn.{name}.sum"] / s["n"]
            metrics[f"rewards/{name}/std"] = std(s[f"fn.{name}.sum"], s[f"fn.{name}.sq"], s["n"])
            metrics[f"rewards/{name}/failures"] = s[f"fn.{name}.failures"]  # batches it raised on, cumulative
            metrics[f"rewards/{name}/timeouts"] = s[f"fn.{name}.timeouts"]  # calls / items over time, cumulative
        self.log_dict({f"train/{k}": torch.tensor(float(v)) for k, v in metrics.items()},
                      batch_size=len(out.prompt_ids))

    # ---------------------------------------------------------------- held-out evaluation
    def heldout_eval(self) -> Optional[dict]:
        """Sample and score the val prompts (each rank its shard, results reduced over ranks) through the
        synced rollout engine and log val/* at the current global_step."""
        if self.eval_sampling is None or self.trainer is None:
            return None
        dm = self.trainer.datamodule
        loader = dm.val_dataloader() if dm is not None else None
        if not loader:
            return None
        was_training = self.training
        self.eval_engine()  # the same number of syncs on every rank, whatever its shard
        rank, world, seen = self.global_rank, self._world_size, 0
        # outside training_step Lightning sets no autocast: with bf16-mixed the HF engine would sample in fp32
        with self.trainer.precision_plugin.forward_context(), self._sampling_gathered():
            for batch in loader:
                mine = [i for i in range(len(batch["prompt_ids"])) if (seen + i) % world == rank]
                seen += len(batch["prompt_ids"])
                if mine:
                    self.sample_and_score([batch["prompt_ids"][i] for i in mine],
                                          {k: [v[i] for i in mine] for k, v in batch["columns"].items()})
        metrics = self._collect_sampled_eval("val")
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.global_step)
        self._last_eval_step = self.global_step
        self.train(was_training)
        if self.global_rank == 0:
            print(f"[r1lightning] step {self.global_step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if self.eval_sampling is not None:
            self.sample_and_score(batch["prompt_ids"], batch["columns"])

    def on_validation_epoch_end(self) -> None:
        if self.eval_sampling is not None and not self.trainer.sanity_checking:
            self._last_eval_step = self.global_step
        self.log_sampled_eval("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.log_sampled_eval("test")



class _RolloutWorkerShutdown(pl.Callback):
    """Stops the module's rollout worker on any exception of the fit (Lightning calls ``on_exception`` on
    callbacks, not on the module): a SIGTERM stop, a failing callback, an interrupted validation."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        for name in ("stop_rollout_worker", "close_engine_process"):
            stop = getattr(pl_module, name, None)
            if callable(stop):
                stop()
