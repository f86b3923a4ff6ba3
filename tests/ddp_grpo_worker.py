"""A GRPO fit on scripted rollouts, as one process or as 2 gloo ranks (run by tests/test_ddp.py).

The rollouts are a pure function of the prompt (``ScriptedEngine``), so a 2-rank run and a 1-process run
on the union of both ranks' prompts see exactly the same completions and rewards. The prompts are built
so the ranks get deliberately different work: rank 0 short completions and, in its second mini-batch,
only zero-variance groups (dropped by dynamic sampling: no row at all to learn from); rank 1 long
completions that a small ``micro_batch_tokens`` splits into many more micro-batches.

    python tests/ddp_grpo_worker.py --devices 2 --out DIR     # writes DIR/rank0.pt, DIR/rank1.pt
    python tests/ddp_grpo_worker.py --devices 1 --out DIR     # the same steps in one process: DIR/rank0.pt
    python tests/ddp_grpo_worker.py --devices 2 --strategy fsdp --out DIR   # FSDP2 (ModelParallelStrategy)

Saved weights are full tensors (gathered from the shards under FSDP2).
"""

from __future__ import annotations

import argparse
import os
import zlib

import lightning.pytorch as pl
import torch

from r1lightning.modules import GRPOModule
from r1lightning.policy import PolicyConfig, TinyModelSettings
from r1lightning.rollout import RolloutBatch, RolloutEngine, SamplingSettings
from r1lightning.tiny import build_tiny_tokenizer

SHORT, LONG, FLAT = 5, 6, 7  # first prompt token: the kind of group the engine scripts for it
GROUPS_PER_RANK = 4
NUM_MINIBATCHES = 2


class ScriptedEngine(RolloutEngine):
    """Completions determined by the prompt alone: SHORT 1-3 tokens, LONG 12-20, FLAT G identical ones."""

    holds_weights = False

    def generate(self, prompt_ids, sampling):
        rows = []
        for p in prompt_ids:
            key = zlib.crc32(bytes(p))
            for i in range(sampling.n):
                salt = 0 if p[0] == FLAT else i + 1  # FLAT: every sample the same -> zero reward variance
                h = zlib.crc32(bytes([*p, salt]))
                n = 1 + h % 3 if p[0] in (SHORT, FLAT) else 12 + h % 9
                rows.append([20 + (key + 31 * salt + 7 * j) % 200 for j in range(n)])
        texts = [" ".join(map(str, r)) for r in rows]
        return RolloutBatch(prompt_ids=list(prompt_ids), completion_ids=rows, texts=texts,
                            truncated=[False] * len(rows), n=sampling.n, stats={"tokens_per_s": 1.0})


def crc_reward(completions, **kw):
    """Differs for any two different completions; equal for equal ones."""
    return [zlib.crc32(t.encode()) % 1000 / 1000 for t in completions]


torch.serialization.add_safe_globals([crc_reward])


def rank_prompts(rank: int, step: int) -> list[list[int]]:
    """This rank's GROUPS_PER_RANK prompts at ``step``; mini-batch j holds groups [2j, 2j + 2)."""
    kinds = [SHORT, SHORT, FLAT, FLAT] if rank == 0 else [LONG] * GROUPS_PER_RANK
    return [[kind, 40 + step, 60 + rank, 80 + g] for g, kind in enumerate(kinds)]


def union_prompts(step: int, world: int = 2) -> list[list[int]]:
    """What one process trains on to take the same steps: mini-batch j = mini-batch j of every rank."""
    per = GROUPS_PER_RANK // NUM_MINIBATCHES
    out = []
    for j in range(NUM_MINIBATCHES):
        for r in range(world):
            out += rank_prompts(r, step)[j * per : (j + 1) * per]
    return out


class ScriptedData(pl.LightningDataModule):
    def __init__(self, steps: int, single: bool):
        super().__init__()
        self.steps, self.single = steps, single

    def train_dataloader(self):
        rank = self.trainer.global_rank
        batches = [{"prompt_ids": union_prompts(s) if self.single else rank_prompts(rank, s), "columns": {}}
                   for s in range(self.steps)]
        return torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)


class Record(pl.Callback):
    def __init__(self):
        self.metrics, self.work = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})
        self.work.append([(len(mb.micro), sum(m.padding for m in mb.micro)) for mb in outputs["minibatches"]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--micro-batch-tokens", type=int, default=40)
    ap.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp")
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0)
    tok = build_tiny_tokenizer()
    module = GRPOModule(
        policy=PolicyConfig(tiny=TinyModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                   intermediate_size=64)),
        rewards=[crc_reward], sampling=SamplingSettings(n=4, max_new_tokens=24), beta=0.001, lr=1e-2, mu=2,
        num_minibatches=NUM_MINIBATCHES, micro_batch_tokens=args.micro_batch_tokens, dynamic_sampling="filter",
        eval_sampling=None, export_dir="none", max_grad_norm=args.max_grad_norm,
    )
    module.policy.tokenizer = tok
    module.engine = ScriptedEngine()
    rec = Record()
    if args.strategy == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=args.devices, tensor_parallel_size=1)
    else:
        strategy = "ddp" if args.devices > 1 else "auto"
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy=strategy,
        max_steps=args.steps * NUM_MINIBATCHES * 2, use_distributed_sampler=False, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[rec], default_root_dir=args.out,
    )
    trainer.fit(module, ScriptedData(args.steps, single=args.devices == 1))
    os.makedirs(args.out, exist_ok=True)
    params = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
              for k, v in module.policy.model.state_dict().items()}
    torch.save({"params": params, "sharded": module.policy.sharded,
                "metrics": rec.metrics, "work": rec.work, "global_step": trainer.global_step},
               os.path.join(args.out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main()
