"""One rank of an SFT run under Lightning's DeepSpeedStrategy on CPU (gloo), launched by torchrun from
tests/test_zero.py.

Lightning's strategy refuses a non-CUDA accelerator in two places that are only device bookkeeping
(``setup_environment``'s accelerator check and ``setup_distributed``'s device-index check) and passes
``root_device.index`` (None on CPU) to ``deepspeed.initialize``; :class:`CPUDeepSpeedStrategy` removes
exactly those three things. Everything else -- ``deepspeed.zero.Init`` around ``configure_model``, the
config Lightning completes from the trainer (accumulation, clipping, bf16), ``engine.backward`` /
``engine.step``, DeepSpeed's sharded checkpoints and their resumption -- is Lightning's and DeepSpeed's own
code, with our SFTModule inside.

Writes ``<out>/rank<r>.pt``: the batches this rank trained on, the grad norms DeepSpeed computed, the
dtypes of the module's parameters and of ZeRO's master partitions.
"""

from __future__ import annotations

import argparse
import argparse as _argparse
import os
from pathlib import Path

import torch

torch.set_num_threads(1)

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.strategies import DeepSpeedStrategy  # noqa: E402

from r1lightning.data import SFTDataModule  # noqa: E402
from r1lightning.modules.sft import SFTModule  # noqa: E402
from r1lightning.policy import PolicyConfig  # noqa: E402

MODEL = "r1lightning/assets/tiny_base"
DATA = "synthetic:arithmetic?n=64&split=train&seed=0"


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    def setup_environment(self) -> None:
        super(DeepSpeedStrategy, self).setup_environment()  # DDPStrategy's: without the CUDA-only refusal

    def setup_distributed(self) -> None:
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()  # without the CUDA device-index validation

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        engine, opt, _, _ = deepspeed.initialize(
            args=_argparse.Namespace(device_rank=-1), config=self.config, model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad], optimizer=optimizer,
            lr_scheduler=lr_scheduler, dist_init_required=False)
        return engine, opt


class Recorder(pl.Callback):
    def __init__(self):
        self.batches, self.grad_norms = [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches.append({k: v.detach().clone() for k, v in batch.items() if isinstance(v, torch.Tensor)})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        norm = trainer.strategy.deepspeed_engine.get_global_grad_norm()
        self.grad_norms.append(None if norm is None else float(norm))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", type=int, default=3)
    ap.add_argument("--config", default=None, help="a DeepSpeed JSON (replaces --stage)")
    ap.add_argument("--precision", default="32-true")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--accumulate", type=int, default=2)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--ckpt-every", type=int, default=0)
    ap.add_argument("--resume", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--kd-weight", type=float, default=0.0,
                    help="> 0: DistillModule with the tiny base as a frozen teacher (partitioned too under ZeRO-3)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.kd_weight > 0:
        from r1lightning.modules.distill import DistillModule

        module = DistillModule(PolicyConfig(model_name_or_path=MODEL), teacher=PolicyConfig(model_name_or_path=MODEL),
                               kd_weight=args.kd_weight, lr=args.lr, lr_schedule="constant",
                               export_dir=str(out / "export"))
    else:
        module = SFTModule(PolicyConfig(model_name_or_path=MODEL), lr=args.lr, lr_schedule="constant",
                           export_dir=str(out / "export"))
    dm = SFTDataModule(train_data=DATA, template="chat", max_length=64, batch_size=args.batch_size,
                       tokenizer=module.policy.tokenizer)
    rec = Recorder()
    callbacks = [rec]
    if args.ckpt_every:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=args.ckpt_every,
                                                      save_top_k=-1))
    trainer = pl.Trainer(
        accelerator="cpu", devices=int(os.environ.get("WORLD_SIZE", 1)),
        strategy=CPUDeepSpeedStrategy(stage=args.stage, config=args.config), precision=args.precision, max_steps=args.steps,
        accumulate_grad_batches=args.accumulate, gradient_clip_val=args.clip, logger=False,
        enable_checkpointing=bool(args.ckpt_every), enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks, default_root_dir=out)
    trainer.fit(module, dm, ckpt_path=args.resume)
    opt = trainer.strategy.deepspeed_engine.optimizer
    masters = getattr(opt, "fp32_partitioned_groups_flat", None) or getattr(opt, "single_partition_of_fp32_groups")
    torch.save({
        "batches": rec.batches, "grad_norms": rec.grad_norms, "global_step": trainer.global_step,
        "param_dtypes": sorted({str(p.dtype) for p in module.policy.build().parameters()}),
        "teacher": None if getattr(module, "teacher", None) is None else {
            "trainable": sum(p.requires_grad for p in module.teacher.build().parameters()),
            # ZeRO-3 keeps this rank's partition in ds_tensor (tiny parameters are also kept whole, "persistent")
            "zero_params": sum(hasattr(p, "ds_id") for p in module.teacher.build().parameters()),
            "partition_numel": sum(p.ds_tensor.numel() for p in module.teacher.build().parameters()
                                   if hasattr(p, "ds_tensor")),
            "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in module.teacher.build().parameters()),
            "training_mode": module.teacher.build().training},
        "master_dtypes": sorted({str(t.dtype) for t in masters}),
        "config": {k: v for k, v in trainer.strategy.config.items() if isinstance(v, (int, float, str, dict))},
    }, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
