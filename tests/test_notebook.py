"""The analysis notebook runs headless against a short real GRPO run and saves its figures."""

import os
from pathlib import Path

import pytest

from r1lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_notebook_executes_on_a_real_run(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    logs = tmp_path / "logs"
    main([
        "fit", "--config", str(ROOT / "configs" / "r1.yaml"),
        "--model.init_args.policy", '{"model_name_or_path": null, "tiny": {"hidden_size": 32, "num_hidden_layers": 2, '
                                    '"num_attention_heads": 2, "intermediate_size": 64}}',
        "--model.init_args.sampling.max_new_tokens", "12", "--model.init_args.eval_sampling.max_new_tokens", "12",
        "--data.init_args.batch_size", "2", "--data.init_args.train_data", "synthetic:arithmetic?n=32&split=train",
        "--data.init_args.val_data", "synthetic:arithmetic?n=4&split=test",
        "--trainer.max_steps", "3", "--trainer.logger.init_args.save_dir", str(logs),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        "--model.init_args.export_dir", "none",
    ])
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
