"""cons@k voting: equivalent answers share a group, the largest group wins, ties go to the group
seen first. Hand cases; math-verify in-process (``workers=0``) except the pool test."""

from __future__ import annotations

import time

import pytest

from r1lightning.rewards import voting
from r1lightning.rewards.accuracy import normalize_answer, parse_number
from r1lightning.rewards.errors import RewardConfigError
from r1lightning.rewards.voting import (
    group_equivalent,
    group_equivalent_batch,
    majority_answer,
    majority_answers,
)

pytest.importorskip("math_verify")


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["1/2", "0.5", r"\frac{1}{2}", "3", "3"], [0, 0, 0, 1, 1]),  # the brief's hand case
        (["3", None, "", "  ", "3"], [0, None, None, None, 0]),  # no answer: no group
        (["7", "x=7", r"7^\circ", "7.0"], [0, 0, 0, 0]),  # exact-match normalisation, free
        ([r"\sqrt{8}", "3", r"2\sqrt{2}", r"\frac{4}{\sqrt{2}}"], [0, 1, 0, 0]),  # math-verify
        (["(3,4]", "[3,4]", "(3, 4]"], [0, 1, 0]),  # intervals differing in a bracket stay apart
        (["(1,2)", "(2,1)", r"\left(1, 2\right)"], [0, 1, 0]),  # ordered pairs
        ([r"\{1,2\}", r"\{2,1\}"], [0, 0]),  # sets
        (["1024", "2^{10}"], [0, 0]),  # a value and an expression of it vote together
        (["0.333", r"\frac{1}{3}"], [0, 1]),  # two plain numbers: exact values, not close ones
        (["3.14", r"\pi"], [0, 1]),  # a constant and an approximation of another constant
        (["B", "b"], [0, 0]),  # math-verify ignores case (so does accuracy_reward for gold "b")
        ([], []),  # nothing to group
    ],
)
def test_group_equivalent(answers, expected):
    assert group_equivalent(answers, workers=0) == expected


def test_ids_in_order_of_first_appearance():
    # The first group seen gets 0, whatever its size.
    assert group_equivalent(["5", "6", "6", "0.5", "1/2", "6"], workers=0) == [0, 1, 1, 2, 2, 1]


@pytest.mark.parametrize(
    ("answers", "correct", "expected"),
    [
        (["1/2", "0.5", r"\frac{1}{2}", "3", "3"], [1, 1, 1, 0, 0], (0, True)),  # 3 votes to 2
        (["3", "3", "1/2", "0.5", r"\frac{1}{2}"], [0, 0, 1, 1, 1], (2, True)),  # order-independent
        (["3", "4", "4", "3"], [1, 0, 0, 1], (0, True)),  # a 2-2 tie: the group seen first
        (["4", "3", "3", "4"], [0, 1, 1, 0], (0, False)),  # ... which may be the wrong one
        # String votes would pick "3" (2 votes to 1 each); grouped, 2\sqrt{2} wins 3 to 2.
        ([r"\sqrt{8}", "3", r"2\sqrt{2}", "3", r"\frac{4}{\sqrt{2}}"], [1, 0, 1, 0, 1], (0, True)),
        # A group is right when any member was scored right (the first lacked its answer tag).
        (["0.5", "1/2", "7"], [0, 1, 0], (0, True)),
        ([None, "", None], [0, 0, 0], (None, False)),  # no answer at all
        ([None, "9"], [0, 1], (1, True)),  # the only vote
    ],
)
def test_majority_answer(answers, correct, expected):
    assert majority_answer(answers, correct, workers=0) == expected


def test_majority_answer_checks_lengths():
    with pytest.raises(ValueError, match="correctness"):
        majority_answer(["1", "2"], [True])
    with pytest.raises(ValueError, match="group ids"):
        majority_answer(["1", "2"], [True, False], groups=[0])


def test_bad_options_are_config_errors():
    with pytest.raises(RewardConfigError, match="timeout_s"):
        group_equivalent(["1"], timeout_s=0)
    with pytest.raises(RewardConfigError, match="workers"):
        group_equivalent(["1"], workers=-1)


def test_timed_out_grouping_falls_back_to_exact_groups(monkeypatch):
    # A question whose math-verify task runs out of time (the pool gives None) keeps the free
    # normalised grouping instead of failing.
    monkeypatch.setattr(voting, "_run_checks", lambda fn, args, **kw: [None] * len(args))
    assert group_equivalent([r"\sqrt{8}", "0.5", r"2\sqrt{2}", "1/2"]) == [0, 1, 2, 1]


def test_numeric_questions_never_reach_math_verify(monkeypatch):
    # GSM8K / AIME-style votes are decided by exact values alone: no pool task.
    calls = []
    real = voting._run_checks

    def spy(fn, args, **kw):
        calls.append(len(args))
        return real(fn, args, **kw)

    monkeypatch.setattr(voting, "_run_checks", spy)
    ids = group_equivalent_batch([["1,234", "1234", "12"], ["5", r"\$5", "5.0"]], workers=0)
    assert ids == [[0, 0, 1], [0, 0, 0]]
    assert calls == [0]


@pytest.mark.parametrize(
    "answers",
    [
        [None, 3, object(), ["x"], "\x00", "\ufffd" * 10],  # not strings: coerced, no error
        ["(" * 5000 + ")" * 5000, "1"],  # over max_answer_chars: exact grouping only
        [r"9^{9^{9^{9}}}", r"9^{9^{9^{9}}}!", "1"],  # hostile for sympy: bounded by the alarms
        [r"\boxed{" * 300, "}" * 300, "<answer>"],  # unbalanced garbage
    ],
)
def test_garbage_answers_are_grouped_without_error(answers):
    start = time.monotonic()
    ids = group_equivalent(answers, workers=0, timeout_s=4)
    assert len(ids) == len(answers)
    assert time.monotonic() - start < 30  # generous: a shared machine


@pytest.mark.slow  # multi-process: spawns the math-verify pool
def test_pool_grouping_matches_in_process(mv_pool):
    batch = [
        ["1/2", "0.5", r"\frac{1}{2}", "3", "3"],
        [r"\sqrt{8}", "3", r"2\sqrt{2}", "3", r"\frac{4}{\sqrt{2}}"],
        ["(3,4]", "[3,4]", "(3, 4]", None],
        ["1024", "2^{10}", "7"],
    ]
    assert group_equivalent_batch(batch) == [group_equivalent(a, workers=0) for a in batch]
    assert majority_answers(batch, [[1] * len(a) for a in batch]) == [
        (0, True), (0, True), (0, True), (0, True)
    ]


def test_vote_keys_are_exact_values():
    # The free first step: plain numbers by exact value, everything else by normalised text.
    assert voting._vote_key(r"\frac{3}{4}") == voting._vote_key("0.75")
    assert voting._vote_key(r"x \in [-2,7]") == ("str", normalize_answer("[-2, 7]"))
    assert voting._vote_key("  ") is None
    assert parse_number(normalize_answer(r"\$1{,}000")) == 1000
