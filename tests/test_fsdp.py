"""FSDP2 (Lightning's ModelParallelStrategy, ``fully_shard``) on 2 gloo CPU ranks, compared with one process.

Tolerances: a 2-rank run reduces gradients over ranks (a float32 sum in another order than one process's), so
losses and weights agree to float32 rounding, not bit for bit: 1e-5 absolute on weights that move by ~1e-1.
A resumed run repeats the uninterrupted one exactly (torch.equal).
"""

import sys
from pathlib import Path

import pytest
import torch
from r1l_testing import run_process_group

ROOT = Path(__file__).resolve().parents[1]
SFT_WORKER = ROOT / "tests" / "fsdp_sft_worker.py"
GRPO_WORKER = ROOT / "tests" / "ddp_grpo_worker.py"
TOL = dict(atol=1e-5, rtol=0)


def run(script: Path, out: Path, *args: str, timeout: int = 300) -> list[dict]:
    """Run a worker; a hang fails the test and no rank is left behind (own process group)."""
    out.mkdir(parents=True, exist_ok=True)
    run_process_group([sys.executable, script, "--out", out, *args], out, timeout,
                      f"{script.name} {' '.join(args)} did not finish in {timeout} s (collectives out of step?)")
    return [torch.load(p, map_location="cpu", weights_only=False) for p in sorted(out.glob("rank*.pt"))]


def assert_same_run(single: dict, ranks: list[dict]) -> None:
    """Two ranks took the steps one process took on the union of their batches."""
    assert all(r["sharded"] for r in ranks) and not single["sharded"]
    assert single["global_step"] == ranks[0]["global_step"]
    # every rank scores as many tokens: the mean of the ranks' token means is the union's token mean
    union = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]
    assert union == pytest.approx(single["losses"], abs=1e-5)
    assert ranks[0]["grad_norms"] == pytest.approx(single["grad_norms"], abs=1e-5)
    for name, p in single["params"].items():
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name  # the same gathered weights
        torch.testing.assert_close(ranks[0]["params"][name], p, **TOL, msg=name)
    torch.testing.assert_close(ranks[0]["logits"], single["logits"], **TOL)


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("fsdp_sft")
    single = run(SFT_WORKER, base / "one", "--devices", "1")
    sharded = run(SFT_WORKER, base / "two", "--devices", "2", "--strategy", "fsdp", "--ckpt-every", "2", "--export",
                  "--engine")
    return base, single[0], sharded


@pytest.mark.slow
def test_fsdp_sft_two_ranks_match_one_process(sft_runs):
    from r1lightning.policy import Policy

    sys.path.insert(0, str(ROOT / "tests"))
    from fsdp_sft_worker import tiny

    _, single, ranks = sft_runs
    assert_same_run(single, ranks)
    start = Policy(tiny()).build().state_dict()
    moved = max(float((single["params"][k] - start[k]).abs().max()) for k in start)
    assert moved > 2e-2  # the tolerance is far below what the steps changed


@pytest.mark.slow
def test_fsdp_sharded_checkpoint_resumes_exactly(sft_runs):
    base, _, uninterrupted = sft_runs
    ckpt = base / "two" / "ckpt" / "step2.ckpt"
    assert ckpt.is_dir() and len(list(ckpt.glob("*.distcp"))) == 2  # a distributed checkpoint: one shard per rank
    resumed = run(SFT_WORKER, base / "resumed", "--devices", "2", "--strategy", "fsdp", "--resume", str(ckpt))
    assert resumed[0]["global_step"] == 4
    assert resumed[0]["losses"] == uninterrupted[0]["losses"][2:]  # steps 3 and 4, exactly
    for name, p in uninterrupted[0]["params"].items():
        assert torch.equal(resumed[0]["params"][name], p), name


@pytest.mark.slow
def test_fsdp_export_is_one_hf_folder_with_the_same_weights_and_logits(sft_runs):
    from transformers import AutoModelForCausalLM

    base, _, ranks = sft_runs
    export = base / "two" / "export"
    assert sorted(p.name for p in export.glob("*.safetensors")) == ["model.safetensors"]
    model = AutoModelForCausalLM.from_pretrained(export)
    state = model.state_dict()
    for name, p in ranks[0]["params"].items():
        assert torch.equal(state[name], p), name
    sys.path.insert(0, str(ROOT / "tests"))
    from fsdp_sft_worker import PROBE

    with torch.no_grad():
        logits = model(input_ids=torch.tensor(PROBE)).logits
    # the sharded model's forward (weights gathered) and the reloaded one's differ by float32 rounding at most
    torch.testing.assert_close(logits, ranks[0]["logits"], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_fsdp_weights_pushed_to_an_engine_equal_the_unsharded_model(sft_runs):
    """The push gathers the shards one tensor at a time in the same order on both ranks (else it would hang)
    and the engine ends up with the gathered model, every tensor (the engine was zeroed before the push)."""
    _, _, ranks = sft_runs
    for r in ranks:
        assert set(r["engine"]) == set(r["params"])
        assert r["engine_tensors"] == len(r["merged"])
        for name, p in r["params"].items():
            assert torch.equal(r["engine"][name], p), name
        assert max(abs(a - b) for a, b in zip(r["engine_probe"], r["policy_probe"])) < 1e-5


@pytest.mark.slow
def test_fsdp_lora_student_and_sharded_teacher_match_one_process(tmp_path):
    """LoRA adapters inside the sharded layers (initialised on rank 0), a sharded frozen teacher (KD term), the
    merged push: all as one process computes them."""
    single = run(SFT_WORKER, tmp_path / "one", "--devices", "1", "--lora", "--teacher")[0]
    ranks = run(SFT_WORKER, tmp_path / "two", "--devices", "2", "--strategy", "fsdp", "--lora", "--teacher",
                "--engine")
    assert_same_run(single, ranks)
    assert any("lora_A" in k for k in single["params"])
    assert list(ranks[0]["merged"]) == list(single["merged"])  # merged names, the same order
    for name, p in single["merged"].items():
        torch.testing.assert_close(ranks[0]["merged"][name], p, **TOL, msg=name)
        assert torch.equal(ranks[0]["engine"][name], ranks[0]["merged"][name]), name


@pytest.mark.slow
def test_fsdp_grpo_two_ranks_match_one_process_step_for_step(tmp_path):
    """The scripted GRPO fit of tests/ddp_grpo_worker.py (uneven work per rank: padding micro-batches, a
    mini-batch with no row on rank 0, beta > 0 so a sharded reference) under FSDP2 vs one process."""
    # gradient norms are ~0.8: clipping at 0.5 acts on every step (sharded gradients, DTensor norms)
    (single,) = run(GRPO_WORKER, tmp_path / "one", "--devices", "1", "--max-grad-norm", "0.5")
    r0, r1 = run(GRPO_WORKER, tmp_path / "two", "--devices", "2", "--strategy", "fsdp", "--max-grad-norm", "0.5")
    assert r0["sharded"] and not single["sharded"]
    assert single["global_step"] == r0["global_step"] == 8
    assert any(pad > 0 for step in r0["work"] for _, pad in step)  # rank 0 ran padding micro-batches
    assert min(m["train/grad_norm"] for m in single["metrics"]) > 0.5
    for a, b in zip(single["metrics"], r0["metrics"]):
        for key in ("train/loss", "train/policy_loss", "train/kl", "train/grad_norm", "train/entropy"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    for name, p in single["params"].items():
        assert torch.equal(r0["params"][name], r1["params"][name]), name
        torch.testing.assert_close(r0["params"][name], p, **TOL, msg=name)


# ---------------------------------------------------------------------------------------------------------
# The real CLI, 2 ranks launched by torchrun (TorchElastic environment: Lightning launches nothing itself)

FSDP2 = '{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy", "init_args": {"data_parallel_size": 2, ' \
        '"tensor_parallel_size": 1}}'
TINY = ('{"model_name_or_path": null, "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, '
        '"intermediate_size": 64}}')


def torchrun(tmp_path: Path, config: str, strategy: str, *args: str, timeout: int = 400) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "r1lightning", "fit", "--config", str(ROOT / "configs" / config),
           "--trainer.devices", "2", "--trainer.strategy", FSDP2 if strategy == "fsdp" else strategy,
           "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
           "--model.init_args.export_dir", str(tmp_path / "export"), *args]
    log = run_process_group(cmd, tmp_path, timeout, f"torchrun {config} {strategy} did not finish in {timeout} s")
    assert "exported the trained policy" in log
    assert (tmp_path / "export" / "model.safetensors").is_file()
    return log


def grpo_args(tmp_path: Path, max_steps: int) -> list[str]:
    return ["--model.init_args.policy", TINY, "--model.init_args.sampling.max_new_tokens", "8",
            "--model.init_args.sampling.n", "4", "--model.init_args.sampling.seed", "3",
            "--model.init_args.eval_sampling.max_new_tokens", "8", "--data.init_args.batch_size", "2",
            "--data.init_args.train_data", "synthetic:arithmetic?n=64&split=train",
            # 3 held-out prompts: 2 on rank 0, 1 on rank 1 (sampling with gathered weights, different lengths)
            "--data.init_args.val_data", "synthetic:arithmetic?n=3&split=test",
            "--trainer.max_steps", str(max_steps), "--trainer.max_time", "null",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
            "--trainer.callbacks", '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
            f'{{"dirpath": "{tmp_path / "ckpt"}", "every_n_train_steps": 2, "save_top_k": -1}}}}]']


def sft_args() -> list[str]:
    return ["--trainer.callbacks", "null", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
            "--trainer.log_every_n_steps", "1",
            "--data.init_args.train_data", "synthetic:arithmetic?n=64&split=train", "--data.init_args.batch_size", "4",
            "--data.init_args.val_data", "synthetic:arithmetic?n=6&split=test", "--data.init_args.val_batch_size", "2",
            "--model.init_args.eval_sampling.max_new_tokens", "8", "--model.init_args.warmup_steps", "1",
            "--model.init_args.policy.tiny.hidden_size", "32", "--model.init_args.policy.tiny.num_hidden_layers", "2",
            "--model.init_args.policy.tiny.num_attention_heads", "2",
            "--model.init_args.policy.tiny.intermediate_size", "64"]


@pytest.mark.slow
def test_torchrun_grpo_fsdp_trains_resumes_from_the_sharded_checkpoint_and_exports(tmp_path):
    torchrun(tmp_path, "r1_zero.yaml", "fsdp", *grpo_args(tmp_path, 2))
    ckpt = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"
    assert len(list(ckpt.glob("*.distcp"))) == 2 and (ckpt / "meta.pt").is_file()
    torchrun(tmp_path, "r1_zero.yaml", "fsdp", *grpo_args(tmp_path, 4), "--ckpt_path", str(ckpt))
    meta = torch.load(tmp_path / "ckpt" / "epoch=0-step=4.ckpt" / "meta.pt", weights_only=True)
    assert meta["global_step"] == 4 and meta["PromptDataModule"]["consumed_batches"] == 4
    # the CLI read the folder's meta.pt: the resumed run logged into the interrupted run's version folder
    assert [p.name for p in (tmp_path / "logs" / "r1_zero").iterdir()] == ["version_0"]


@pytest.mark.slow
def test_torchrun_grpo_ddp(tmp_path):
    torchrun(tmp_path, "r1_zero.yaml", "ddp", *grpo_args(tmp_path, 2))
    assert torch.load(tmp_path / "ckpt" / "epoch=0-step=2.ckpt", weights_only=False)["global_step"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_sft(tmp_path, strategy):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torchrun(tmp_path, "sft_tiny_base.yaml", strategy, *sft_args())
    (events,) = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}  # one logger folder, rank 0's
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert len(acc.Scalars("train/loss")) == 2 and len(acc.Scalars("val/pass@1")) == 1
