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
    assert args.phases == ["fp32", "bf16", "grpo", "resume"] and args.child is None
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
