"""benchmarks/gpu_smoke.py runs only on a GPU machine; here: it imports, its options parse, and without CUDA
it refuses at once (exit code 2, naming what is missing) instead of failing somewhere inside vLLM."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_smoke.py"


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # importing it must not start anything
    return module


def test_options_parse(smoke):
    args = smoke.build_parser().parse_args([])
    assert args.phases == ["fp32", "bf16", "grpo", "resume", "async", "zero3", "zero3_resume", "fsdp_sft",
                           "fsdp_grpo"]
    assert args.child is None
    assert args.budget < 600  # the whole run fits a 10-minute device slot
    args = smoke.build_parser().parse_args(["--phases", "bf16", "grpo", "--out", "x.json", "--grpo-steps", "2"])
    assert args.phases == ["bf16", "grpo"] and args.grpo_steps == 2
    with pytest.raises(SystemExit):
        smoke.build_parser().parse_args(["--phases", "nope"])


def test_tiny_model_has_a_head_size_vllm_supports(smoke):
    assert smoke.TINY["hidden_size"] // smoke.TINY["num_attention_heads"] == 64


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_refuses_clearly_without_cuda():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "missing: CUDA" in out.stderr and out.stdout == ""


@pytest.mark.parametrize("phase", ["fsdp_sft", "fsdp_grpo"])
def test_fsdp_phase_command_parses(smoke, phase, tmp_path, capsys, monkeypatch):
    """The FSDP2 phases run `python -m r1lightning fit ...` on the GPU; the same arguments parse here."""
    import yaml

    from r1lightning.cli import main

    monkeypatch.chdir(SCRIPT.parents[1])
    monkeypatch.setattr(sys, "argv", ["r1lightning"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([*smoke.fsdp_cli_args(phase, tmp_path), "--print_config"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err[-3000:]
    cfg = yaml.safe_load(out)
    strategy = cfg["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.ModelParallelStrategy"
    assert (strategy["init_args"]["data_parallel_size"], strategy["init_args"]["tensor_parallel_size"]) == (1, 1)
    assert cfg["trainer"]["precision"] == "bf16-mixed" and cfg["trainer"]["accelerator"] == "gpu"
    assert cfg["model"]["init_args"]["policy"]["dtype"] == "float32"
    if phase == "fsdp_grpo":
        assert cfg["model"]["init_args"]["rollout"]["class_path"] == "r1lightning.rollout.VLLMEngineSettings"
        assert cfg["model"]["init_args"]["rewards"] == {"benchmarks.gpu_smoke:length_reward": 1.0}


def test_length_reward_is_importable_by_the_path_the_cli_uses(monkeypatch):
    from r1lightning.rewards.combine import get_reward_fn

    monkeypatch.chdir(SCRIPT.parents[1])
    monkeypatch.syspath_prepend(str(SCRIPT.parents[1]))
    fn = get_reward_fn("benchmarks.gpu_smoke:length_reward")
    assert fn(["abc", "abcdefgh"]) == [3 / 7, 1 / 7]


def test_missing_requirements_are_per_phase(smoke, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("vllm", "deepspeed")
                        else real(name, *a))
    only_zero3 = " ".join(smoke.missing_requirements(["zero3"]))
    assert "deepspeed" in only_zero3 and "vllm" not in only_zero3
    only_fsdp_sft = " ".join(smoke.missing_requirements(["fsdp_sft"]))
    assert "deepspeed" not in only_fsdp_sft and "vllm" not in only_fsdp_sft
