"""Synthetic tasks: disjoint splits, determinism, worked solutions that are actually right, and a
countdown verifier that never executes code."""

from __future__ import annotations

import re

import pytest

from r1lightning.data.tasks import evaluate_countdown, generate, split_of
from r1lightning.rewards import accuracy_reward, extract_answer, extract_boxed, extract_think

STEP = re.compile(r"^(-?\d+)([+-])(\d+)=(-?\d+)$")


@pytest.fixture(scope="module")
def arithmetic_train():
    return generate("arithmetic", n=3000, split="train", seed=0)


@pytest.fixture(scope="module")
def arithmetic_test():
    return generate("arithmetic", n=300, split="test", seed=0)


# ---------------------------------------------------------------------------------------------
# splits and determinism


@pytest.mark.parametrize("task", ["arithmetic", "countdown"])
def test_train_and_test_are_disjoint_and_split_of_agrees(task, arithmetic_train, arithmetic_test):
    if task == "arithmetic":
        train, test = arithmetic_train, arithmetic_test
    else:
        train, test = generate(task, n=3000, split="train"), generate(task, n=300, split="test")
    train_prompts = {r["prompt"] for r in train}
    test_prompts = {r["prompt"] for r in test}
    assert len(train_prompts) == 3000 and len(test_prompts) == 300  # distinct within a split
    assert not train_prompts & test_prompts
    assert all(split_of(p) == "train" for p in train_prompts)
    assert all(split_of(p) == "test" for p in test_prompts)
    # another seed draws other problems, but never crosses the split
    other = {r["prompt"] for r in generate(task, n=300, split="test", seed=1)}
    assert other != test_prompts and not other & train_prompts


def test_deterministic_in_seed():
    a = generate("arithmetic", n=50, split="train", seed=5)
    assert a == generate("arithmetic", n=50, split="train", seed=5)
    assert a != generate("arithmetic", n=50, split="train", seed=6)
    assert [r["id"] for r in a[:2]] == ["arithmetic-train-5-0", "arithmetic-train-5-1"]


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        generate("arithmetic", n=3, split="val")
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        generate("arithmetic", n=0)


# ---------------------------------------------------------------------------------------------
# worked solutions


@pytest.mark.parametrize("subtraction", [False, True])
def test_arithmetic_worked_solution_is_right(subtraction, arithmetic_train):
    rows = arithmetic_train if not subtraction else generate("arithmetic", n=500, subtraction=True)
    saw_minus = False
    for row in rows:
        expr = re.fullmatch(r"Compute (.+)\.", row["prompt"]).group(1)
        terms = re.findall(r"[+-]?\d+", expr)  # "23+45-17" -> ["23", "+45", "-17"]
        steps = extract_think(row["completion"]).split(", ")
        assert len(steps) == len(terms) - 1, row
        acc = int(terms[0])
        for step, term in zip(steps, terms[1:]):
            a, op, b, c = STEP.match(step).groups()
            # the chain starts from the running total and consumes the prompt's terms in order
            assert int(a) == acc and op + b == (term if term[0] in "+-" else "+" + term), (row, step)
            assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b)), (row, step)
            acc = int(c)
            saw_minus |= op == "-"
        assert str(acc) == row["answer"]
        assert extract_boxed(extract_answer(row["completion"])) == row["answer"]
    assert saw_minus == subtraction


def test_countdown_solution_reaches_target():
    for row in generate("countdown", n=300, seed=2):
        assert evaluate_countdown(row["answer"], row["numbers"]) == row["target"]
        assert f"make {row['target']}." in row["prompt"]
        assert extract_boxed(extract_answer(row["completion"])) == row["answer"]


# ---------------------------------------------------------------------------------------------
# the countdown verifier


@pytest.mark.parametrize(
    "expression, numbers, expected",
    [
        ("(3+5)*2", [3, 5, 2], 16),  # valid: parentheses, + and *
        (" 25 - 5 ", [5, 25], 20),  # surrounding spaces are fine; order of the pool does not matter
        ("3+3", [3, 5], None),  # reuse of a number given once
        ("3+3", [3, 3], 6),  # ... but a number given twice may be used twice
        ("7", [3, 5], None),  # a number not in the pool
        ("3", [3, 5], 3),  # not every number has to be used
        ("2**3", [2, 3], None),  # power is not an allowed operation
        ("8/2", [8, 2], None),  # division is not allowed (keeps values integral)
        ("8//2", [8, 2], None),  # neither is floor division
        ("-3+5", [3, 5], None),  # unary minus is not an allowed operation
        ("__import__('os')", [1], None),  # a call: never executed, rejected by the AST walk
        ("x+1", [1], None),  # names are rejected
        ("(lambda: 1)()", [1], None),  # so are lambdas
        ("3.0+5", [3, 5], None),  # float literals are not given numbers
        ("True+5", [5], None),  # a bool is not an int literal here
        ("3+", [3], None),  # syntax error -> None, not an exception
        ("", [3], None),  # empty
        (None, [3], None),  # not a string
        ("9" * 201, [9], None),  # huge input is refused before parsing
        ("+".join(["1"] * 100), [1] * 100, 100),  # 199 characters: still within the limit
    ],
)
def test_evaluate_countdown(expression, numbers, expected):
    assert evaluate_countdown(expression, numbers) == expected


# ---------------------------------------------------------------------------------------------
# the accuracy reward agrees with the generated gold answers


def test_accuracy_reward_on_gold_and_wrong_completions(arithmetic_train, arithmetic_test):
    rows = arithmetic_train[:1000] + arithmetic_test
    golds = [r["answer"] for r in rows]
    # numeric golds are decided by exact match, in process: no math-verify pool is started
    assert accuracy_reward([r["completion"] for r in rows], answer=golds) == [1.0] * len(rows)
    wrong = [r["completion"].replace(f"\\boxed{{{r['answer']}}}", f"\\boxed{{{int(r['answer']) + 1}}}") for r in rows]
    assert all(w != r["completion"] for w, r in zip(wrong, rows))
    assert accuracy_reward(wrong, answer=golds) == [0.0] * len(rows)
