"""Multi-process DDP (gloo, 2 CPU ranks) through the real CLI: train, checkpoint, resume."""

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ('{"model_name_or_path": null, "tiny": {"hidden_size": 32, "num_hidden_layers": 2, '
        '"num_attention_heads": 2, "intermediate_size": 64}}')


def fit(tmp_path, max_steps, *extra):
    cmd = [
        sys.executable, "-m", "r1lightning", "fit", "--config", str(ROOT / "configs" / "r1_zero.yaml"),
        "--model.init_args.policy", TINY, "--model.init_args.sampling.max_new_tokens", "8",
        "--model.init_args.sampling.n", "4", "--model.init_args.sampling.seed", "3",
        "--model.init_args.eval_sampling.max_new_tokens", "8",
        "--data.init_args.batch_size", "2", "--data.init_args.train_data", "synthetic:arithmetic?n=64&split=train",
        "--data.init_args.val_data", "synthetic:arithmetic?n=4&split=test",
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", str(max_steps),
        "--trainer.max_time", "null", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks", '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
        f'{{"dirpath": "{tmp_path / "ckpt"}", "every_n_train_steps": 2, "save_top_k": -1}}}}]',
        "--model.init_args.export_dir", str(tmp_path / "export"), *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_grpo_ddp_two_ranks_trains_and_resumes(tmp_path):
    fit(tmp_path, 2)
    ckpts = sorted(glob.glob(str(tmp_path / "ckpt" / "*.ckpt")))
    assert ckpts, "no checkpoint written"
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    # each rank consumed 2 batches; the DataModule state records the per-rank count
    assert state["PromptDataModule"]["consumed_batches"] == 2
    fit(tmp_path, 4, "--ckpt_path", ckpts[-1])
    assert (tmp_path / "export" / "model.safetensors").exists()  # rank 0 exported the policy
    ckpts = sorted(glob.glob(str(tmp_path / "ckpt" / "*.ckpt")), key=os.path.getmtime)
    assert torch.load(ckpts[-1], map_location="cpu", weights_only=False)["global_step"] == 4
