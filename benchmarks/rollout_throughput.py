"""Rollout throughput: HF ``generate`` vs the colocated vLLM engine, same model, same prompts, one run.

    python benchmarks/rollout_throughput.py                 # 32 prompts x 8 samples, 64 new tokens, T = 1.0
    python benchmarks/rollout_throughput.py --repeats 5 --vllm-compile

Both engines sample the GRPO rollout of configs/r1.yaml (arithmetic prompts, chat template), at one
intra-op thread (``torch.set_num_threads(1)``): on these 2-core machines HF generate collapses 10-40x
when another process takes a core, so only ratios measured in one run mean anything. Each engine is
warmed up first; then the engines alternate, ``--repeats`` times each, and the median tokens/s is
reported (alternating spreads any background load over both). Writes benchmarks/results/rollout_throughput.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import arithmetic_prompts, machine, policy_config, set_env, table, write_json  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden-size", type=int, default=None,
                    help="benchmark a random Llama of this width instead of the tiny base (size sweeps)")
    ap.add_argument("--num-layers", type=int, default=4, help="layers of the --hidden-size model")
    ap.add_argument("--model", default=None,
                    help="a local HF model folder, or 'smollm2' for the offline SmolLM2-135M-Instruct conversion")
    ap.add_argument("--vllm-compile", action="store_true",
                    help="let vLLM torch.compile the model (slower start-up); default: enforce_eager")
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
    prompts, _ = arithmetic_prompts(policy.tokenizer, args.prompts)
    sampling = SamplingSettings(n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    info = machine()

    engines = {"hf": HFRolloutEngine(policy)}
    t0 = time.perf_counter()
    engines["vllm"] = VLLMRolloutEngine.from_policy(policy, enforce_eager=not args.vllm_compile)
    startup = time.perf_counter() - t0

    for name, engine in engines.items():  # warm-up: allocator, kernels, compiled graphs
        engine.generate(prompts, SamplingSettings(n=args.n, temperature=args.temperature,
                                                  max_new_tokens=args.max_new_tokens, seed=999))
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    for r in range(args.repeats):
        for name, engine in engines.items():
            s = SamplingSettings(**{**sampling.__dict__, "seed": r})
            t = time.perf_counter()
            out = engine.generate(prompts, s)
            wall = time.perf_counter() - t
            runs[name].append({"tokens": out.num_completion_tokens, "seconds": wall,
                               "tokens_per_s": out.num_completion_tokens / wall,
                               "truncated": sum(out.truncated) / len(out.truncated)})
    engines["vllm"].close()

    med = {name: statistics.median(x["tokens_per_s"] for x in rs) for name, rs in runs.items()}
    ratio = med["vllm"] / med["hf"]
    result = {
        "model": model_name, "params": sum(p.numel() for p in policy.build().parameters()),
        "prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "repeats": args.repeats,
        "vllm_mode": "torch.compile" if args.vllm_compile else "enforce_eager", "vllm_startup_s": startup,
        "median_tokens_per_s": med, "ratio_vllm_over_hf": ratio, "target_ratio": 2.5, "runs": runs,
        "machine": info,
    }
    rows = [[name, f"{med[name]:.0f}", f"{statistics.median(x['seconds'] for x in rs):.2f}",
             f"{statistics.median(x['tokens'] for x in rs):.0f}"] for name, rs in runs.items()]
    print(f"\nRollout throughput: {model_name}, {args.prompts} prompts x n={args.n}, <= {args.max_new_tokens} new "
          f"tokens, T={args.temperature}, 1 thread, median of {args.repeats} "
          f"(load avg at start {info['loadavg_at_start']})\n")
    print(table(rows, ["engine", "tokens/s", "s / rollout", "tokens"]))
    print(f"\nvLLM / HF = {ratio:.2f}x (target >= 2.5x); vLLM start-up {startup:.1f} s ({result['vllm_mode']})")
    suffix = ("_compile" if args.vllm_compile else "") + \
        (f"_h{args.hidden_size}x{args.num_layers}" if args.hidden_size else "") + \
        ("_" + Path(model_name).name if args.model else "")
    print(f"wrote {write_json('rollout_throughput' + suffix, result)}")
    return result


if __name__ == "__main__":
    main()
