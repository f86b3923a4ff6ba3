"""The R1-behaviours demo in short (configs/r1_behaviours.yaml): a real GRPO run from the committed
styles base, whose logged scalars must move the way the full 60-step run's do (README table): held-out
accuracy up, responses longer and reflective words per 1k tokens up -- the base's column-checked solutions
are right more often than its plain worked ones (72% vs 47% of T = 1 samples), so the accuracy reward
favours checking -- and language mixing (prompted by the Chinese-worded prompts) down under the
language-consistency reward, which in the full run starts to bite after ~25 steps.

Short means fewer steps and prompts per step; the directions, not the sizes, are asserted.
"""

from __future__ import annotations

import sys

import pytest

from r1lightning.analysis import load_scalars, trend
from r1lightning.policy import PACKAGE_ROOT

STEPS = 40


@pytest.fixture(scope="module")
def run_scalars(tmp_path_factory):
    from r1lightning.cli import main

    root = tmp_path_factory.mktemp("r1_behaviours")
    mp = pytest.MonkeyPatch()
    mp.chdir(PACKAGE_ROOT.parent)  # the config names repository-relative paths
    mp.setattr(sys, "argv", ["r1lightning"])
    try:
        main(["fit", "--config", "configs/r1_behaviours.yaml",
              "--trainer.max_steps", str(STEPS),
              "--trainer.val_check_interval", str(STEPS),
              "--trainer.enable_progress_bar", "false",
              "--trainer.logger.init_args.save_dir", str(root),
              "--data.init_args.batch_size", "8",
              "--data.init_args.val_data", "synthetic:arithmetic_styles?n=200&split=test&seed=1",
              "--data.init_args.val_batch_size", "200"])
    finally:
        mp.undo()
    return load_scalars(root)


@pytest.mark.slow
def test_behaviours_move_in_the_directions_of_the_full_run(run_scalars):
    df = run_scalars
    # first vs last quarter of the logged steps (a tenth of a short run would be two noisy batches)
    reflect = trend(df, "reflect/per_1k_tokens", fraction=0.25)
    length = trend(df, "train/completion_length/mean", fraction=0.25)
    mixing = trend(df, "lang/mixing_rate", fraction=0.25)
    accuracy = trend(df, "val/pass@1")
    assert reflect[0] > 0 and reflect[1] > reflect[0], reflect
    assert length[1] > length[0], length
    assert mixing[0] > 0 and mixing[1] < mixing[0], mixing
    assert accuracy[1] > accuracy[0], accuracy
