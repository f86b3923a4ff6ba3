"""Offline synthetic reasoning tasks with exact verifiers.

These give the miniature R1-Zero something real to learn without a model hub: every problem has
a checkable final answer (in ``\\boxed{}``, as the R1 math prompts ask for) and, for SFT of a base
model, a worked solution in the R1 output format ``<think> ... </think><answer> ... </answer>``.

Train and test problems are disjoint by construction: a problem belongs to the test split iff a
hash of its prompt falls in a fixed bucket, so no generated training problem is ever a held-out one,
whatever the seeds or sizes.

Tasks
- ``arithmetic``: "Compute 23+45+17." -- a chain of 3-4 two-digit additions (optionally
  subtractions); the worked solution adds left to right: ``23+45=68, 68+17=85``.
- ``countdown``: reach a target with + - * and each given number at most once; verified by
  evaluating the expression with an AST walker (never ``eval``).
- ``arithmetic_cot`` (long readable chains of thought for the cold start) and the non-reasoning tasks
  ``copy``, ``reverse``, ``uppercase``, ``convert``, ``general`` (a mix): :mod:`r1lightning.data.general_tasks`.
"""

from __future__ import annotations

import ast
import hashlib
import random
from typing import Callable, Iterator

TEST_BUCKETS = 20  # 1/20 of the problem space is reserved for the test split


def split_of(prompt: str) -> str:
    """Which split a problem belongs to: ``"test"`` for one hash bucket in 20, else ``"train"``."""
    digest = hashlib.md5(prompt.encode("utf-8")).digest()
    return "test" if digest[0] % TEST_BUCKETS == 0 else "train"


def format_solution(think: str, answer: str) -> str:
    """The R1 output format with the final answer boxed."""
    return f"<think>{think}</think><answer>\\boxed{{{answer}}}</answer>"


# --------------------------------------------------------------------------------------------
# arithmetic chains


def _arithmetic_problem(rng: random.Random, min_terms: int, max_terms: int, subtraction: bool) -> dict:
    n = rng.randint(min_terms, max_terms)
    nums = [rng.randint(10, 99) for _ in range(n)]
    ops = ["+"] + [rng.choice("+-") if subtraction else "+" for _ in range(n - 1)]
    expr = str(nums[0]) + "".join(op + str(x) for op, x in zip(ops[1:], nums[1:]))
    steps, acc = [], nums[0]
    for op, x in zip(ops[1:], nums[1:]):
        new = acc + x if op == "+" else acc - x
        steps.append(f"{acc}{op}{x}={new}")
        acc = new
    answer = str(acc)
    return {
        "prompt": f"Compute {expr}.",
        "answer": answer,
        "completion": format_solution(", ".join(steps), answer),
        "task": "arithmetic",
    }


# --------------------------------------------------------------------------------------------
# countdown

_ALLOWED_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def evaluate_countdown(expression: str, numbers: list[int]) -> int | None:
    """Value of a countdown expression, or None if it is invalid.

    Only integer literals, + - * and parentheses are allowed, and each given number may be used at
    most as many times as it is given. Never executes code.
    """
    if not isinstance(expression, str) or len(expression) > 200:
        return None
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    used: list[int] = []

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _ALLOWED_BINOPS:
            return _ALLOWED_BINOPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return node.value
        raise ValueError("disallowed")

    try:
        value = walk(tree)
    except (ValueError, RecursionError):
        return None
    pool = list(numbers)
    for u in used:
        if u not in pool:
            return None
        pool.remove(u)
    return value


def _countdown_problem(rng: random.Random, n_numbers: int = 3) -> dict:
    while True:
        nums = [rng.randint(1, 25) for _ in range(n_numbers)]
        a, b, c = nums[:3]
        op1, op2 = rng.choice("+-*"), rng.choice("+-*")
        inner = f"{a}{op1}{b}"
        inner_val = evaluate_countdown(inner, nums)
        expr = f"({inner}){op2}{c}"
        target = evaluate_countdown(expr, nums)
        if target is not None and 1 <= target <= 200:
            break
    think = f"{inner}={inner_val}, {inner_val}{op2}{c}={target}"
    return {
        "prompt": f"Using the numbers {', '.join(map(str, nums))}, make {target}.",
        "answer": expr,
        "target": target,
        "numbers": nums,
        "completion": format_solution(think, expr),
        "task": "countdown",
    }


TASKS: dict[str, Callable[..., dict]] = {
    "arithmetic": _arithmetic_problem,
    "countdown": _countdown_problem,
}
_DEFAULT_KWARGS = {
    "arithmetic": {"min_terms": 3, "max_terms": 4, "subtraction": False},
    "countdown": {"n_numbers": 3},
}


def _registry() -> tuple[dict[str, Callable[..., dict]], dict[str, dict]]:
    """Every task a ``synthetic:<task>`` source can name: these, the later stages' data (long readable CoTs,
    non-reasoning tasks) and the R1-behaviours worlds (arithmetic in styles, search in styles); imported here,
    as those modules build on this one."""
    from r1lightning.data.general_tasks import GENERAL_DEFAULTS, GENERAL_TASKS
    from r1lightning.data.search_styles import search_problem
    from r1lightning.data.styles import styled_arithmetic_problem

    styles = {"arithmetic_styles": styled_arithmetic_problem, "search_styles": search_problem}
    return {**TASKS, **GENERAL_TASKS, **styles}, {**_DEFAULT_KWARGS, **GENERAL_DEFAULTS, **dict.fromkeys(styles, {})}


def generate(task: str, n: int, split: str = "train", seed: int = 0, **kwargs) -> list[dict]:
    """``n`` distinct problems of ``task`` from ``split`` ("train" or "test"), deterministic in ``seed``.

    Each row: ``prompt``, ``answer`` (the gold final answer), ``completion`` (a worked solution in
    the R1 format), ``task``, ``id`` and task-specific fields.
    """
    tasks, defaults = _registry()
    if task not in tasks:
        raise ValueError(f"unknown synthetic task {task!r}; choose one of {sorted(tasks)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    opts = {**defaults[task], **kwargs}
    # the split salt keeps train and test streams independent for the same seed
    rng = random.Random(f"{task}-{split}-{seed}")
    rows, seen = [], set()
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise RuntimeError(f"could not generate {n} distinct {task} problems for split {split!r}")
        row = tasks[task](rng, **opts)
        # a task may key the split on something other than the prompt's text (arithmetic_styles: the English
        # wording, so both wordings of one problem fall in the same split)
        if row["prompt"] in seen or split_of(row.get("split_key", row["prompt"])) != split:
            continue
        seen.add(row["prompt"])
        row["id"] = f"{task}-{split}-{seed}-{len(rows)}"
        rows.append(row)
    return rows


#: Tasks whose text trains the default tiny tokenizer (the committed tiny_base was built from these).
CORPUS_TASKS = ("arithmetic", "countdown")


def iter_corpus(n: int = 2000, seed: int = 0, tasks: tuple[str, ...] = CORPUS_TASKS) -> Iterator[str]:
    """Text for training the tiny tokenizer: prompts and solutions of ``tasks``."""
    for task in tasks:
        for row in generate(task, n, "train", seed):
            yield row["prompt"]
            yield row["completion"]
