"""Accuracy rewards: exact match (pure), math-verify through the process pool, and the pool's
failure handling (timeouts, crashed workers, calls from non-main threads)."""

from __future__ import annotations

import os
import threading
import time
from fractions import Fraction

import pytest

from r1lightning.rewards import accuracy
from r1lightning.rewards.accuracy import (
    accuracy_reward,
    exact_match_reward,
    math_verify_reward,
    normalize_answer,
    parse_number,
)
from r1lightning.rewards.errors import RewardConfigError

pytest.importorskip("math_verify")


def r1(answer: str, think: str = "work") -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


# ----------------------------------------------------------------------------- exact match


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" 85. ", "85"),  # whitespace and a trailing period
        (r"\boxed{85}", "85"),  # box content
        ("$85$", "85"),  # math delimiters
        ("1,234,567", "1234567"),  # thousands separators
        ("1,2", "1,2"),  # not a thousands separator: a pair stays a pair
        (r"1,\!000", "1000"),  # MATH-style thin space inside a number
        (r"x = 3", "3"),  # one-letter assignment
        (r"90^\circ", "90"),  # degrees
        (r"10\%", "10"),  # percent
        (r"\text{(B)}", "B"),  # a \text wrapper around the whole answer; a choice letter unwrapped
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),  # \dfrac is \frac
        (r"\left( 1, 2 \right)", "(1,2)"),  # sizing commands and spaces
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("85", Fraction(85)),  # integer
        ("-0.75", Fraction(-3, 4)),  # decimal
        (".5", Fraction(1, 2)),  # no leading zero
        ("3/4", Fraction(3, 4)),  # slash fraction
        (r"-\frac{3}{4}", Fraction(-3, 4)),  # LaTeX fraction with sign outside
        ("1e3", Fraction(1000)),  # scientific notation
        ("1e99999", None),  # exponent too long: refused, so it cannot hang
        ("1/0", None),  # division by zero is not a number
        ("x", None),  # not a number
        ("1" * 200, None),  # absurdly long digit strings compare as strings
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("85", "85", 1.0),  # identical
        (r"\boxed{85}", "85", 1.0),  # boxed prediction
        ("85", r"\boxed{85}", 1.0),  # boxed gold
        ("85.0", "85", 1.0),  # same number, other spelling
        ("170/2", 85, 1.0),  # fraction vs an int gold from the dataset
        (r"\frac{1}{2}", "0.5", 1.0),  # LaTeX fraction vs decimal
        ("1,000", "1000", 1.0),  # thousands separator
        ("0.333", "1/3", 0.0),  # exact rationals: an approximation is wrong
        ("86", "85", 0.0),  # wrong
        ("23+45+17", "85", 0.0),  # the question echoed back is not the answer
        ("x+1", "x + 1", 1.0),  # non-numbers compare as strings without spaces
        ("B", "b", 0.0),  # string comparison is case-sensitive
        ("", "85", 0.0),  # empty answer block
        ("85", None, 0.0),  # missing gold for this sample scores 0, not an error
    ],
)
def test_exact_match_table(answer, gold, expected):
    assert exact_match_reward([r1(answer)], answer=[gold]) == [expected]


@pytest.mark.parametrize(
    ("completion", "kwargs", "expected"),
    [
        ("<think>so 85</think>85", {}, 0.0),  # no <answer> block: wrong by default
        (
            "<think>so 85</think>85",
            {"require_answer_tag": False},
            1.0,
        ),  # opt-in: text after </think>
        ("85", {"require_answer_tag": False}, 1.0),  # opt-in without any tags
        (None, {}, 0.0),  # garbage completion
    ],
)
def test_exact_match_answer_tag_option(completion, kwargs, expected):
    assert exact_match_reward([completion], answer=["85"], **kwargs) == [expected]


@pytest.mark.parametrize("fn", [exact_match_reward, math_verify_reward, accuracy_reward])
def test_missing_or_bad_answer_column_is_a_config_error(fn):
    with pytest.raises(ValueError, match="'answer'"):
        fn([r1("1")])  # column not passed
    with pytest.raises(ValueError, match="'answer'"):
        fn([r1("1"), r1("2")], answer=["1"])  # wrong length
    with pytest.raises(RewardConfigError, match="'answer'"):
        fn([r1("1")], answer="1")  # a string, not a per-sample list


# ----------------------------------------------------------------------------- math-verify, in-process


def test_math_verify_in_process_fast_path():
    # workers=0 from the main thread: no pool, math-verify's own signal.alarm timeouts.
    assert math_verify_reward(
        [r1(r"\frac{1}{2}"), r1("0.6")], answer=["0.5", "0.5"], workers=0
    ) == [1.0, 0.0]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout_s", 0),  # must be positive
        ("timeout_s", "5"),  # a YAML string is not a number
        ("workers", -1),  # negative pool size
        ("workers", 1.5),  # fractional pool size
        ("mp_context", "threads"),  # not a multiprocessing start method
        ("require_answer_tag", "yes"),  # must be a bool
        ("max_answer_chars", 0),  # must be a positive int
    ],
)
@pytest.mark.parametrize("fn", [math_verify_reward, accuracy_reward])
def test_math_verify_bad_options(fn, option, value):
    # Raised even when the batch needs no math-verify call (no answer block here), so a typo in
    # the config fails on the first step instead of on the first hard answer.
    with pytest.raises(RewardConfigError, match=option):
        fn(["no answer"], answer=["1"], **{option: value})


# ----------------------------------------------------------------------------- math-verify, process pool
# Marked slow (multi-process, ~10 s together); `-m "not slow"` skips them and never spawns the pool.

MV_TABLE = [
    # (final answer, gold, math_verify_reward, accuracy_reward)
    (r"\frac{1}{2}", "0.5", 1.0, 1.0),  # fraction vs decimal (accuracy: exact-match path)
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0, 1.0),  # symbolic equality; bare-LaTeX gold
    (r"\boxed{2\sqrt{2}}", r"$\sqrt{8}$", 1.0, 1.0),  # gold with $...$
    (r"\boxed{2\sqrt{2}}", r"\boxed{\sqrt{8}}", 1.0, 1.0),  # gold with \boxed{}
    (r"2\sqrt{2}", r"\sqrt{8}", 1.0, 1.0),  # bare LaTeX prediction (wrapped in $ before parsing)
    (r"$\frac{\pi}{2}$", r"\pi/2", 1.0, 1.0),  # constants
    (r"\boxed{\{2,1\}}", r"\{1,2\}", 1.0, 1.0),  # sets are unordered
    (r"x^2+2x+1", r"(x+1)^2", 1.0, 1.0),  # expanded polynomial
    (r"\boxed{3}", r"\sqrt{8}", 0.0, 0.0),  # wrong value
    ("23+45+17", "85", 1.0, 0.0),  # echoing the question: math-verify accepts, accuracy refuses
    ("The answer is 5", "5", 1.0, 0.0),  # prose in the answer block: only math-verify digs it out
    ("hello world", r"\sqrt{2}", 0.0, 0.0),  # prose
    (r"\boxed{\frac{1}{", r"\frac{1}{2}", 0.0, 0.0),  # unbalanced garbage
]


@pytest.mark.slow  # multi-process: spawns the math-verify pool
def test_math_verify_pool_table(mv_pool):
    completions = [r1(a) for a, _, _, _ in MV_TABLE]
    golds = [g for _, g, _, _ in MV_TABLE]
    assert math_verify_reward(completions, answer=golds, timeout_s=3) == [
        row[2] for row in MV_TABLE
    ]
    assert accuracy_reward(completions, answer=golds, timeout_s=3) == [row[3] for row in MV_TABLE]


@pytest.mark.slow  # multi-process: spawns the math-verify pool
def test_math_verify_garbage_and_huge_inputs(mv_pool):
    huge = "x" * 1_000_000
    completions = [
        huge,  # 1 MB, no tags
        r1("(" * 5000 + ")" * 5000),  # over max_answer_chars: 0.0 without parsing
        r1("(" * 400 + "1" + ")" * 400),  # under the limit, deeply nested: parses or times out
        r1(huge[:900], think=huge),  # 1 MB reasoning, junk answer
        None,  # not even a string
        r1("\x00\ufffd\U0001f600"),  # control / replacement / emoji characters
        r1(r"$9^{9^{9^{9}}}!$"),  # astronomically slow: math-verify's own alarm fires -> 0.0
    ]
    start = time.perf_counter()
    out = math_verify_reward(completions, answer=["1"] * len(completions), timeout_s=3)
    assert out == [0.0, 0.0, out[2], 0.0, 0.0, 0.0, 0.0] and out[2] in (0.0, 1.0)
    assert time.perf_counter() - start < 10


@pytest.mark.slow  # multi-process: spawns the math-verify pool
def test_math_verify_from_a_non_main_thread(mv_pool):
    # math-verify alone raises ValueError in a thread (signal.alarm); the pool makes it work.
    results = {}

    def run(key, **kwargs):
        results[key] = math_verify_reward(
            [r1(r"\boxed{2\sqrt{2}}"), r1("3")], answer=[r"\sqrt{8}", r"\sqrt{8}"], **kwargs
        )

    threads = [
        threading.Thread(target=run, args=("pool",)),
        threading.Thread(
            target=run, args=("workers0",), kwargs={"workers": 0}
        ),  # falls back to the pool
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {"pool": [1.0, 0.0], "workers0": [1.0, 0.0]}


# The tests below kill pool workers; they run last in this file so the others share one pool.


@pytest.mark.slow  # multi-process: spawns the math-verify pool
def test_pool_hard_timeout_kills_and_recovers(mv_pool):
    # A C-level hang cannot be interrupted by signal.alarm; the parent's wall clock must catch
    # it. time.sleep stands in for the hang; the quick items around it keep their results.
    workers = accuracy._default_workers()
    start = time.perf_counter()
    out = accuracy._run_in_pool(
        time.sleep, [(0,), (60,), (0,)], timeout_s=1.0, workers=workers, default="timed out"
    )
    assert out == [None, "timed out", None]
    assert time.perf_counter() - start < 10


@pytest.mark.slow  # multi-process: spawns the math-verify pool
def test_pool_worker_crash_scores_default_and_recovers(mv_pool):
    # A worker that dies (segfault, OOM kill) breaks the pool: default score, no exception, and
    # the next call gets a fresh pool.
    workers = accuracy._default_workers()
    assert accuracy._run_in_pool(os._exit, [(1,)], timeout_s=30, workers=workers, default=-1.0) == [
        -1.0
    ]
    assert math_verify_reward([r1(r"\frac{1}{2}")], answer=["0.5"]) == [1.0]
