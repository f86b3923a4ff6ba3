"""The answer checker on real data, with timings: MATH-500 and GSM8K reference solutions scored
against their golds and against other problems' golds, and the cost of cons@k answer grouping.

    python benchmarks/answer_checking.py [--workers 2] [--questions 100]

Prints a markdown table and writes results/answer_checking.json. No torch; the math-verify pool
has ``--workers`` processes (started before the clock runs). The same checks, as assertions, are
tests/rewards/test_rewards_real_data.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def r1(answer: str) -> str:
    return f"<think>Let me work it out.</think><answer>{answer}</answer>"


def main() -> None:
    from r1lightning.data.benchmarks import _olmo_docs, load_gsm8k, load_math500
    from r1lightning.rewards import accuracy
    from r1lightning.rewards.accuracy import accuracy_reward, math_verify_reward
    from r1lightning.rewards.voting import _vote_key, group_equivalent_batch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--questions", type=int, default=100, help="cons@64 grouping: questions")
    args = parser.parse_args()

    math500, gsm8k = load_math500(), load_gsm8k()
    accuracy.warmup_pool(workers=args.workers)
    opts = {"workers": args.workers, "timeout_s": 20, "batch_timeout_s": None}
    rows: list[dict] = []

    def record(name: str, fn, completions, golds, want: float, **kw) -> None:
        start = time.perf_counter()
        scores = fn(completions, answer=golds, **opts, **kw)
        seconds = time.perf_counter() - start
        hits = sum(s == want for s in scores)
        rows.append({"check": name, "as expected": hits, "of": len(scores), "seconds": seconds})
        print(f"| {name} | {hits}/{len(scores)} | {seconds:.1f} s |", flush=True)

    def shifted(golds, shifts):
        n = len(golds)
        return [(i, golds[(i + s) % n]) for s in shifts for i in range(n)
                if _vote_key(golds[(i + s) % n]) != _vote_key(golds[i])]

    print("| check | as expected | time |\n|---|---|---|")
    golds = [row["answer"] for row in math500]
    for fn in (accuracy_reward, math_verify_reward):
        record(f"MATH-500 solutions, wrapped, {fn.__name__} = 1", fn,
               [r1(row["solution"]) for row in math500], golds, 1.0)
        record(f"MATH-500 solutions, plain text, {fn.__name__} = 1", fn,
               [row["solution"] for row in math500], golds, 1.0, require_answer_tag=False)
    pairs = shifted(golds, (1, 7, 250))
    for fn in (accuracy_reward, math_verify_reward):
        record(f"MATH-500 solution vs another problem's gold, {fn.__name__} = 0", fn,
               [r1(math500[i]["solution"]) for i, _ in pairs], [g for _, g in pairs], 0.0)
    rewrites = [d["answer"] for d in _olmo_docs("minerva_math_500", "gold_bpb_0shot", "MATH-500")]
    record("MATH-500 golds as the OLMo file rewrites them (17 broken rewrites included)",
           accuracy_reward, [r1(rf"\boxed{{{w}}}") for w in rewrites], golds, 1.0)

    g_golds = [row["answer"] for row in gsm8k]
    boxed = [re.sub(r"####\s*(.*)$", lambda m: rf"The answer is $\boxed{{{m[1]}}}$.", r["solution"])
             for r in gsm8k]
    record("GSM8K rationales (#### n), wrapped, accuracy_reward = 1", accuracy_reward,
           [r1(row["solution"]) for row in gsm8k], g_golds, 1.0)
    record("GSM8K rationales, #### line boxed, wrapped, accuracy_reward = 1", accuracy_reward,
           [r1(b) for b in boxed], g_golds, 1.0)
    g_pairs = shifted(g_golds, (1, 100))
    record("GSM8K rationale vs another problem's number, accuracy_reward = 0", accuracy_reward,
           [r1(gsm8k[i]["solution"]) for i, _ in g_pairs], [g for _, g in g_pairs], 0.0)

    # cons@64: per question, 64 votes drawn from the gold, its OLMo rewrite and 6 other golds.
    rng = random.Random(0)
    picks = rng.sample(range(len(math500)), args.questions)
    batch = []
    for q in picks:
        pool = [golds[q], rewrites[q]] + [golds[rng.randrange(len(golds))] for _ in range(6)]
        batch.append([rng.choice(pool) for _ in range(64)])
    start = time.perf_counter()
    group_equivalent_batch(batch, workers=args.workers, batch_timeout_s=None)
    seconds = time.perf_counter() - start
    rows.append({"check": f"cons@64 grouping, {args.questions} MATH-500 questions",
                 "seconds": seconds})
    print(f"| cons@64 grouping of {args.questions} MATH-500 questions (8 spellings each) | - | "
          f"{seconds:.1f} s ({seconds / args.questions * 1000:.0f} ms per question) |")
    numeric = [[str(rng.randint(1, 30)) for _ in range(64)] for _ in range(500)]
    start = time.perf_counter()
    group_equivalent_batch(numeric, workers=args.workers)
    seconds = time.perf_counter() - start
    rows.append({"check": "cons@64 grouping, 500 all-numeric questions", "seconds": seconds})
    print(f"| cons@64 grouping of 500 all-numeric questions (no math-verify) | - | "
          f"{seconds:.2f} s |")
    accuracy.shutdown_pool()

    RESULTS.mkdir(exist_ok=True)
    out = {"workers": args.workers, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
           "rows": rows}
    (RESULTS / "answer_checking.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"load average {os.getloadavg()[0]:.1f}; wrote {RESULTS / 'answer_checking.json'}")


if __name__ == "__main__":
    main()
