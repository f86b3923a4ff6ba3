"""Cost of keeping the vLLM engine in sync: ``update_weights`` (+ probe verification) vs one GRPO step.

    python benchmarks/refresh_cost.py                  # configs/r1.yaml's step: 16 prompts x 8, 64 tokens
    python benchmarks/refresh_cost.py --steps 20

Runs a real ``Trainer.fit`` of GRPOModule with ``rollout=VLLMEngineSettings(...)`` (the module pushes
before each rollout) and the ``VLLMRolloutRefresh`` callback (verify='probe', every push), at one
intra-op thread, and times each training batch from ``on_train_batch_start`` to ``on_train_batch_end``
(the push and its verification included). The
first ``--warmup`` batches (engine start-up, first compiles) are dropped. Then it measures the probe
tolerance: engine vs trainer log-probs after a push, in float32 and bfloat16.
Writes benchmarks/results/refresh_cost.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, policy_config, set_env, table, write_json  # noqa: E402


def grpo_timing(args) -> dict:
    import lightning.pytorch as pl

    from r1lightning.callbacks import VLLMRolloutRefresh
    from r1lightning.data import PromptDataModule
    from r1lightning.modules import GRPOModule
    from r1lightning.rollout import SamplingSettings, VLLMEngineSettings

    cfg, model_name = policy_config()

    class StepTimer(pl.Callback):
        def __init__(self):
            self.rows, self._t0 = [], 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            m = trainer.callback_metrics
            self.rows.append({
                "step_s": time.perf_counter() - self._t0,
                "refresh_s": float(refresh.last_stats.get("vllm/refresh_s", 0.0)),
                "verify_s": float(refresh.last_stats.get("vllm/verify_s", 0.0)),
                "probe_max_abs_diff": float(refresh.last_stats.get("vllm/probe_max_abs_diff", float("nan"))),
                "probe_engine_delta": float(refresh.last_stats.get("vllm/probe_engine_delta", float("nan"))),
                "rollout_s": float(m["train/time/rollout"]), "train_s": float(m["train/time/train"]),
                "bytes": float(refresh.last_stats.get("vllm/refresh_bytes", 0.0)),
            })
            refresh.last_stats = {}

    module = GRPOModule(
        policy=cfg, rewards={"accuracy": 1.0, "format": 1.0},
        sampling=SamplingSettings(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0),
        rollout=VLLMEngineSettings(enforce_eager=not args.vllm_compile),
        beta=0.001, lr=1e-4, lr_schedule="constant", eval_sampling=None, export_dir="none",
    )
    dm = PromptDataModule(train_data="synthetic:arithmetic?n=5000&split=train&seed=0", template="chat",
                          batch_size=args.prompts)
    timer, refresh = StepTimer(), VLLMRolloutRefresh(verify="probe")
    trainer = pl.Trainer(accelerator="cpu", max_steps=args.warmup + args.steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer, refresh])
    trainer.fit(module, dm)
    module.engine.close()
    rows = [r for r in timer.rows[args.warmup:] if r["refresh_s"] > 0]
    return {"model": model_name, "rows": rows}


def tolerance(dtype: str) -> dict:
    """Push a perturbed policy and compare engine vs trainer probe log-probs (and the pre-push gap)."""
    import torch

    from r1lightning.callbacks import VLLMRolloutRefresh
    from r1lightning.policy import Policy
    from r1lightning.rollout.vllm import VLLMRolloutEngine

    cfg, _ = policy_config()
    cfg.dtype = dtype
    policy = Policy(cfg)
    policy.build().eval()
    engine = VLLMRolloutEngine.from_policy(policy, enforce_eager=True)
    ids = VLLMRolloutRefresh().probe_ids(policy.tokenizer)
    out = {}
    try:
        def gap():
            ours = VLLMRolloutRefresh.policy_probe(policy, ids)
            return float((torch.tensor(engine.probe_logprobs(ids)) - ours).abs().max())

        out["at_start"] = gap()
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # about one optimizer step at lr 1e-4 on every weight
            for p in policy.build().parameters():
                p.add_((1e-4 * torch.randn(p.shape, generator=gen)).to(p.dtype))
        out["stale_after_step"] = gap()
        engine.update_weights(policy)
        out["after_push"] = gap()
    finally:
        engine.close()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--vllm-compile", action="store_true")
    args = ap.parse_args(argv)

    set_env()
    import torch

    torch.set_num_threads(1)
    info = machine()
    timing = grpo_timing(args)
    rows = timing["rows"]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    step_wo = [r["step_s"] - r["refresh_s"] - r["verify_s"] for r in rows]
    pct_refresh = statistics.median(r["refresh_s"] / s for r, s in zip(rows, step_wo)) * 100
    pct_total = statistics.median((r["refresh_s"] + r["verify_s"]) / s for r, s in zip(rows, step_wo)) * 100
    tol = {dtype: tolerance(dtype) for dtype in ("float32", "bfloat16")}

    result = {
        "model": timing["model"], "prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens,
        "steps_measured": len(rows), "median": med, "refresh_pct_of_step": pct_refresh,
        "refresh_and_verify_pct_of_step": pct_total, "target_pct": 5.0,
        "max_probe_abs_diff_during_fit": max(r["probe_max_abs_diff"] for r in rows),
        "tolerance": tol, "rows": rows, "machine": info,
    }
    print(f"\nWeight refresh vs GRPO step: {timing['model']}, {args.prompts} prompts x {args.n}, "
          f"<= {args.max_new_tokens} tokens, median of {len(rows)} steps "
          f"(load avg at start {info['loadavg_at_start']})\n")
    print(table([[f"{med['step_s']:.3f}", f"{med['rollout_s']:.3f}", f"{med['train_s']:.3f}",
                  f"{med['refresh_s'] * 1e3:.1f}", f"{med['verify_s'] * 1e3:.1f}", f"{med['bytes'] / 1e6:.1f}",
                  f"{pct_refresh:.2f}%", f"{pct_total:.2f}%"]],
                ["step s", "rollout s", "train s", "refresh ms", "verify ms", "MB pushed", "refresh / step",
                 "refresh+verify / step"]))
    print("\nProbe |engine - trainer| log-prob, max over the probe tokens (nats):\n")
    print(table([[d, f"{t['at_start']:.2e}", f"{t['stale_after_step']:.2e}", f"{t['after_push']:.2e}"]
                 for d, t in tol.items()], ["dtype", "at start", "stale (policy stepped)", "after push"]))
    print(f"\nduring the fit (float32): engine vs trainer max {result['max_probe_abs_diff_during_fit']:.2e}; one GRPO "
          f"step moved the engine's probe by {med['probe_engine_delta']:.2e} (median). Target: refresh <= 5% of a step")
    print(f"wrote {write_json('refresh_cost', result)}")
    return result


if __name__ == "__main__":
    main()
