"""Property-based fuzzing of every built-in reward: arbitrary unicode, NUL bytes, huge and
deeply nested inputs give one bounded float per item, quickly, and never an exception.

Examples are few and small on purpose (a shared CI machine); the hostile shapes that matter
(100k characters, ``<think>`` x 1000, ``\\boxed{`` x 500) are mixed in explicitly.
"""

from __future__ import annotations

import time

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from r1lightning.rewards import (  # noqa: E402
    accuracy_reward,
    exact_match_reward,
    format_reward,
    language_consistency_reward,
    math_verify_reward,
)

# Pieces a hostile completion is glued from: tags, boxes, NULs, controls, a power tower.
PIECES = st.sampled_from(
    [
        "<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "}", "{", "\\", "$",
        "\x00", "\x1b", "\u200b", "\ufeff", "\ud7ff", "9^{9^{9^{9}}}", "100000!", "先", "é",
    ]
)
TEXT = st.one_of(
    st.text(max_size=200),  # arbitrary unicode, surrogates excluded by hypothesis
    st.lists(st.one_of(PIECES, st.text(max_size=5)), max_size=40).map("".join),
)
HUGE = [
    "x" * 100_000,  # 100k characters, no structure
    "<think>" * 1000 + "</think><answer>1</answer>",  # deeply nested think tags
    "<answer>" + "\\boxed{" * 500 + "1" + "</answer>",  # unclosed boxes
    "<think>a</think><answer>" + "\\boxed{" * 500 + "1" + "}" * 500 + "</answer>",  # closed
    "<think>" + "\x00" * 100_000 + "</think><answer>\x00\x00</answer>",  # NUL flood
]
FAST = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

# (reward, extra columns); math-verify ones in-process (workers=0: main thread, no pool), with
# a small per-item limit and batch budget so one example costs seconds at most.
CASES = [
    (format_reward, {}),  # R1-Zero template check
    (exact_match_reward, {"answer": "gold"}),  # normalised string / rational match
    (language_consistency_reward, {"language": "en"}),  # CoT script fractions
    (math_verify_reward, {"answer": "gold", "workers": 0, "timeout_s": 3, "batch_timeout_s": 5}),
    (accuracy_reward, {"answer": "gold", "workers": 0, "timeout_s": 3, "batch_timeout_s": 5}),
]


def _call(fn, completions, columns):
    kwargs = dict(columns)
    if kwargs.get("answer") == "gold":
        kwargs["answer"] = [r"\sqrt{2}"] * len(completions)  # non-numeric: reaches math-verify
    start = time.monotonic()
    scores = fn(completions, **kwargs)
    elapsed = time.monotonic() - start
    assert len(scores) == len(completions)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores), scores
    return elapsed


@pytest.mark.parametrize(("fn", "columns"), CASES, ids=[fn.__name__ for fn, _ in CASES])
@FAST
@given(completions=st.lists(TEXT, min_size=1, max_size=4))
def test_arbitrary_text_gives_bounded_scores(fn, columns, completions):
    assert _call(fn, completions, columns) < 30  # generous: math-verify's budget is 5 s


@pytest.mark.parametrize(("fn", "columns"), CASES, ids=[fn.__name__ for fn, _ in CASES])
def test_huge_and_nested_inputs_are_fast(fn, columns):
    assert _call(fn, HUGE, columns) < 30


@pytest.mark.parametrize(
    "answer",
    [
        "\x00",  # a NUL byte alone
        "\x00\x00 \n\x00",  # NULs and whitespace
        "\x1b\x7f\u200b\ufeff",  # other controls and zero-width characters
    ],
)
def test_invisible_answers_are_empty(answer):
    completion = f"<think>work</think><answer>{answer}</answer>"
    assert format_reward([completion]) == [0.0]  # today: 1.0 (NUL is not whitespace)
    assert exact_match_reward([completion], answer=[answer]) == [0.0]  # nothing to grade
    assert accuracy_reward([completion], answer=[answer], workers=0) == [0.0]


@FAST
@given(texts=st.lists(TEXT, min_size=1, max_size=6))
def test_vote_extraction_and_grouping_never_raise(texts):
    # cons@k reads every sampled completion: garbage gives None or a string, and grouping the
    # extracted answers (in-process math-verify, bounded) gives one id or None per answer.
    from r1lightning.rewards.parsing import extract_final_answer
    from r1lightning.rewards.voting import group_equivalent

    answers = [extract_final_answer(t) for t in texts + HUGE]
    assert all(a is None or isinstance(a, str) for a in answers)
    start = time.monotonic()
    ids = group_equivalent(answers, workers=0, timeout_s=4)
    assert len(ids) == len(answers)
    assert all(i is None or isinstance(i, int) for i in ids)
    assert time.monotonic() - start < 30
