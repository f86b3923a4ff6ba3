"""Supervised fine-tuning: R1's cold start on long-CoT data, the SFT stage after rejection
sampling, and R1-Distill (SFT of a small student on teacher traces).

loss = - sum_t m_t log pi(x_t | x_<t) / sum_t m_t, with m_t = 1 on assistant/completion tokens only
(token mean over the batch, as in the R1-Distill recipe and TRL's SFTTrainer).
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from r1lightning.modules.base import PolicyModule
from r1lightning.policy import PolicyConfig
from r1lightning.rollout.base import SamplingSettings
from r1lightning.zero import accumulation_compensation, deepspeed_strategy


def masked_nll(logp: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Token-mean negative log-likelihood.  logp (B, K), loss_mask (B, K) -> scalar."""
    mask = loss_mask.to(logp.dtype)
    ntok = mask.sum()
    loss = -(logp * mask).sum() / ntok.clamp(min=1.0)
    return loss, {"tokens": ntok.detach()}


class SFTModule(PolicyModule):
    """Next-token cross-entropy on completion tokens; optional sampled evaluation in validation."""

    def __init__(
        self,
        policy: PolicyConfig,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        lr_schedule: str = "cosine",
        min_lr_ratio: float = 0.1,
        eval_sampling: Optional[SamplingSettings] = None,
        eval_reward: str = "accuracy",
        export_dir: Optional[str] = "auto",
    ):
        """
        Args:
            policy: The model to train (see PolicyConfig).
            lr: Peak learning rate (AdamW).
            weight_decay: AdamW weight decay on matrices (not on norms / biases).
            betas: AdamW betas.
            warmup_steps: Linear warmup optimizer steps.
            lr_schedule: 'cosine', 'linear' or 'constant' after warmup.
            min_lr_ratio: Final LR as a fraction of lr (cosine / linear).
            eval_sampling: If set, validation also samples completions of the held-out prompts and logs
                val/pass@1 (and val/cons@n) -- how a base model is picked by measured accuracy.
            eval_reward: Reward function name deciding correctness of sampled answers.
            export_dir: Where to save_pretrained the final model ('auto' = <log_dir>/hf_model, 'none' = skip).
        """
        super().__init__(policy, lr, weight_decay, betas, warmup_steps, lr_schedule, min_lr_ratio, eval_sampling,
                         eval_reward, export_dir)
        self.save_hyperparameters()
        self._t_batch = None

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        logp, _ = self.policy.token_logprobs(
            batch["input_ids"], batch.get("attention_mask"), position_ids=batch.get("position_ids"),
            loss_mask=batch["loss_mask"],
        )  # (B, T-1)
        return masked_nll(logp, batch["loss_mask"])

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._t_batch = time.perf_counter()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, stats = self._loss(batch)
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/tokens", stats["tokens"], reduce_fx="sum", batch_size=bs)
        # DeepSpeed: Lightning and engine.backward both divide by the accumulation count (r1lightning.zero)
        return loss * accumulation_compensation(self._trainer)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        dt = time.perf_counter() - self._t_batch
        ntok = float(batch["loss_mask"].sum()) if "loss_mask" in batch else 0.0
        self.log("train/tokens_per_s", ntok / max(dt, 1e-9))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        strategy = deepspeed_strategy(self._trainer)
        if strategy is not None and (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            # ZeRO keeps gradients in its own partitions (p.grad is None): the norm its step computed, before
            # clipping, over all ranks
            norm = strategy.deepspeed_engine.get_global_grad_norm()
            if norm is not None:
                self.log("train/grad_norm", float(norm))

    def on_before_optimizer_step(self, optimizer) -> None:
        if deepspeed_strategy(self._trainer) is not None:
            return  # logged after DeepSpeed's step instead (on_train_batch_end)
        norm = self.grad_norm()
        if norm is not None:  # the norm before clipping (Lightning clips after this hook)
            self.log("train/grad_norm", norm)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, _ = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        if self.eval_sampling is not None and "prompt_ids" in batch:
            self.sample_and_score(batch["prompt_ids"], {"answer": batch["answer"]})

    def on_validation_epoch_end(self) -> None:
        self.log_sampled_eval("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        loss, _ = self._loss(batch)
        self.log("test/loss", loss, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        if self.eval_sampling is not None and "prompt_ids" in batch:
            self.sample_and_score(batch["prompt_ids"], {"answer": batch["answer"]})

    def on_test_epoch_end(self) -> None:
        self.log_sampled_eval("test")

