"""A run survives what a shared cluster does to it: killed and resumed, preempted by SIGTERM, resumed with
changed arguments, given a log folder another run uses. Real CLI runs (HF engine, tiny random policy)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ('{"model_name_or_path": null, "tiny": {"hidden_size": 32, "num_hidden_layers": 2, '
        '"num_attention_heads": 2, "intermediate_size": 64}}')


def command(tmp_path, max_steps, *extra, every=2):
    return [
        sys.executable, "-m", "r1lightning", "fit", "--config", str(ROOT / "configs" / "r1_zero.yaml"),
        "--model.init_args.rollout", "r1lightning.rollout.HFEngineSettings",
        "--model.init_args.policy", TINY, "--model.init_args.sampling.max_new_tokens", "8",
        "--model.init_args.sampling.n", "4", "--model.init_args.eval_sampling.max_new_tokens", "8",
        "--data.init_args.batch_size", "2", "--data.init_args.train_data", "synthetic:arithmetic?n=64&split=train",
        "--data.init_args.val_data", "synthetic:arithmetic?n=4&split=test", "--trainer.val_check_interval", "100",
        "--trainer.max_steps", str(max_steps), "--trainer.max_time", "null",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks", '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
        f'{{"dirpath": "{tmp_path / "ckpt"}", "every_n_train_steps": {every}, "save_top_k": -1}}}}]',
        "--model.init_args.export_dir", "none", *extra,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def fit(tmp_path, max_steps, *extra, expect=0):
    proc = subprocess.run(command(tmp_path, max_steps, *extra), cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} over every event file of one run folder, later files winning (what TensorBoard shows)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = defaultdict(dict)
    for path in sorted(log_dir.glob("events.out.tfevents.*"), key=os.path.getmtime):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for ev in acc.Scalars(tag):
                out[tag][ev.step] = ev.value
    return out


def train_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    # time/throughput scalars measure the machine, not the run
    skip = ("time", "per_s")
    return {t: v for t, v in scalars(log_dir).items() if t.startswith("train/") and not any(k in t for k in skip)}


def versions(tmp_path) -> list[Path]:
    return sorted((tmp_path / "logs" / "r1_zero").glob("version_*"))


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run_in_the_same_log_folder(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir(), part.mkdir()
    fit(full, 6)
    fit(part, 4)  # stops after step 4 with a checkpoint: a kill after step 5 loses step 5, resumes from 4
    (ckpt,) = [p for p in (part / "ckpt").glob("*.ckpt") if "step=4" in p.name]
    fit(part, 6, "--ckpt_path", str(ckpt))
    assert len(versions(part)) == 1, "the resumed run must continue the interrupted run's TensorBoard folder"
    want, got = train_scalars(versions(full)[0]), train_scalars(versions(part)[0])
    assert want and set(want) == set(got)
    for tag in want:
        assert sorted(got[tag]) == sorted(want[tag]), tag  # every step logged once, none missing
    # bitwise: same data, same rollouts, same updates
    assert {t: v for t, v in got.items() if v != want[t]} == {}


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_nonzero_and_resumes(tmp_path):
    cmd = command(tmp_path, 40, every=1000)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:  # wait for step >= 2 in the event file
            vs = versions(tmp_path)
            if vs and max(train_scalars(vs[0]).get("train/loss", {0: 0}), default=0) >= 2:
                break
            time.sleep(1)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    ckpt = tmp_path / "ckpt" / "preempted.ckpt"
    assert ckpt.exists(), out[-3000:]
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert 2 <= step < 40
    fit(tmp_path, step + 2, "--ckpt_path", str(ckpt))
    assert len(versions(tmp_path)) == 1
    steps = sorted(train_scalars(versions(tmp_path)[0])["train/loss"])
    assert steps[-1] == step + 1 and len(steps) == len(set(steps))
