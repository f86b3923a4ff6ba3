"""The tiny world's data for R1's later stages: long readable chains of thought and non-reasoning tasks.

DeepSeek-R1's cold start (stage 1) fine-tunes on "thousands of long, readable CoT samples" in a fixed output
format (reasoning, then a summary); its SFT stage (stage 3) mixes ~600k reasoning samples with ~200k
non-reasoning ones (writing, factual QA, translation), answered without a chain of thought. The miniature's
versions, all with exact verifiers (``exact_match`` for the general tasks, ``accuracy`` for arithmetic):

- ``arithmetic_cot``: the arithmetic chains of :mod:`r1lightning.data.tasks`, solved in readable sentences
  around exactly the computation the base model was trained on (the running sums, ``23+45=68, 68+17=85``),
  closed by a sentence restating the result and a one-line summary in the answer::

      <think>Add left to right, keeping a running total: 23+45=68, 68+17=85. So the total is 85.</think>
      <answer>The result is \\boxed{85}.</answer>

  The running sums are written verbatim as the base writes them so that SFT teaches the format without
  displacing the computation: an earlier version with full-stop-separated steps and a check by subtracting
  back (which the 1.1M-parameter base never learnt) taught the long format but dropped held-out accuracy from
  27.5% to 2% (README, "The whole R1 recipe").

- non-reasoning tasks, answered at once (the think block says so: R1's format keeps the tags):
  ``copy`` ("Repeat the word plomk." -> ``plomk``), ``reverse`` (-> ``kmolp``), ``uppercase`` (-> ``PLOMK``),
  ``convert`` ("Convert 3 km to m." -> ``3000``; factors are powers of ten, so the answer appends zeros: a
  1M-parameter model learns that, not multiplication by 60); ``general`` draws one of the four per row.

Rows carry ``prompt``, ``answer``, ``completion``, ``task`` and ``category`` (``reasoning`` / ``general``, as
``mixed_prompts`` rows do; not ``kind``: data columns reach the rewards as keyword arguments, and a ``kind``
column replaced the ``reward_model`` reward's ``kind`` option, so it scored no row of the 4b mix); the
train/test split is the same prompt hash as every synthetic task (:func:`r1lightning.data.tasks.split_of`).
"""

from __future__ import annotations

import random

from r1lightning.data.tasks import _arithmetic_problem, format_solution

#: what the think block of a non-reasoning answer says (R1's format keeps the tags; the content is trivial)
NO_THINKING = "Direct answer."

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# (from unit, to unit, factor): powers of ten, so every answer is the number with zeros appended -- within the
# tiny models' reach, unlike h -> min (x 60), which the 1.1M-parameter base cannot multiply
_CONVERSIONS = [("km", "m", 1000), ("m", "cm", 100), ("kg", "g", 1000), ("cm", "mm", 10), ("t", "kg", 1000),
                ("dm", "cm", 10)]


def general_solution(answer: str) -> str:
    return f"<think>{NO_THINKING}</think><answer>\\boxed{{{answer}}}</answer>"


def _word(rng: random.Random, min_len: int, max_len: int) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(min_len, max_len)))


def _general_row(prompt: str, answer: str, task: str) -> dict:
    return {"prompt": prompt, "answer": answer, "completion": general_solution(answer), "task": task,
            "category": "general"}


def _copy_problem(rng: random.Random, min_len: int = 3, max_len: int = 6) -> dict:
    w = _word(rng, min_len, max_len)
    return _general_row(f"Repeat the word {w}.", w, "copy")


def _reverse_problem(rng: random.Random, min_len: int = 3, max_len: int = 6) -> dict:
    w = _word(rng, min_len, max_len)
    return _general_row(f"Reverse the word {w}.", w[::-1], "reverse")


def _uppercase_problem(rng: random.Random, min_len: int = 3, max_len: int = 6) -> dict:
    w = _word(rng, min_len, max_len)
    return _general_row(f"Write {w} in capital letters.", w.upper(), "uppercase")


def _convert_problem(rng: random.Random, max_value: int = 200) -> dict:
    src, dst, factor = rng.choice(_CONVERSIONS)
    x = rng.randint(1, max_value)
    return _general_row(f"Convert {x} {src} to {dst}.", str(x * factor), "convert")


_GENERAL = {"copy": _copy_problem, "reverse": _reverse_problem, "uppercase": _uppercase_problem,
            "convert": _convert_problem}


def _general_problem(rng: random.Random) -> dict:
    return _GENERAL[rng.choice(sorted(_GENERAL))](rng)


def long_cot(terms: list[int], ops: list[str]) -> tuple[str, str]:
    """(think, answer block) of the readable chain of thought for ``terms[0] ops[0] terms[1] ...``: a sentence
    saying how, the running sums exactly as the base model writes them, a sentence restating the result."""
    acc, steps = terms[0], []
    for op, x in zip(ops, terms[1:]):
        new = acc + x if op == "+" else acc - x
        steps.append(f"{acc}{op}{x}={new}")
        acc = new
    think = f"Add left to right, keeping a running total: {', '.join(steps)}. So the total is {acc}."
    return think, f"The result is \\boxed{{{acc}}}."


def _arithmetic_cot_problem(rng: random.Random, min_terms: int = 3, max_terms: int = 4,
                            subtraction: bool = False) -> dict:
    row = _arithmetic_problem(rng, min_terms, max_terms, subtraction)
    expr = row["prompt"][len("Compute "):-1]
    terms, ops, cur = [], [], ""
    for ch in expr:
        if ch in "+-":
            terms.append(int(cur))
            ops.append(ch)
            cur = ""
        else:
            cur += ch
    terms.append(int(cur))
    think, answer = long_cot(terms, ops)
    return {**row, "completion": f"<think>{think}</think><answer>{answer}</answer>", "task": "arithmetic_cot",
            "category": "reasoning"}


GENERAL_TASKS = {"arithmetic_cot": _arithmetic_cot_problem, "general": _general_problem, **_GENERAL}
GENERAL_DEFAULTS: dict[str, dict] = {name: {} for name in GENERAL_TASKS}

__all__ = ["GENERAL_DEFAULTS", "GENERAL_TASKS", "NO_THINKING", "general_solution", "long_cot", "format_solution"]
