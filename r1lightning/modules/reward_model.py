"""Reward models for R1's last RL stage (DeepSeek-R1 §2.3.4: "for general data, we resort to reward models to
capture human preferences in complex and nuanced scenarios"), trained as Bradley-Terry models on preference
pairs (prompt, chosen, rejected).

    loss = mean_b [ -log sigmoid(r(x_b, y_b^+) - r(x_b, y_b^-) - margin) ]
           + center_coef * mean_b [ (r(x_b, y_b^+) + r(x_b, y_b^-))^2 ]

The first term is the negative log-likelihood of the preferences under P(y+ > y-) = sigmoid(r+ - r-)
(InstructGPT's reward-model loss); ``margin`` > 0 asks for a gap of at least that many logits (Llama 2 uses
per-pair margins from preference strength; here one constant). The second term (TRL's
``center_rewards_coefficient``, 0.01 in Eisenstein et al. 2023) keeps scores near 0 -- the Bradley-Terry loss
sees only differences, so without it the scores may drift to any offset, and a ``sigmoid`` normalisation of
the reward (:mod:`r1lightning.rewards.reward_model`) needs them centred.

Pairwise accuracy is the fraction of pairs with r+ > r- (a tie counts one half, the expected accuracy of a
coin flip); ``val/accuracy`` on held-out pairs is the number to read.

The backbone (:class:`RewardModel`) is any Hugging Face sequence-classification model with one label, or a
causal LM -- the policy itself, e.g. the SFT model of an earlier stage -- loaded into its
``*ForSequenceClassification`` class, which adds a scalar head (``score``) read at the last real token; the
export (``save_pretrained`` + tokenizer + ``r1lightning_reward.json``, the pair format) is what the
``reward_model`` reward loads.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from r1lightning.modules.base import PolicyModule
from r1lightning.policy import Policy, PolicyConfig, _DTYPES

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ math


def pairwise_accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Fraction of pairs ranked right; a tie counts 1/2.  chosen (B,), rejected (B,) -> scalar"""
    right = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()  # (B,)
    return right.mean()


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, margin: float = 0.0,
                       center_coef: float = 0.0) -> tuple[Tensor, dict]:
    """Bradley-Terry negative log-likelihood (+ optional reward centering).  chosen (B,), rejected (B,) -> scalar.

    Returns ``(loss, stats)``; stats (detached): ``bt_loss`` (the first term alone), ``accuracy``, ``margin``
    (mean r+ - r-), ``chosen`` / ``rejected`` (mean scores).
    """
    diff = chosen - rejected  # (B,)
    nll = -F.logsigmoid(diff - margin)  # (B,) log1p(exp(-x)) computed stably
    loss = nll.mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    stats = {
        "bt_loss": nll.mean().detach(),
        "accuracy": pairwise_accuracy(chosen.detach(), rejected.detach()),
        "margin": diff.mean().detach(),
        "chosen": chosen.mean().detach(),
        "rejected": rejected.mean().detach(),
    }
    return loss, stats


# ------------------------------------------------------------------------------------------------ backbone


class RewardModel(Policy):
    """The policy backbone with a scalar head: a ``*ForSequenceClassification`` (num_labels=1) built from a
    causal LM folder (head newly initialised), a sequence-classification folder, or ``tiny`` settings.

    Loading, tokenizer, dtype, attention implementation and gradient checkpointing follow
    :class:`r1lightning.policy.PolicyConfig`; ``save_pretrained`` also writes the pair format
    (``r1lightning_reward.json``) so the reward reads pairs exactly as training did.
    """

    def __init__(self, config: PolicyConfig | None = None, tokenizer=None, template: str = "chat",
                 max_length: int = 512):
        super().__init__(config, tokenizer)
        if self.config.lora is not None:
            raise ValueError("reward model: policy.lora is not supported; train all weights (set lora: null)")
        self.template, self.max_length = template, max_length

    def build(self, device_mesh=None, param_dtype=None):
        """Create (load) the scoring model once; later calls return it. Not sharded: FSDP2 (``device_mesh``) is
        refused: reward models are trained with DDP (one copy per rank)."""
        if device_mesh is not None:
            raise ValueError("RewardModelModule does not support FSDP2 (ModelParallelStrategy); train the reward "
                             "model with strategy: ddp")
        if self.model is not None:
            return self.model
        from transformers import AutoModelForSequenceClassification

        cfg = self.config
        kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
        path = self._source()
        if path is None:
            from r1lightning.tiny import tiny_llama_config

            t = cfg.tiny
            hf_config = tiny_llama_config(self.tokenizer, t.hidden_size, t.num_hidden_layers, t.num_attention_heads,
                                          t.intermediate_size, t.max_position_embeddings)
            hf_config.num_labels = 1
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(t.seed)
                model = AutoModelForSequenceClassification.from_config(hf_config, **kwargs)
            if cfg.dtype in _DTYPES:
                model = model.to(_DTYPES[cfg.dtype])
        else:
            dtype = "auto" if cfg.dtype == "auto" else _DTYPES[cfg.dtype]
            try:
                model = AutoModelForSequenceClassification.from_pretrained(
                    str(path), num_labels=1, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                    local_files_only=cfg.local_files_only, **kwargs)
            except ValueError as e:
                raise ValueError(f"reward model: cannot build a sequence-classification model with one label from "
                                 f"{cfg.model_name_or_path!r}: {e}") from None
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        model.train(self.training)
        self.model = model
        return model

    def scores(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Scalar reward per row.  input_ids (N, T), attention_mask (N, T) -> (N,) float32"""
        from r1lightning.rewards.reward_model import last_token_scores

        return last_token_scores(self.build(), input_ids, attention_mask)

    def save_pretrained(self, path, merge_lora: bool = True):
        from r1lightning.rewards.reward_model import FORMAT_FILE

        out = super().save_pretrained(path, merge_lora)
        (out / FORMAT_FILE).write_text(json.dumps({"template": self.template, "max_length": self.max_length},
                                                  indent=2) + "\n", encoding="utf-8")
        return out


# ------------------------------------------------------------------------------------------------ module


class RewardModelModule(PolicyModule):
    """Bradley-Terry reward model on preference pairs (:class:`r1lightning.data.PreferenceDataModule`)."""

    def __init__(
        self,
        policy: PolicyConfig,
        template: str = "chat",
        max_length: int = 512,
        margin: float = 0.0,
        center_coef: float = 0.0,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        lr_schedule: str = "cosine",
        min_lr_ratio: float = 0.1,
        export_dir: Optional[str] = "auto",
    ):
        """
        Args:
            policy: The backbone: a causal LM folder (e.g. the SFT policy; a scalar head is added), a
                sequence-classification folder with one label, or tiny settings (tests).
            template: How a (prompt, response) pair is written: 'chat' (the tokenizer's chat template, the
                response as the assistant turn), 'plain' or a format string with {prompt} and {completion}.
                Stored with the export, so the reward reads pairs the same way.
            max_length: Longest sequence in tokens (longer pairs keep their first tokens; counted and reported).
            margin: Logit gap asked between chosen and rejected: -log sigmoid(r+ - r- - margin).
            center_coef: Weight of the reward-centering term mean((r+ + r-)^2) (TRL: 0.01); keeps scores near 0.
            lr: Peak learning rate (AdamW).
            weight_decay: AdamW weight decay on matrices (not on norms / biases).
            betas: AdamW betas.
            warmup_steps: Linear warmup optimizer steps.
            lr_schedule: 'cosine', 'linear' or 'constant' after warmup.
            min_lr_ratio: Final LR as a fraction of lr (cosine / linear).
            export_dir: Where to save the reward model ('auto' = <log_dir>/hf_model, 'none' = skip).
        """
        super().__init__(policy, lr, weight_decay, betas, warmup_steps, lr_schedule, min_lr_ratio, None,
                         "accuracy", export_dir)
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if center_coef < 0:
            raise ValueError(f"center_coef must be >= 0, got {center_coef}")
        self.save_hyperparameters()
        # the policy's tokenizer is loaded already; the backbone gets a scalar head instead of the LM head
        self.policy = RewardModel(policy, tokenizer=self.policy.tokenizer, template=template, max_length=max_length)
        self._t_batch: Optional[float] = None
        self._cat: dict[str, list[float]] = {}

    @property
    def pair_format(self) -> dict:
        """What PreferenceDataModule needs to write pairs as the reward will read them."""
        return {"template": self.hparams.template, "max_length": self.hparams.max_length}

    def pair_scores(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(chosen (B,), rejected (B,)) scores of a PreferenceDataModule batch (2B rows, chosen first)."""
        s = self.policy.scores(batch["input_ids"], batch["attention_mask"])  # (2B,)
        b = s.shape[0] // 2
        return s[:b], s[b:]

    def _step(self, batch: dict, prefix: str) -> tuple[Tensor, Tensor, Tensor]:
        hp = self.hparams
        chosen, rejected = self.pair_scores(batch)
        loss, stats = bradley_terry_loss(chosen, rejected, hp.margin, hp.center_coef)
        bs = chosen.shape[0]
        sync = prefix != "train"
        self.log(f"{prefix}/loss", loss.detach(), prog_bar=True, batch_size=bs, sync_dist=sync)
        self.log(f"{prefix}/accuracy", stats["accuracy"], prog_bar=True, batch_size=bs, sync_dist=sync)
        self.log(f"{prefix}/margin", stats["margin"], batch_size=bs, sync_dist=sync)
        self.log(f"{prefix}/reward_chosen", stats["chosen"], batch_size=bs, sync_dist=sync)
        self.log(f"{prefix}/reward_rejected", stats["rejected"], batch_size=bs, sync_dist=sync)
        if hp.center_coef:
            self.log(f"{prefix}/bt_loss", stats["bt_loss"], batch_size=bs, sync_dist=sync)
        return loss, chosen, rejected

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._t_batch = time.perf_counter()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, _, _ = self._step(batch, "train")
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        dt = time.perf_counter() - self._t_batch
        self.log("train/tokens_per_s", float(batch["attention_mask"].sum()) / max(dt, 1e-9))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])

    def on_before_optimizer_step(self, optimizer) -> None:
        norm = self.grad_norm()
        if norm is not None:  # before clipping (Lightning clips after this hook)
            self.log("train/grad_norm", norm)

    def _eval_step(self, batch: dict, prefix: str) -> None:
        _, chosen, rejected = self._step(batch, prefix)
        right = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()  # (B,)
        for cat, r in zip(batch.get("category") or [], right.tolist()):
            if cat is not None:
                acc = self._cat.setdefault(cat, [0.0, 0.0])
                acc[0] += r
                acc[1] += 1.0

    def _log_categories(self, prefix: str) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        # the same list on every rank (each rank reads the whole validation set): one collective for all
        cats = list(getattr(dm, "val_categories", None) or sorted(self._cat))
        if cats:
            sums = self._reduce([v for c in cats for v in self._cat.get(c, [0.0, 0.0])], "sum")
            for i, cat in enumerate(cats):
                right, count = sums[2 * i], sums[2 * i + 1]
                if count:
                    self.log(f"{prefix}/accuracy/{cat}", right / count, sync_dist=True)
        self._cat = {}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_categories("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_categories("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Scores of the batch's pairs: {"chosen": [...], "rejected": [...]}."""
        chosen, rejected = self.pair_scores(batch)
        return {"chosen": chosen.tolist(), "rejected": rejected.tolist()}
