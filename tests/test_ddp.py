"""Multi-process DDP (gloo, 2 CPU ranks) through the real CLI: train, checkpoint, resume."""

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from r1l_testing import run_process_group

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


ASYNC = ["--model.init_args.rollout",
         '{"class_path": "r1lightning.rollout.HFEngineSettings", "init_args": {"async_rollouts": true, "max_staleness": 1}}']


@pytest.mark.slow
def test_grpo_ddp_two_ranks_async_rollouts_checkpoint_both_ranks_batches_in_flight(tmp_path):
    fit(tmp_path, 2, *ASYNC)
    ckpts = sorted(glob.glob(str(tmp_path / "ckpt" / "*.ckpt")))
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    # the pipeline-filling step took one batch more per rank: 3 consumed, 2 trained, one in flight on each rank
    assert state["PromptDataModule"]["consumed_batches"] == 3
    inflight = state["r1lightning_grpo"]["inflight"]
    assert len(inflight) == 2 and all(s is not None for s in inflight)
    assert inflight[0]["prompt_ids"] != inflight[1]["prompt_ids"]  # each rank's own shard, gathered into rank 0's file
    fit(tmp_path, 4, *ASYNC, "--ckpt_path", ckpts[-1])
    ckpts = sorted(glob.glob(str(tmp_path / "ckpt" / "*.ckpt")), key=os.path.getmtime)
    assert torch.load(ckpts[-1], map_location="cpu", weights_only=False)["global_step"] == 4


WORKER = ROOT / "tests" / "ddp_grpo_worker.py"


def run_worker(out, devices, timeout=300):
    """Run the scripted GRPO fit; a hang fails the test and no rank is left behind (own process group)."""
    run_process_group([sys.executable, WORKER, "--devices", devices, "--out", out], out, timeout,
                      f"the {devices}-process GRPO fit did not finish in {timeout} s (collectives out of step?)")
    return [torch.load(p, map_location="cpu", weights_only=False) for p in sorted(Path(out).glob("rank*.pt"))]


@pytest.fixture(scope="module")
def scripted_runs(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    return run_worker(one, 1), run_worker(two, 2)


@pytest.mark.slow
def test_grpo_ddp_uneven_work_finishes_with_equal_weights(scripted_runs):
    """Rank 0: short completions, and a mini-batch with no row left (zero-variance groups filtered); rank 1:
    long completions split into many micro-batches. Before the equal-work fix this deadlocked."""
    _, (r0, r1) = scripted_runs
    assert r0["global_step"] == r1["global_step"] == 8  # 2 rollouts x mu 2 x 2 mini-batches
    for step0, step1 in zip(r0["work"], r1["work"]):
        # the same number of micro-batches in every mini-batch on both ranks ...
        assert [n for n, _ in step0] == [n for n, _ in step1]
        assert all(pad == 0 for _, pad in step1)  # ... rank 1 sets the count, rank 0 pads up to it
    assert all(pad > 0 for step in r0["work"] for _, pad in step)
    assert any(n == pad for step in r0["work"] for n, pad in step)  # a mini-batch with no real row on rank 0
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name  # one all-reduced gradient per step: identical replicas


@pytest.mark.slow
def test_grpo_two_ranks_match_one_process_step_for_step(scripted_runs):
    """Same rollouts (scripted engine), 2 ranks vs 1 process on the union of their prompts: global loss
    normalisers and one all-reduce per optimizer step make it the same algorithm."""
    (single,), (r0, _) = scripted_runs
    assert single["global_step"] == r0["global_step"]
    assert len(single["metrics"]) == len(r0["metrics"]) == 2
    for a, b in zip(single["metrics"], r0["metrics"]):
        for key in ("train/loss", "train/policy_loss", "train/kl", "train/grad_norm", "train/reward",
                    "train/reward_std", "train/kept_ratio", "train/completion_length/mean", "train/entropy"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    moved = max(float(p.abs().max()) for p in single["params"].values())
    assert moved > 0.1
    for name, p in single["params"].items():
        torch.testing.assert_close(r0["params"][name], p, atol=1e-5, rtol=0, msg=name)
