"""GRPO step time and peak memory: r1lightning against TRL's ``GRPOTrainer`` on identical work.

Both sides: the tiny base (``r1lightning/assets/tiny_base``, Llama, 1.1M parameters, its tokenizer and chat
template), the same prompts in the same order (``synthetic:arithmetic`` train problems as r1lightning's
PromptDataModule renders them, 16 per step), 8 samples each, <= 64 new tokens at temperature 1.0 with HF
``generate`` (TRL without vLLM), fp32, one intra-op thread, the accuracy reward, beta 0.001 with a reference
model, the GRPO loss (per-sequence mean, group-std advantages, epsilon 0.2), AdamW (betas 0.9 / 0.95, constant
lr 1e-6 so the rollouts stay alike), gradient clipping at 1.0, metrics logged every step, one optimizer step per
rollout batch, the whole rollout in one forward/backward micro-batch.

Each run is a fresh subprocess (so its peak resident memory, ``ru_maxrss``, is its own); runs alternate
r1lightning, TRL, r1lightning, TRL, ... so both see the same load on a shared machine. A step is the time from
one step's start to the next one's (everything: rollout, reward, reference and policy passes, optimizer,
logging), so a run of ``--steps`` steps measures steps - 1; the first ``--skip`` of them are warm-up and left
out of the medians. Both the wall-clock time and the CPU time of the process (``time.process_time``: all its
threads, at one intra-op thread essentially the work itself) are reported: on a machine shared with other jobs
the wall-clock time also measures their load, the CPU time much less.

Modes: ``sync`` (both as configured above), ``sync_gc`` (gradient checkpointing on both), ``async``
(r1lightning's ``HFEngineSettings(async_rollouts=True, max_staleness=1, engine_process=True)``: generation in a
process of its own, against TRL's sync run), ``async_thread`` (the same with the engine in a thread of the
training process; skipped, with a message, when the checked-out r1lightning has no such option). With an
engine process, r1lightning's peak memory is the training process's peak RSS plus the engine process's peak
private memory (the libraries and the shared-memory weights it maps are in the trainer's RSS already), and its
CPU time includes the engine process's.

TRL is a benchmark-only dependency: ``pip install --no-deps trl==1.16.0`` (its requirements -- accelerate,
datasets, transformers, ... -- are already installed with r1lightning; --no-deps keeps torch / transformers).

    python benchmarks/grpo_step.py                          # 3 modes x 3 repeats x 2 frameworks x 30 steps
    python benchmarks/grpo_step.py --modes sync --steps 8 --skip 2 --repeats 1   # a quick look (~2 min)
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
BASE = HERE / "r1lightning" / "assets" / "tiny_base"
PROMPTS_PER_STEP, GROUP, MAX_NEW, LR, BETA = 16, 8, 64, 1e-6, 0.001
DATA = "synthetic:arithmetic?n=4096&split=train&seed=0"


def _prompts(steps: int) -> tuple[list[list[int]], list[str]]:
    """The prompt ids and answers of the first ``steps`` batches of r1lightning's own train loader."""
    from r1lightning.data import PromptDataModule
    from r1lightning.policy import Policy, PolicyConfig

    tok = Policy(PolicyConfig(model_name_or_path=str(BASE))).tokenizer
    dm = PromptDataModule(train_data=DATA, batch_size=PROMPTS_PER_STEP, tokenizer=tok)
    dm.setup("fit")
    ids, answers = [], []
    for i, batch in enumerate(dm.train_dataloader()):
        if i == steps:
            break
        ids += batch["prompt_ids"]
        answers += batch["columns"]["answer"]
    return ids, answers


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class EngineMonitor:
    """Samples the engine process (asynchronous mode with ``engine_process``) every 50 ms: its private memory
    (``Private_Clean + Private_Dirty`` of /proc/PID/smaps_rollup: what the process adds to the job; the shared
    libraries and the shared-memory weights are already in the trainer's resident set) and its CPU seconds."""

    def __init__(self):
        self.peak_private_kib = 0
        self._pid = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _find(self):
        from r1lightning.rollout.hf import PROCESS_NAME
        import multiprocessing

        for p in multiprocessing.active_children():
            if p.name == PROCESS_NAME:
                return p.pid
        return None

    def cpu_s(self) -> float:
        if self._pid is None:
            return 0.0
        try:
            with open(f"/proc/{self._pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except OSError:
            return 0.0

    def _run(self):
        while not self._stop.wait(0.05):
            if self._pid is None:
                self._pid = self._find()
                continue
            try:
                with open(f"/proc/{self._pid}/smaps_rollup") as f:
                    private = sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:")))
                self.peak_private_kib = max(self.peak_private_kib, private)
            except OSError:
                pass

    def stop(self):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- the two sides (each in its own process)
def run_r1(steps: int, gc: bool, async_rollouts: bool, engine_process: bool = False) -> dict:
    import lightning.pytorch as pl

    from r1lightning.data import PromptDataModule
    from r1lightning.modules import GRPOModule
    from r1lightning.policy import PolicyConfig
    from r1lightning.rollout import SamplingSettings
    from r1lightning.rollout.hf import HFEngineSettings

    if engine_process:
        rollout = HFEngineSettings(async_rollouts=True, max_staleness=1, engine_process=True)
    else:
        rollout = HFEngineSettings(async_rollouts=True, max_staleness=1) if async_rollouts else HFEngineSettings()
    module = GRPOModule(
        policy=PolicyConfig(model_name_or_path=str(BASE), gradient_checkpointing=gc), rewards={"accuracy": 1.0},
        sampling=SamplingSettings(n=GROUP, max_new_tokens=MAX_NEW, temperature=1.0, seed=0), rollout=rollout,
        beta=BETA, epsilon_low=0.2, loss_aggregation="grpo", lr=LR, betas=(0.9, 0.95), lr_schedule="constant",
        max_grad_norm=1.0, export_dir="none",
    )
    dm = PromptDataModule(train_data=DATA, batch_size=PROMPTS_PER_STEP, tokenizer=module.tokenizer)
    starts, cpu, lengths, padding = [], [], [], []
    monitor = EngineMonitor() if engine_process else None

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            starts.append(time.perf_counter())
            cpu.append(time.process_time() + (monitor.cpu_s() if monitor else 0.0))
            if len(starts) == 1:
                self.rss0 = _rss_kib()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if not outputs or "trajectory" not in outputs:
                return  # asynchronous mode: the first step only fills the pipeline (in the warm-up steps)
            traj = outputs["trajectory"]
            lengths.append(statistics.mean(len(c) for c in traj.rollout.completion_ids))
            real = pad = packed = 0
            for mb in outputs["minibatches"]:
                for m in mb.micro:
                    real += int(m.attn.sum())
                    pad += m.ids.numel()
                    packed += (m.packed.input_ids if getattr(m, "packed", None) is not None else m.ids).numel()
            padding.append((1 - real / pad, 1 - real / packed))

    clock = Clock()
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[clock])
    trainer.fit(module, dm)
    extra = {}
    if monitor is not None:
        monitor.stop()
        extra["engine_peak_private_kib"] = monitor.peak_private_kib
    return {**extra, "step_s": [b - a for a, b in zip(starts, starts[1:])], "step_cpu_s": [b - a for a, b in zip(cpu, cpu[1:])],
            "completion_length": lengths,
            "padding_fraction": [p for p, _ in padding], "packed_padding_fraction": [q for _, q in padding],
            "rss_at_start_kib": clock.rss0}


def run_trl(steps: int, gc: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1lightning.rewards import accuracy_reward

    tok = AutoTokenizer.from_pretrained(str(BASE))
    ids, answers = _prompts(steps)
    texts = [tok.decode(p) for p in ids]
    if [tok(t, add_special_tokens=False).input_ids for t in texts] != ids:
        raise RuntimeError("the prompt texts do not re-tokenize to r1lightning's prompt ids")
    data = Dataset.from_dict({"prompt": texts, "answer": answers})

    def accuracy(completions, answer, **kwargs):
        return accuracy_reward(completions, answer=answer)

    starts, cpu, lengths = [], [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            starts.append(time.perf_counter())
            cpu.append(time.process_time())
            if len(starts) == 1:
                self.rss0 = _rss_kib()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    clock = Clock()
    out = tempfile.mkdtemp(prefix="trl_grpo_")
    args = GRPOConfig(
        output_dir=out, max_steps=steps, per_device_train_batch_size=PROMPTS_PER_STEP * GROUP,
        gradient_accumulation_steps=1, num_generations=GROUP, max_completion_length=MAX_NEW, temperature=1.0,
        top_p=1.0, top_k=0, beta=BETA, epsilon=0.2, loss_type="grpo", scale_rewards="group", num_iterations=1,
        learning_rate=LR, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, optim="adamw_torch",
        lr_scheduler_type="constant", max_grad_norm=1.0, gradient_checkpointing=gc,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None, use_cpu=True, bf16=False, fp16=False,
        logging_steps=1, report_to="none", save_strategy="no", shuffle_dataset=False, seed=0, disable_tqdm=True,
        dataloader_pin_memory=False, model_init_kwargs={"dtype": torch.float32},
    )
    trainer = GRPOTrainer(model=str(BASE), reward_funcs=[accuracy], args=args, train_dataset=data,
                          processing_class=tok, callbacks=[clock])
    trainer.train()
    return {"step_s": [b - a for a, b in zip(starts, starts[1:])], "step_cpu_s": [b - a for a, b in zip(cpu, cpu[1:])],
            "completion_length": lengths,
            "rss_at_start_kib": clock.rss0}


def child(args) -> None:
    import torch

    torch.set_num_threads(1)
    if args.child == "r1":
        res = run_r1(args.steps, args.mode == "sync_gc", args.mode in ("async", "async_thread"),
                     engine_process=args.mode == "async")
    else:
        res = run_trl(args.steps, args.mode == "sync_gc")
    res["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if "engine_peak_private_kib" in res:  # the engine process's own memory (see EngineMonitor)
        res["peak_rss_kib"] += res["engine_peak_private_kib"]
    Path(args.result).write_text(json.dumps(res))


# ---------------------------------------------------------------- the comparison
def async_available(mode: str) -> bool:
    from r1lightning.rollout.hf import HFEngineSettings

    params = inspect.signature(HFEngineSettings.__init__).parameters
    needs = ["async_rollouts", "max_staleness"] + (["engine_process"] if mode == "async" else [])
    return all(p in params for p in needs)


def launch(side: str, mode: str, steps: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = f.name
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(HERE), "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--mode", mode, "--steps", str(steps),
           "--result", result]
    proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} / {mode} failed:\n{proc.stderr[-4000:]}")
    return json.loads(Path(result).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = ["sync", "sync_gc", "async", "async_thread"]
    ap.add_argument("--modes", nargs="+", default=modes, choices=modes)
    ap.add_argument("--steps", type=int, default=30, help="steps per run")
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps of each run left out of the medians")
    ap.add_argument("--repeats", type=int, default=3, help="runs per framework and mode (alternating)")
    ap.add_argument("--out", type=Path, default=HERE / "benchmarks" / "results" / "grpo_step.json")
    ap.add_argument("--child", choices=["r1", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="sync", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.steps <= args.skip + 1:
        ap.error("--steps must be larger than --skip + 1")
    import torch
    import transformers
    import trl

    summary = {"settings": {"steps": args.steps, "skip": args.skip, "repeats": args.repeats,
                            "prompts_per_step": PROMPTS_PER_STEP, "group": GROUP, "max_new_tokens": MAX_NEW,
                            "torch": torch.__version__, "transformers": transformers.__version__,
                            "trl": trl.__version__, "load_average_start": os.getloadavg()}, "modes": {}}
    for mode in args.modes:
        if mode.startswith("async") and not async_available(mode):
            print(f"{mode}: unavailable (this r1lightning's HFEngineSettings has no such option); skipped", flush=True)
            summary["modes"][mode] = {"unavailable": True}
            continue
        runs = {"r1": [], "trl": []}
        for r in range(args.repeats):
            for side in ("r1", "trl"):
                res = launch(side, mode, args.steps)
                runs[side].append(res)
                print(f"{mode} repeat {r} {side}: median step {statistics.median(res['step_s'][args.skip:]):.3f} s "
                      f"(CPU {statistics.median(res['step_cpu_s'][args.skip:]):.3f} s), "
                      f"peak RSS {res['peak_rss_kib'] / 1024:.0f} MiB, load {os.getloadavg()[0]:.1f}", flush=True)
        out = {}
        for side, rs in runs.items():
            steps = [s for res in rs for s in res["step_s"][args.skip:]]
            cpu_steps = [s for res in rs for s in res["step_cpu_s"][args.skip:]]
            out[side] = {"median_step_s": statistics.median(steps), "median_step_cpu_s": statistics.median(cpu_steps),
                         "steps": len(steps),
                         "peak_rss_mib": statistics.median(res["peak_rss_kib"] for res in rs) / 1024,
                         "rss_growth_mib": statistics.median(res["peak_rss_kib"] - res["rss_at_start_kib"]
                                                             for res in rs) / 1024,
                         "completion_length": statistics.mean(x for res in rs for x in res["completion_length"]),
                         "runs": rs}
            if side == "r1":
                out[side]["padding_fraction"] = statistics.mean(x for res in rs for x in res["padding_fraction"])
                out[side]["packed_padding_fraction"] = statistics.mean(
                    x for res in rs for x in res["packed_padding_fraction"])
        out["step_ratio_r1_over_trl"] = out["r1"]["median_step_s"] / out["trl"]["median_step_s"]
        out["step_cpu_ratio_r1_over_trl"] = out["r1"]["median_step_cpu_s"] / out["trl"]["median_step_cpu_s"]
        med = lambda res, key="step_s": statistics.median(res[key][args.skip:])  # noqa: E731
        # per repeat (r1 run i against the TRL run right after it, under about the same load): the pooled medians
        # above mix steps of runs under different loads, these pairs do not
        out["step_ratio_per_repeat"] = [med(a) / med(b) for a, b in zip(runs["r1"], runs["trl"])]
        out["step_cpu_ratio_per_repeat"] = [med(a, "step_cpu_s") / med(b, "step_cpu_s")
                                            for a, b in zip(runs["r1"], runs["trl"])]
        out["step_ratio_median_of_repeats"] = statistics.median(out["step_ratio_per_repeat"])
        out["peak_rss_ratio_r1_over_trl"] = out["r1"]["peak_rss_mib"] / out["trl"]["peak_rss_mib"]
        out["rss_growth_ratio_r1_over_trl"] = out["r1"]["rss_growth_mib"] / out["trl"]["rss_growth_mib"]
        summary["modes"][mode] = out
        print(f"{mode}: r1lightning {out['r1']['median_step_s']:.3f} s / TRL {out['trl']['median_step_s']:.3f} s "
              f"per step = {out['step_ratio_r1_over_trl']:.2f}x (CPU time {out['step_cpu_ratio_r1_over_trl']:.2f}x; "
              f"paired runs {', '.join(f'{x:.2f}' for x in out['step_ratio_per_repeat'])}); "
              f"peak RSS {out['r1']['peak_rss_mib']:.0f} / "
              f"{out['trl']['peak_rss_mib']:.0f} MiB = {out['peak_rss_ratio_r1_over_trl']:.2f}x (growth during "
              f"training {out['rss_growth_ratio_r1_over_trl']:.2f}x); padding computed by r1lightning "
              f"{out['r1']['packed_padding_fraction']:.1%} (padded layout: {out['r1']['padding_fraction']:.1%})",
              flush=True)
    summary["settings"]["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
