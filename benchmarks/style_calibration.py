"""Calibrate a styles base before any RL run: which styles it writes, how often each is right, and how its checks behave.

The R1-behaviours demo (configs/r1_behaviours.yaml) can only show reflection growing if the base's checked
solutions are *more often right* than its plain worked ones: GRPO has nothing else to go on. This samples the
base on the RL configs' held-out prompts (``synthetic:arithmetic_styles?split=test&seed=1``, encoded by their
PromptDataModule) and reports, per style (r1lightning.data.styles.classify_style), the share of samples,
accuracy and length, and for every checked step it can parse: whether the direct sum and the check are right,
whether they disagree, and whether "wait" is said exactly where they do. Both check designs are parsed
(recompute: ``a+b=c, let me check: a+b=c2[, wait, a+b=c3]``; column: ``a+b=c, let me check: 8+7=15,
6+1+1=8[, 1+0=1], v[, wait, a+b=v]``).
With ``--drills`` it also samples ``Add a+b column by column.`` prompts (bases trained with ``p_column``).

    PYTHONPATH=$PWD python benchmarks/style_calibration.py r1lightning/assets/tiny_base_styles --temperature 1.0
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys

import torch

DIRECT = r"(\d+)\+(\d+)=(\d+)"
# a recomputation repeats two-digit operands; a column check starts with one-digit ones
RECOMPUTE = re.compile(DIRECT + r", let me check: (\d{2,})\+(\d{2,})=(\d+)(, wait, (\d+)\+(\d+)=(\d+))?")
COLUMN = re.compile(DIRECT + r", let me check: (\d)\+(\d)=(\d+), (\d+)\+(\d+)\+(\d)=(\d+), (?:(\d)\+(\d)=(\d+), )?(\d+)"
                    r"(, wait, (\d+)\+(\d+)=(\d+))?")
BOXED = re.compile(r"\\boxed\{([^}]*)\}")
# search_styles: every tried candidate is added, then rejected ("wait, not T") or confirmed ("check: T=T")
TRIAL = re.compile(r"(\d+)\+(\d+)=(\d+), (?:(wait), not (\d+)|check: (\d+)=(\d+))")


def check_stats(texts: list[str]) -> dict:
    """Per parsed check: the direct sum right, the check right, the two disagree, "wait" said exactly where they do."""
    rows = []
    for text in texts:
        for m in COLUMN.finditer(text):
            a, b, c, value = int(m[1]), int(m[2]), int(m[3]), int(m[14])
            rows.append(("column", a + b == c, a + b == value, c != value, bool(m[15])))
        for m in RECOMPUTE.finditer(text):
            a, b, c, c2 = int(m[1]), int(m[2]), int(m[3]), int(m[6])
            rows.append(("recompute", a + b == c, a + b == c2, c != c2, bool(m[7])))
    if not rows:
        return {"checks": 0}
    mean = lambda i: round(statistics.mean(r[i] for r in rows), 3)  # noqa: E731
    return {"checks": len(rows), "designs": sorted({r[0] for r in rows}), "direct_right": mean(1), "check_right": mean(2),
            "disagree": mean(3), "wait": mean(4), "wait_matches_disagreement": round(statistics.mean(r[3] == r[4] for r in rows), 3)}


def trial_stats(texts: list[str], targets: list[int]) -> dict:
    """search_styles: per tried candidate, the sum right, and the verdict right (rejected exactly where the
    model's own sum differs from the target); per checked solution, tries and stopping at the answer."""
    rows = []
    for text, target in zip(texts, targets):
        for m in TRIAL.finditer(text):
            a, b, c = int(m[1]), int(m[2]), int(m[3])
            rows.append((a + b == c, bool(m[4]) == (c != target), bool(m[4]) == (a + b != target)))
    if not rows:
        return {"trials": 0}
    return {"trials": len(rows), "sum_right": round(statistics.mean(r[0] for r in rows), 3),
            "verdict_matches_own_sum": round(statistics.mean(r[1] for r in rows), 3),
            "verdict_right": round(statistics.mean(r[2] for r in rows), 3)}


def style_stats(texts: list[str], answers: list[str], lengths: list[int]) -> dict:
    from r1lightning.data.styles import classify_style

    by: dict[str, list[tuple[bool, int]]] = {}
    for text, gold, n in zip(texts, answers, lengths):
        m = BOXED.search(text)
        by.setdefault(classify_style(text), []).append((bool(m) and m.group(1).strip() == gold, n))
    total = len(texts)
    out = {"pass@1": round(sum(r for v in by.values() for r, _ in v) / total, 3),
           "length": round(sum(n for v in by.values() for _, n in v) / total, 1)}
    for style, v in sorted(by.items()):
        out[style] = {"share": round(len(v) / total, 3), "right": round(statistics.mean(r for r, _ in v), 3),
                      "length": round(statistics.mean(n for _, n in v), 1)}
    return out


def prompt_data(source: str, tok):
    """The RL configs' PromptDataModule (chat template) over ``source``, set up: its ``val_set`` holds the
    token ids and columns of the held-out prompts exactly as the RL run samples them, and its
    ``encode_prompt`` encodes any other prompt (the drills) the same way."""
    from r1lightning.data import PromptDataModule

    dm = PromptDataModule(val_data=source, template="chat", tokenizer=tok)
    dm.setup("validate")
    return dm


def sample(model, tok, ids: list[list[int]], n: int, temperature: float, max_new_tokens: int, seed: int):
    from r1lightning.rollout.base import SamplingSettings
    from r1lightning.rollout.hf import hf_generate

    settings = SamplingSettings(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    return hf_generate(model, tok, ids, settings, max_batch_size=256)


def calibrate(model_path: str, prompts: int = 300, samples: int = 2, temperature: float = 1.0, max_new_tokens: int = 160,
              seed: int = 0, drills: int = 0, task: str = "arithmetic_styles") -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1lightning.rewards import extract_think
    from r1lightning.rewards.language import target_language_fraction

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    dm = prompt_data(f"synthetic:{task}?n={prompts}&split=test&seed=1", tok)
    rows = [item["columns"] for item in dm.val_set.items]
    out = sample(model, tok, [item["prompt_ids"] for item in dm.val_set.items], samples, temperature, max_new_tokens,
                 seed)
    answers = [r["answer"] for r in rows for _ in range(samples)]
    result = {"model": model_path, "task": task, "prompts": prompts, "samples": samples, "temperature": temperature,
              **style_stats(out.texts, answers, [len(c) for c in out.completion_ids])}
    if task == "search_styles":
        targets = [int(r["split_key"].rsplit("=", 1)[1].rstrip(".")) for r in rows for _ in range(samples)]
        result["trial"] = trial_stats(out.texts, targets)
    else:
        result["check"] = check_stats(out.texts)
    zh = [r["zh_prompt"] for r in rows for _ in range(samples)]
    mixed = [target_language_fraction(extract_think(t), "en") < 0.9 for t in out.texts]
    result["mixing_rate"] = round(statistics.mean(mixed), 3)
    result["mixing_rate_zh_prompts"] = round(statistics.mean(m for m, z in zip(mixed, zh) if z), 3) if any(zh) else None
    if drills:
        rng = random.Random(seed)
        pairs = [(rng.randint(10, 198), rng.randint(10, 99)) for _ in range(drills)]
        drills_ids = [dm.encode_prompt(f"Add {a}+{b} column by column.")[1] for a, b in pairs]
        d = sample(model, tok, drills_ids, 1, temperature, 40, seed)
        result["drill_right"] = round(statistics.mean(f"\\boxed{{{a + b}}}" in t for (a, b), t in zip(pairs, d.texts)), 3)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a styles base (a directory with config.json and tokenizer)")
    ap.add_argument("--task", default="arithmetic_styles", choices=["arithmetic_styles", "search_styles"])
    ap.add_argument("--prompts", type=int, default=300, help="held-out prompts (the RL configs' val_data draw)")
    ap.add_argument("--samples", type=int, default=2, help="samples per prompt")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--drills", type=int, default=0, help="also sample this many column-addition drills")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = calibrate(args.model, args.prompts, args.samples, args.temperature, args.max_new_tokens, args.seed,
                       args.drills, args.task)
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
