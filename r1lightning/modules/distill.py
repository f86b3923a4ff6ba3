"""Distillation into a small student (DeepSeek-R1 §4, R1-Distill).

R1-Distill is plain SFT of the student on teacher-generated reasoning traces: with ``kd_weight = 0``
this module is exactly :class:`~r1lightning.modules.sft.SFTModule`. When teacher and student share a
tokenizer, a logit-level term can be added (an extension beyond the paper):

    loss = (1 - kd_weight) * NLL(student | trace) + kd_weight * D(teacher || student)

with D the forward KL, reverse KL or JSD of :func:`r1lightning.losses.kd_loss`, over the same
completion tokens. The teacher is frozen, kept in eval mode, and built with the student in
``configure_model``.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch

from r1lightning.losses import kd_loss
from r1lightning.modules.sft import SFTModule, masked_nll
from r1lightning.policy import Policy, PolicyConfig, position_ids_from_mask
from r1lightning.rollout.base import SamplingSettings


class DistillModule(SFTModule):
    """SFT on teacher traces, optionally with logit-level knowledge distillation."""

    def __init__(
        self,
        policy: PolicyConfig,
        teacher: Optional[PolicyConfig] = None,
        kd_weight: float = 0.0,
        kd_kind: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl",
        kd_temperature: float = 1.0,
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
            policy: The student.
            teacher: The teacher (needed when kd_weight > 0; must share the student's tokenizer).
            kd_weight: Weight of the logit-level term (0 = R1-Distill's pure SFT).
            kd_kind: 'forward_kl' (mode covering), 'reverse_kl' (mode seeking) or 'jsd'.
            kd_temperature: Softmax temperature of both distributions in the KD term.
            lr: Peak learning rate.
            weight_decay: AdamW weight decay.
            betas: AdamW betas.
            warmup_steps: Linear warmup steps.
            lr_schedule: 'cosine', 'linear' or 'constant'.
            min_lr_ratio: Final LR fraction.
            eval_sampling: Sampled held-out evaluation (val/pass@1).
            eval_reward: Reward deciding correctness in evaluation.
            export_dir: save_pretrained target of the student at the end of fit.
        """
        super().__init__(policy, lr, weight_decay, betas, warmup_steps, lr_schedule, min_lr_ratio, eval_sampling,
                         eval_reward, export_dir)
        self.save_hyperparameters()
        if not 0.0 <= kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
        if kd_weight > 0 and teacher is None:
            raise ValueError("kd_weight > 0 needs a teacher (model.init_args.teacher)")
        self.teacher = Policy(teacher) if teacher is not None and kd_weight > 0 else None
        if self.teacher is not None:
            s, t = self.policy.tokenizer, self.teacher.tokenizer
            if s.get_vocab() != t.get_vocab():
                raise ValueError(
                    "logit-level KD needs teacher and student to share a tokenizer; their vocabularies differ. "
                    "Use kd_weight: 0 (SFT on teacher traces, as R1-Distill does)"
                )

    def configure_model(self) -> None:
        super().configure_model()
        if self.teacher is not None and self.teacher.model is None:
            from r1lightning.zero import build_policy

            # sharded like the student under FSDP2, partitioned under ZeRO-3 (frozen, so never in the optimizer);
            # its logits come from its own forward, which gathers each layer, so its head needs no registration
            build_policy(self, self.teacher, register_head=False, device_mesh=self.fsdp_mesh(),
                         param_dtype=self.fsdp_param_dtype()).requires_grad_(False)
            self.teacher.model.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None and self.teacher.model is not None:
            self.teacher.model.eval()
        return self

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        if self.teacher is None:
            return super()._loss(batch)
        ids, attn, mask = batch["input_ids"], batch.get("attention_mask"), batch["loss_mask"]
        pos = batch.get("position_ids")
        if pos is None and attn is not None:
            pos = position_ids_from_mask(attn)
        student = self.policy.build()(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1]  # (B, T-1, V)
        with torch.no_grad():
            teacher = self.teacher.build()(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1]
        logp = torch.log_softmax(student.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
        nll, stats = masked_nll(logp, mask)
        kd, kd_stats = kd_loss(student, teacher, mask, kind=self.hparams.kd_kind,
                               temperature=self.hparams.kd_temperature)
        w = self.hparams.kd_weight
        if self.training:
            self.log("train/nll", nll.detach(), batch_size=ids.shape[0])
            self.log("train/kd", kd.detach(), batch_size=ids.shape[0])
        return (1 - w) * nll + w * kd, {**stats, **kd_stats}
