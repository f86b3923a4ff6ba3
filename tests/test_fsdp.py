"""FSDP2 (Lightning's ModelParallelStrategy, ``fully_shard``) on 2 gloo CPU ranks, compared with one process.

Tolerances: a 2-rank run reduces gradients over ranks (a float32 sum in another order than one process's), so
losses and weights agree to float32 rounding, not bit for bit: 1e-5 absolute on weights that move by ~1e-1.
A resumed run repeats the uninterrupted one exactly (torch.equal).
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SFT_WORKER = ROOT / "tests" / "fsdp_sft_worker.py"
GRPO_WORKER = ROOT / "tests" / "ddp_grpo_worker.py"
TOL = dict(atol=1e-5, rtol=0)


def run(script: Path, out: Path, *args: str, timeout: int = 300) -> list[dict]:
    """Run a worker; a hang fails the test and no rank is left behind (own process group)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), "--out", str(out), *args], cwd=out, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{script.name} {' '.join(args)} did not finish in {timeout} s (collectives out of step?)")
    assert proc.returncode == 0, log[-4000:]
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
    (single,) = run(GRPO_WORKER, tmp_path / "one", "--devices", "1")
    r0, r1 = run(GRPO_WORKER, tmp_path / "two", "--devices", "2", "--strategy", "fsdp")
    assert r0["sharded"] and not single["sharded"]
    assert single["global_step"] == r0["global_step"] == 8
    assert any(pad > 0 for step in r0["work"] for _, pad in step)  # rank 0 ran padding micro-batches
    for a, b in zip(single["metrics"], r0["metrics"]):
        for key in ("train/loss", "train/policy_loss", "train/kl", "train/grad_norm", "train/entropy"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    for name, p in single["params"].items():
        assert torch.equal(r0["params"][name], r1["params"][name]), name
        torch.testing.assert_close(r0["params"][name], p, **TOL, msg=name)
