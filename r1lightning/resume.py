"""Resuming honestly: which command-line changes a resume may carry, and where a resumed run logs.

LightningCLI, given ``--ckpt_path``, replaces the model's arguments by the hyperparameters stored in the
checkpoint, so ``--model.init_args.lr 5e-5`` next to a checkpoint silently does nothing. r1lightning's policy
(applied by :class:`r1lightning.cli.R1CLI`):

- the command line wins for :data:`SAFE_ON_RESUME` -- values that change how the run continues but not what
  the checkpoint holds (optimizer settings, clipping, the KL weight while it stays > 0, evaluation). Each
  applied change is reported; lr / betas / weight_decay are also written into the restored optimizer by
  :class:`OptimizerFromHparams` (the optimizer state in the checkpoint would otherwise keep the old values);
- any other difference (model, data-dependent sampling, loss, seeds) is refused with the list of differences.

The checkpoint also records where the run logged (:class:`RunRecord`), so a resumed run writes into the same
TensorBoard version folder instead of a new one.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_info

RUN_KEY = "r1lightning_run"  # checkpoint entry written by RunRecord

SAFE_ON_RESUME = ("lr", "weight_decay", "betas", "max_grad_norm", "beta", "max_empty_steps", "micro_batch_tokens",
                  "packing", "export_dir", "eval_reward", "eval_sampling")
"""``model.init_args`` keys (and everything under them) that the command line may change on resume."""


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves."""
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def model_differences(requested: dict, stored: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (stored, requested)}`` for every leaf of two dumped model configs that differs.

    Keys are relative to ``init_args`` (``class_path`` for the class). A key the checkpoint does not have
    (an option added since it was written) is not a difference: the requested value applies.
    """
    def leaves(cfg: dict) -> dict:
        flat = flatten(cfg.get("init_args") or {})
        flat["class_path"] = cfg.get("class_path")
        return flat

    req, old = leaves(requested), leaves(stored)
    return {k: (old[k], req[k]) for k in req if k in old and _norm(old[k]) != _norm(req[k])}


def split_safe(diffs: dict[str, tuple[Any, Any]]) -> tuple[dict, dict]:
    """(applied, refused). ``beta`` is safe only while it stays > 0: 0 means no reference model is built,
    so the checkpoint's and the new module's parameters would not match."""
    safe, refused = {}, {}
    for key, (old, new) in diffs.items():
        top = key.split(".", 1)[0]
        ok = top in SAFE_ON_RESUME
        if top == "beta" and (not old or not new):
            ok = False
        (safe if ok else refused)[key] = (old, new)
    return safe, refused


class RunRecord(pl.Callback):
    """Writes the logger's location into every checkpoint (``checkpoint["r1lightning_run"]``)."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        logger = trainer.logger
        if logger is None:
            return
        checkpoint[RUN_KEY] = {
            "logger": type(logger).__name__,
            "save_dir": None if logger.save_dir is None else str(logger.save_dir),
            "name": logger.name,
            "version": logger.version,
            "log_dir": None if trainer.log_dir is None else str(trainer.log_dir),
        }


class OptimizerFromHparams(pl.Callback):
    """After a restore, make the optimizer's lr / betas / weight_decay those of the module's hparams.

    Lightning restores the optimizer state, param groups included, from the checkpoint; without this a
    command-line ``lr`` applied on resume would reach the module's hparams but not the optimizer. The LR
    schedule's current factor (``lr / initial_lr``) is kept, so warmup and decay continue where they were.
    Weight decay is set on the groups of >= 2-d parameters (the ones PolicyModule decays).
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        hp = pl_module.hparams
        lr: Optional[float] = hp.get("lr")
        betas = hp.get("betas")
        wd = hp.get("weight_decay")
        changed = []
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                if lr is not None and "initial_lr" in group and group["initial_lr"] != lr:
                    factor = group["lr"] / group["initial_lr"]
                    changed.append(f"lr {group['initial_lr']} -> {lr}")
                    group["initial_lr"], group["lr"] = lr, lr * factor
                elif lr is not None and "initial_lr" not in group and group.get("lr") != lr:
                    changed.append(f"lr {group['lr']} -> {lr}")
                    group["lr"] = lr
                if betas is not None and "betas" in group and tuple(group["betas"]) != tuple(betas):
                    changed.append(f"betas {tuple(group['betas'])} -> {tuple(betas)}")
                    group["betas"] = tuple(betas)
                decayed = all(p.ndim >= 2 for p in group["params"])
                if wd is not None and decayed and "weight_decay" in group and group["weight_decay"] != wd:
                    changed.append(f"weight_decay {group['weight_decay']} -> {wd}")
                    group["weight_decay"] = wd
        if lr is not None:
            for cfg in trainer.lr_scheduler_configs:
                sched = cfg.scheduler
                if hasattr(sched, "base_lrs"):
                    sched.base_lrs = [g["initial_lr"] if "initial_lr" in g else g["lr"] for g in sched.optimizer.param_groups]
                    if hasattr(sched, "_last_lr"):
                        sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]
        if changed:
            rank_zero_info("resume: optimizer updated from the command line: " + ", ".join(sorted(set(changed))))
