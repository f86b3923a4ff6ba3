"""An SFT (or distillation) fit on scripted batches, as one process or as 2 gloo ranks (run by tests/test_fsdp.py).

Every rank's batch has the same number of scored tokens, so the mean of the ranks' token-mean losses is the
token-mean loss of their union: a 2-rank run (FSDP2 or DDP, gradients averaged over ranks) takes the same steps
as one process trained on the union batch. Batch ``s`` is chosen by ``trainer.global_step``, so a resumed run
sees the batches the uninterrupted one saw.

    python tests/fsdp_sft_worker.py --devices 2 --strategy fsdp --out DIR [--ckpt-every 2] [--resume CKPT]
    python tests/fsdp_sft_worker.py --devices 1 --out DIR        # the union batches in one process

Writes DIR/rank{r}.pt: per-step losses of this rank, the gathered final weights, logits of a probe sequence
computed by the trained (sharded) model, and with ``--engine`` the weights pushed into an HF rollout engine.
"""

from __future__ import annotations

import argparse
import os

import lightning.pytorch as pl
import torch

from r1lightning.modules import DistillModule, SFTModule
from r1lightning.policy import LoraSettings, PolicyConfig, TinyModelSettings

ROWS_PER_RANK, WIDTH, PROMPT = 2, 12, 3  # each row scores WIDTH - PROMPT tokens (loss_mask is (B, WIDTH - 1))
PROBE = [[1, 17, 33, 49, 65, 81, 97, 113, 129, 145]]


def tiny(seed: int = 0, lora: bool = False) -> PolicyConfig:
    return PolicyConfig(tiny=TinyModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=64, seed=seed),
                        lora=LoraSettings(r=4, alpha=8) if lora else None)


def rank_rows(rank: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randint(3, 400, (ROWS_PER_RANK, WIDTH), generator=g)


def batch(rows: torch.Tensor) -> dict:
    mask = torch.ones(rows.shape[0], WIDTH - 1, dtype=torch.long)
    mask[:, : PROMPT - 1] = 0
    return {"input_ids": rows, "attention_mask": torch.ones_like(rows), "loss_mask": mask}


class StepBatches(torch.utils.data.IterableDataset):
    """Batch ``trainer.global_step`` onwards: this rank's rows, or the union of both ranks' rows (one process)."""

    def __init__(self, dm: "ScriptedData"):
        self.dm = dm

    def __iter__(self):
        trainer = self.dm.trainer
        for step in range(trainer.global_step, self.dm.steps):
            if self.dm.single:
                yield batch(torch.cat([rank_rows(r, step) for r in range(2)]))
            else:
                yield batch(rank_rows(trainer.global_rank, step))


class ScriptedData(pl.LightningDataModule):
    def __init__(self, steps: int, single: bool):
        super().__init__()
        self.steps, self.single = steps, single

    def train_dataloader(self):
        return torch.utils.data.DataLoader(StepBatches(self), batch_size=None)


class Record(pl.Callback):
    def __init__(self):
        self.losses, self.grad_norms = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.grad_norms.append(float(trainer.callback_metrics["train/grad_norm"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--strategy", choices=["ddp", "fsdp"], default="fsdp")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--ckpt-every", type=int, default=0)
    ap.add_argument("--resume", default=None)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--teacher", action="store_true", help="distillation with a logit-level KD term")
    ap.add_argument("--export", action="store_true")
    ap.add_argument("--engine", action="store_true", help="push the trained weights into an HF rollout engine")
    ap.add_argument("--precision", default="32-true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0)
    common = dict(lr=1e-2, warmup_steps=0, lr_schedule="constant", eval_sampling=None,
                  export_dir=os.path.join(args.out, "export") if args.export else "none")
    if args.teacher:
        module = DistillModule(policy=tiny(lora=args.lora), teacher=tiny(seed=1), kd_weight=0.5, **common)
    else:
        module = SFTModule(policy=tiny(lora=args.lora), **common)
    if args.devices == 1:
        strategy = "auto"
    elif args.strategy == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=args.devices, tensor_parallel_size=1)
    else:
        strategy = "ddp"
    rec = Record()
    callbacks = [rec]
    if args.ckpt_every:
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks.append(ModelCheckpoint(dirpath=os.path.join(args.out, "ckpt"), every_n_train_steps=args.ckpt_every,
                                         save_top_k=-1, filename="step{step}", auto_insert_metric_name=False))
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy=strategy, max_steps=args.steps, gradient_clip_val=1.0,
        use_distributed_sampler=False, logger=False, enable_checkpointing=bool(args.ckpt_every),
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, default_root_dir=args.out,
        log_every_n_steps=1, precision=args.precision,
    )
    trainer.fit(module, ScriptedData(args.steps, single=args.devices == 1), ckpt_path=args.resume)
    policy = module.policy
    params = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
              for k, v in policy.model.state_dict().items()}
    with torch.no_grad():
        logits = policy.build().eval()(input_ids=torch.tensor(PROBE)).logits  # a root forward: every rank runs it
    merged = {name: t.clone() for name, t in policy.merged_weights()}
    out = {"losses": rec.losses, "grad_norms": rec.grad_norms, "params": params, "logits": logits, "merged": merged,
           "global_step": trainer.global_step, "sharded": policy.sharded,
           "world": trainer.world_size}
    if args.engine:
        from r1lightning.rollout.hf import HFRolloutEngine

        engine = HFRolloutEngine(policy, own_weights=True)  # built from the gathered weights
        with torch.no_grad():
            for p in engine.model.parameters():
                p.zero_()  # so the push below must write every tensor
        info = engine.update_weights(policy)
        out["engine"] = {k: v.clone() for k, v in engine.model.state_dict().items()}
        out["engine_tensors"] = info["tensors"]
        out["engine_probe"] = engine.probe_logprobs(PROBE[0])
        out["policy_probe"] = policy.token_logprobs(torch.tensor(PROBE))[0][0].tolist()
    os.makedirs(args.out, exist_ok=True)
    torch.save(out, os.path.join(args.out, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main()
