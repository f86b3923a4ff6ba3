"""Cold-start data made the way R1 made it: the model's own reasoning, rewritten to be readable.

R1 §2.3.1 collects its cold-start chains of thought partly by "gathering DeepSeek-R1-Zero outputs in a readable
format, and refining the results through post-processing by human annotators". The miniature does the same with
the tiny base: it samples the base on training prompts (T = 1.0, the RL stage's sampling) and rewrites each
sample's running sums into the readable format of ``synthetic:arithmetic_cot``
(:func:`r1lightning.data.general_tasks.long_cot`), keeping the base's own numbers -- right or wrong:

    base:      <think>23+45=68, 68+17=85</think><answer>\\boxed{85}</answer>
    rewritten: <think>Add left to right, keeping a running total: 23+45=68, 68+17=85. So the total is 85.</think>
               <answer>The result is \\boxed{85}.</answer>

Samples that are not the base's worked format, or whose boxed answer is not their last running sum, are dropped
(the "readable" filter). The rows keep whether each one is correct (``correct``), but the SFT data is not
filtered on it: the cold start must teach the format, not the skill. With gold computations instead
(``synthetic:arithmetic_cot``), 250 SFT steps alone took the tiny base from 27.5% to 99.5% held-out pass@1 and left
the RL stage nothing to do; 100 steps left it at 0% (the words are new tokens to a model that has only written
digits, and learning them first disrupts the computation).

    python -m r1lightning.data.cold_start --model r1lightning/assets/tiny_base --n 4000 --seed 11 \\
        --out r1lightning/assets/cold_start/tiny_base_rewritten.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Optional

from r1lightning.data.general_tasks import long_cot

# the base's worked solution: "a+b=c, c+d=e" (tasks.format_solution), then its boxed answer
_SOLUTION = re.compile(r"^<think>(\d+(?:[+-]\d+=-?\d+)(?:, -?\d+[+-]\d+=-?\d+)*)</think><answer>\\boxed\{(-?\d+)\}</answer>$")
_STEP = re.compile(r"^(-?\d+)([+-])(\d+)=(-?\d+)$")


def rewrite_readable(completion: str) -> Optional[str]:
    """The base's worked solution in the readable cold-start format, its numbers unchanged; None if it is not a
    worked solution whose steps chain (each step starts from the previous result) and end on the boxed answer."""
    m = _SOLUTION.match(completion.strip())
    if m is None:
        return None
    steps = [_STEP.match(s) for s in m.group(1).split(", ")]
    if any(s is None for s in steps):
        return None
    for prev, cur in zip(steps, steps[1:]):
        if cur.group(1) != prev.group(4):
            return None
    if steps[-1].group(4) != m.group(2):
        return None
    terms = [int(steps[0].group(1))] + [int(s.group(3)) for s in steps]
    ops = [s.group(2) for s in steps]
    # long_cot recomputes the sums; write the base's own (possibly wrong) ones instead
    think, _ = long_cot(terms, ops)
    prefix = think[: think.index(": ") + 2]
    think = f"{prefix}{m.group(1)}. So the total is {m.group(2)}."
    return f"<think>{think}</think><answer>The result is \\boxed{{{m.group(2)}}}.</answer>"


def make_cold_start_data(model: str, n: int, seed: int, temperature: float = 1.0, batch_size: int = 256,
                         max_new_tokens: int = 64) -> list[dict]:
    """Sample the model once on each of ``n`` training prompts and keep the rewritable samples."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1lightning.data.tasks import generate
    from r1lightning.rewards import accuracy_reward

    tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    tok.padding_side = "left"
    lm = AutoModelForCausalLM.from_pretrained(model, local_files_only=True).eval()
    torch.manual_seed(seed)
    rows = generate("arithmetic", n, "train", seed=seed)
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                         add_generation_prompt=True) for r in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = lm.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                              max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        for r, ids in zip(chunk, gen[:, enc.input_ids.shape[1]:]):
            sample = tok.decode(ids, skip_special_tokens=True)
            readable = rewrite_readable(sample)
            if readable is None:
                continue
            correct = accuracy_reward([readable], answer=[r["answer"]], workers=0)[0] > 0.5
            out.append({"prompt": r["prompt"], "answer": r["answer"], "completion": readable, "task": "arithmetic_cot",
                        "category": "reasoning", "id": r["id"], "source_model": str(model), "base_sample": sample,
                        "correct": correct})
    return out


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m r1lightning.data.cold_start", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=4000, help="training prompts (one sample each)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows = make_cold_start_data(args.model, args.n, args.seed, args.temperature)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    right = sum(r["correct"] for r in rows)
    print(f"{len(rows)} of {args.n} samples rewritten ({right} correct, {len(rows) - right} wrong) -> {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
