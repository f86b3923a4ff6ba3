"""``python -m r1lightning`` -- one LightningCLI for every stage (SFT, GRPO, distillation).

The LightningModule and DataModule are chosen by ``class_path`` in the YAML, so a config such as
``configs/r1.yaml`` fully describes a run and any value can be overridden on the command line:

    python -m r1lightning fit --config configs/r1.yaml --model.init_args.lr 5e-5 --trainer.max_steps 200
"""

from __future__ import annotations

import os
import sys

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI


class R1CLI(LightningCLI):
    """LightningCLI with r1lightning's defaults (seeded runs, config saved next to the logs)."""


def main(args: list[str] | None = None) -> R1CLI:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return R1CLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        parser_kwargs={"description": "Train reasoning LLMs the DeepSeek-R1 way (GRPO, SFT, distillation)."},
    )


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
