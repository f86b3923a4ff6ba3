"""Rollout throughput: HF ``generate`` vs the colocated vLLM engine, same model, same prompts, one run.

    python benchmarks/rollout_throughput.py                 # 32 prompts x 8 samples, 64 new tokens, T = 1.0
    python benchmarks/rollout_throughput.py --repeats 5 --vllm-compile
    # the real SmolLM2-135M-Instruct on GSM8K, reasoning at R1-like lengths (a sweep of generation budgets)
    python benchmarks/rollout_throughput.py --model smollm2 --data gsm8k --prompts 4 --n 8 \
        --max-new-tokens 64 128 256 512 --repeats 1

Both engines sample the GRPO rollout of configs/r1.yaml (arithmetic prompts, chat template), at one
intra-op thread (``torch.set_num_threads(1)``): on these 2-core machines HF generate collapses 10-40x
when another process takes a core, so only ratios measured in one run mean anything. Each engine is
warmed up first; then the engines alternate, ``--repeats`` times each, and the median tokens/s is
reported (alternating spreads any background load over both). With several ``--max-new-tokens`` the
whole comparison is repeated per budget (the ratio grows with generation length: HF's padded, growing
KV cache costs more per token the longer the rollout, vLLM's paged cache does not).
Writes benchmarks/results/rollout_throughput[_suffix].json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    GSM8K_SYSTEM, arithmetic_prompts, gsm8k_prompts, machine, policy_config, set_env, table, write_json)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, nargs="+", default=[64],
                    help="generation budget(s); several = a sweep, each measured on both engines")
    ap.add_argument("--data", choices=["arithmetic", "gsm8k"], default="arithmetic",
                    help="arithmetic: the prompts of configs/r1.yaml; gsm8k: GSM8K test problems, step-by-step")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden-size", type=int, default=None,
                    help="benchmark a random Llama of this width instead of the tiny base (size sweeps)")
    ap.add_argument("--num-layers", type=int, default=4, help="layers of the --hidden-size model")
    ap.add_argument("--model", default=None,
                    help="a local HF model folder, or 'smollm2' for the offline SmolLM2-135M-Instruct conversion")
    ap.add_argument("--vllm-compile", action="store_true",
                    help="let vLLM torch.compile the model (slower start-up); default: enforce_eager")
    ap.add_argument("--tag", default="", help="appended to the results file name (keeps earlier results)")
    args = ap.parse_args(argv)

    set_env()
    import torch

    torch.set_num_threads(1)
    from r1lightning.policy import Policy
    from r1lightning.rollout import HFRolloutEngine, SamplingSettings
    from r1lightning.rollout.vllm import VLLMRolloutEngine

    cfg, model_name = policy_config(args.hidden_size, args.num_layers, args.model)
    policy = Policy(cfg)
    policy.build().eval()
    if args.data == "gsm8k":
        prompts = gsm8k_prompts(policy.tokenizer, args.prompts)
    else:
        prompts, _ = arithmetic_prompts(policy.tokenizer, args.prompts)
    info = machine()

    engines = {"hf": HFRolloutEngine(policy)}
    t0 = time.perf_counter()
    engines["vllm"] = VLLMRolloutEngine.from_policy(policy, enforce_eager=not args.vllm_compile)
    startup = time.perf_counter() - t0

    sweep = []
    for max_new in args.max_new_tokens:
        sampling = SamplingSettings(n=args.n, temperature=args.temperature, max_new_tokens=max_new)
        # warm-up at full size: kernels, compiled graphs, and the allocator -- HF's first rollout at a new batch
        # size / length runs ~1.5x slower (measured: the same seed-0 rollout of 32 x 256 tokens took 242 s
        # cold and 155 s warm), which a smaller warm-up does not remove
        for name, engine in engines.items():
            engine.generate(prompts, dataclasses.replace(sampling, seed=999))
        runs: dict[str, list[dict]] = {name: [] for name in engines}
        for r in range(args.repeats):
            for name, engine in engines.items():
                s = dataclasses.replace(sampling, seed=r)
                t = time.perf_counter()
                out = engine.generate(prompts, s)
                wall = time.perf_counter() - t
                runs[name].append({"tokens": out.num_completion_tokens, "seconds": wall,
                                   "tokens_per_s": out.num_completion_tokens / wall,
                                   "truncated": sum(out.truncated) / len(out.truncated),
                                   "median_length": statistics.median(len(c) for c in out.completion_ids)})
        med = {name: statistics.median(x["tokens_per_s"] for x in rs) for name, rs in runs.items()}
        sweep.append({"max_new_tokens": max_new, "median_tokens_per_s": med,
                      "ratio_vllm_over_hf": med["vllm"] / med["hf"], "runs": runs})
        print(f"  <= {max_new} tokens: HF {med['hf']:.0f} tok/s, vLLM {med['vllm']:.0f} tok/s, "
              f"{med['vllm'] / med['hf']:.2f}x", flush=True)
    engines["vllm"].close()

    result = {
        "model": model_name, "params": sum(p.numel() for p in policy.build().parameters()),
        "data": args.data, "system_prompt": GSM8K_SYSTEM if args.data == "gsm8k" else None,
        "prompts": args.prompts, "n": args.n, "temperature": args.temperature, "repeats": args.repeats,
        "vllm_mode": "torch.compile" if args.vllm_compile else "enforce_eager", "vllm_startup_s": startup,
        "target_ratio": 2.5, "sweep": sweep, "machine": info,
    }
    rows = []
    for point in sweep:
        for name, rs in point["runs"].items():
            rows.append([point["max_new_tokens"], name, f"{point['median_tokens_per_s'][name]:.0f}",
                         f"{statistics.median(x['seconds'] for x in rs):.2f}",
                         f"{statistics.median(x['tokens'] for x in rs):.0f}",
                         f"{statistics.median(x['truncated'] for x in rs):.2f}",
                         f"{point['ratio_vllm_over_hf']:.2f}x" if name == "vllm" else ""])
    print(f"\nRollout throughput: {model_name}, {args.data}, {args.prompts} prompts x n={args.n}, T={args.temperature}, "
          f"1 thread, median of {args.repeats} (load avg at start {info['loadavg_at_start']})\n")
    print(table(rows, ["max new tokens", "engine", "tokens/s", "s / rollout", "tokens", "truncated", "vLLM / HF"]))
    print(f"\ntarget vLLM / HF >= 2.5x; vLLM start-up {startup:.1f} s ({result['vllm_mode']})")
    suffix = ("_compile" if args.vllm_compile else "") + \
        (f"_h{args.hidden_size}x{args.num_layers}" if args.hidden_size else "") + \
        ("_" + Path(model_name).name if args.model else "") + \
        (f"_{args.data}" if args.data != "arithmetic" else "") + (f"_{args.tag}" if args.tag else "")
    print(f"wrote {write_json('rollout_throughput' + suffix, result)}")
    return result


if __name__ == "__main__":
    main()
