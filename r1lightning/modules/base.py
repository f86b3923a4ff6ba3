"""What every r1lightning LightningModule shares: the policy, the optimiser and LR schedule,
sampled evaluation (pass@1 / cons@k on held-out prompts) and the Hugging Face export at the end of fit.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from typing import Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from r1lightning.metrics import ConsAtK, PassAtK
from r1lightning.policy import FSDPSettings, LoraSettings, Policy, PolicyConfig, TinyModelSettings
from r1lightning.rollout.base import RolloutEngine, SamplingSettings

log = logging.getLogger(__name__)

# checkpoints store hyperparameters; let torch.load(weights_only=True) rebuild our plain config classes
torch.serialization.add_safe_globals([PolicyConfig, TinyModelSettings, LoraSettings, FSDPSettings, SamplingSettings])


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from 0, then constant / linear / cosine decay to ``min_lr_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def expand_columns(columns: dict[str, list], n: int) -> dict[str, list]:
    """Per-prompt columns repeated for the n samples of each prompt (group-contiguous)."""
    return {k: [v for v in values for _ in range(n)] for k, values in columns.items()}


def reduce_over_ranks(module: pl.LightningModule, values: list[float], op: str = "sum") -> list[float]:
    """Element-wise all-reduce of a list of floats over the module's ranks (one collective; none on one rank)."""
    trainer = module._trainer
    if trainer is None or trainer.world_size <= 1 or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=module.device)
    return trainer.strategy.reduce(t, reduce_op=op).tolist()


class PolicyModule(pl.LightningModule):
    """Base class: owns ``self.policy`` and the optimiser; subclasses write the step."""

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
        super().__init__()
        if lr_schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine', 'linear' or 'constant', got {lr_schedule!r}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.policy = Policy(policy)
        self.eval_sampling = eval_sampling
        self.eval_reward = eval_reward
        self.export_dir = export_dir
        self.val_pass1 = PassAtK(k=1)
        self.val_cons = ConsAtK()
        self._eval_engine: Optional[RolloutEngine] = None
        self._val_stats: dict[str, float] = {}

    @property
    def tokenizer(self):
        return self.policy.tokenizer

    def configure_model(self) -> None:
        from r1lightning.zero import build_policy

        # idempotent: Lightning may call it more than once. Under ModelParallelStrategy: sharded with FSDP2; under
        # DeepSpeed ZeRO-3: loaded into partitions
        build_policy(self, self.policy, device_mesh=self.fsdp_mesh(), param_dtype=self.fsdp_param_dtype())

    # ---------------------------------------------------------------- FSDP2
    def fsdp_mesh(self):
        """The data-parallel device mesh to shard over (FSDP2), or None when the strategy does not shard.

        ``ModelParallelStrategy`` sets ``device_mesh``; r1lightning shards over its data-parallel dimension only
        (tensor_parallel_size must be 1)."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None:
            return None
        names = mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                f"ModelParallelStrategy(tensor_parallel_size={mesh['tensor_parallel'].size()}): r1lightning shards "
                "the policy with FSDP2 over data-parallel ranks only; set tensor_parallel_size: 1 and "
                "data_parallel_size to the number of ranks")
        return mesh["data_parallel"] if "data_parallel" in names else mesh

    def fsdp_param_dtype(self) -> Optional[torch.dtype]:
        """The dtype FSDP2 gathers the weights in for compute, from ``trainer.precision`` (bf16-mixed: bfloat16,
        16-mixed: float16, otherwise None = the weights' own). The sharded master weights keep the policy's
        dtype (float32) and gradients are reduced in float32."""
        precision = str(self._trainer.precision) if self._trainer is not None else ""
        if precision.startswith("bf16"):
            return torch.bfloat16
        if precision.startswith("16"):
            return torch.float16
        return None

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        from r1lightning.precision import check_master_weights
        from r1lightning.zero import keeps_fp32_master

        hp = self.hparams
        named = [(n, p) for n, p in self.policy.build().named_parameters() if p.requires_grad]
        # bf16/fp16 trainable weights would round AdamW steps at lr 3e-6 away: refuse them (r1lightning.precision),
        # unless DeepSpeed ZeRO's optimizer keeps the fp32 master copy of its bf16 parameters
        if not keeps_fp32_master(self._trainer):
            check_master_weights(named, self._trainer.precision if self._trainer is not None else None)
        params = [p for _, p in named]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # norms and biases are not decayed
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.lr, betas=tuple(hp.betas))
        total = self.total_optimizer_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, hp.warmup_steps, total, hp.lr_schedule, hp.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def total_optimizer_steps(self) -> int:
        try:
            total = self.trainer.estimated_stepping_batches
        except Exception:  # noqa: BLE001 - no trainer / unsized loader: schedule by max_steps only
            total = float("inf")
        if not math.isfinite(total):
            total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else 1
        return max(1, int(total))

    def grad_norm(self) -> Optional[float]:
        """Global L2 norm of the policy's gradients (None when no parameter has one)."""
        grads = [p.grad for p in self.policy.build().parameters() if p.grad is not None]
        if grads and hasattr(grads[0], "full_tensor"):
            # FSDP2: each rank holds shards of the gradients; the norm of the local shards, summed over ranks
            total = torch.nn.utils.get_total_norm([g.detach().float() for g in grads])
            return float(total.full_tensor())
        grads = [g.detach().float().norm() for g in grads]
        return float(torch.stack(grads).norm()) if grads else None

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        """Completions of the batch's prompts, sampled with eval_sampling (default: one sample)."""
        return self.eval_engine().generate(batch["prompt_ids"], self.eval_sampling or SamplingSettings(n=1)).texts

    # ---------------------------------------------------------------- evaluation by sampling
    def eval_engine(self) -> RolloutEngine:
        if self._eval_engine is None:
            from r1lightning.rollout.hf import HFRolloutEngine

            self._eval_engine = HFRolloutEngine(self.policy)
        return self._eval_engine

    def sample_and_score(self, prompt_ids: list[list[int]], columns: dict[str, list]) -> dict:
        """Sample ``eval_sampling.n`` completions per prompt, score them, update pass@1 / cons@k."""
        from r1lightning.rewards import get_reward_fn
        from r1lightning.rewards.format import format_reward
        from r1lightning.rewards.parsing import extract_final_answer

        s = self.eval_sampling
        t0 = time.perf_counter()
        out = self.eval_engine().generate(prompt_ids, s)
        cols = expand_columns(columns, s.n)
        correct = torch.tensor(get_reward_fn(self.eval_reward)(out.texts, **cols)) > 0.5
        correct = correct.view(len(prompt_ids), s.n)
        answers = [extract_final_answer(text) for text in out.texts]
        self.val_pass1.update(correct)
        self.val_cons.update([answers[i * s.n : (i + 1) * s.n] for i in range(len(prompt_ids))], correct)
        # sums, so that shards of different sizes on different ranks reduce to the exact global means
        stats = {
            "samples": float(len(out.texts)),
            "format_rate": float(sum(format_reward(out.texts))),
            "completion_length": float(out.num_completion_tokens),
            "truncated_ratio": float(sum(out.truncated)),
        }
        for k, v in stats.items():
            self._val_stats[k] = self._val_stats.get(k, 0.0) + v
        self._val_stats["eval_s"] = self._val_stats.get("eval_s", 0.0) + time.perf_counter() - t0
        return stats

    def _collect_sampled_eval(self, prefix: str) -> dict[str, float]:
        """pass@1, cons@n and sample statistics accumulated since the last call, over all ranks (then reset).

        Every rank must call it (the metrics and the sums are reduced with collectives), also one whose
        shard of the evaluation set was empty."""
        n = self.eval_sampling.n
        metrics = {f"{prefix}/pass@1": float(self.val_pass1.compute())}
        if n > 1:
            metrics[f"{prefix}/cons@{n}"] = float(self.val_cons.compute())
        keys = ("samples", "format_rate", "completion_length", "truncated_ratio", "eval_s")
        totals = dict(zip(keys, self._reduce([float(self._val_stats.get(k, 0.0)) for k in keys], "sum")))
        samples = max(totals.pop("samples"), 1.0)
        totals["eval_s"] /= self._world_size  # seconds per rank
        for k, v in totals.items():
            metrics[f"{prefix}/{k}"] = v if k == "eval_s" else v / samples
        self.val_pass1.reset()
        self.val_cons.reset()
        self._val_stats = {}
        return metrics

    # ---------------------------------------------------------------- ranks
    @property
    def _world_size(self) -> int:
        return int(self._trainer.world_size) if self._trainer is not None else 1

    def _reduce(self, values: list[float], op: str = "sum") -> list[float]:
        return reduce_over_ranks(self, values, op)

    def setup(self, stage: str) -> None:
        from r1lightning.zero import check_strategy

        check_strategy(self)  # DeepSpeed: refuse GRPO and configs that disagree with the trainer (r1lightning.zero)
        if self._trainer is not None and self._world_size == 1:
            # A colocated vLLM engine initialises a world-size-1 torch.distributed group in this process; Lightning
            # then advises sync_dist=True for every epoch-level value although nothing is distributed (and on
            # several ranks these are logged with sync_dist=True, their values already reduced over the ranks).
            warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(val|test)/",
                                    category=PossibleUserWarning)

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Refuse to write non-finite weights or optimizer state: the ModelCheckpoint callback would otherwise
        replace the last good ``last.ckpt`` with one that cannot be resumed. Raising here (every rank calls
        the hook before anything is written) leaves the files on disk as they were."""
        from r1lightning.guards import nonfinite_tensors

        bad = nonfinite_tensors(checkpoint.get("state_dict", {}), "state_dict")
        bad += nonfinite_tensors(checkpoint.get("optimizer_states", []), "optimizer_states")
        # sharded weights differ by rank: all ranks raise together, none waits at the barrier
        found = self._reduce([float(len(bad))], "sum")[0]
        if found:
            names = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
            what = f"{len(bad)} tensor(s) on this rank hold NaN or inf ({names})" if bad else \
                "another rank's tensors hold NaN or inf"
            raise RuntimeError(
                f"refusing to save a checkpoint at step {self.global_step}: {what}; the checkpoints already on disk "
                "are kept. Resume from the last one and lower lr or check the precision and the rewards")

    def log_sampled_eval(self, prefix: str = "val") -> None:
        if self.eval_sampling is None or self.val_pass1.count == 0:
            return
        # already reduced over ranks: sync_dist only averages equal values (and tells Lightning they are global)
        for k, v in self._collect_sampled_eval(prefix).items():
            self.log(k, v, prog_bar=k.endswith("pass@1"), sync_dist=True)

    # ---------------------------------------------------------------- export
    def on_fit_end(self) -> None:
        if self.export_dir in (None, "", "none"):
            return
        from r1lightning.zero import full_state_dict

        self._export(full_state_dict(self, self.policy))  # DeepSpeed: gathered on every rank, rank 0 writes

    def _export(self, state_dict: Optional[dict] = None) -> None:
        """One ``save_pretrained`` folder, written by rank 0. A sharded (FSDP2) policy is gathered tensor by tensor
        on every rank (a collective) and written by rank 0; under DeepSpeed ``state_dict`` holds the gathered fp32
        masters on rank 0; an unsharded policy is written by rank 0 alone."""
        path = self.export_dir
        if path == "auto":
            # the logger's folder as rank 0 names it (the other ranks may not know its version)
            base = self.trainer.log_dir or self.trainer.default_root_dir
            path = os.path.join(base, "hf_model")
        if self.policy.sharded:
            path = self.trainer.strategy.broadcast(path)
            out = self.policy.save_pretrained(path)
        elif self.global_rank != 0:
            return
        elif state_dict is None:
            out = self.policy.save_pretrained(path)
        else:  # the module holds partitions (ZeRO-3) or bf16 copies (ZeRO bf16): write the gathered fp32 weights
            os.makedirs(path, exist_ok=True)
            self.policy.build().save_pretrained(path, state_dict=state_dict, safe_serialization=True)
            self.policy.tokenizer.save_pretrained(path)
            out = path
        if self.global_rank == 0:
            log.info("exported the policy to %s", out)
            print(f"[r1lightning] exported the trained policy (save_pretrained) to {out}")
