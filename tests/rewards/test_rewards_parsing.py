"""Table tests for r1lightning.rewards.parsing: every row says what it checks."""

from __future__ import annotations

import time

import pytest

from r1lightning.rewards.parsing import as_text, extract_answer, extract_boxed, extract_think


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x</think><answer>42</answer>", "42"),  # the template
        ("<answer> 42 \n</answer>", "42"),  # content is stripped
        ("<answer>1</answer> so <answer>2</answer>", "2"),  # the LAST block wins
        ("<answer>1<answer>2</answer>", "2"),  # an unclosed opener does not swallow the next block
        ("<answer>1</answer><answer>2", "1"),  # a truncated last block is ignored
        ("<answer>a\nb</answer>", "a\nb"),  # multi-line answers
        ("<answer></answer>", ""),  # an empty block is "", not None (callers score it 0)
        ("<answer>42", None),  # never closed
        ("42</answer>", None),  # never opened
        ("The answer is 42.", None),  # no tags at all
        ("<ANSWER>42</ANSWER>", None),  # tags are case-sensitive, as in the template
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{42}", "42"),  # plain
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),  # nested braces are balanced
        (r"\boxed{1} or \boxed{2}", "2"),  # the last box wins
        (r"\boxed{1} or \boxed{2", "1"),  # a box cut off by truncation is skipped
        (r"\fbox{7}", "7"),  # \fbox is a box too
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces are literal, not grouping
        (r"\boxed {5}", "5"),  # space between command and brace
        (r"\boxed{\boxed{3}}", r"\boxed{3}"),  # nested boxes: the outer one closes last
        (r"}} {{ \boxed{x} }", "x"),  # stray braces around do not confuse the scan
        (r"\boxed{ a{b}c }", "a{b}c"),  # inner groups kept, outer whitespace stripped
        (r"\boxed{}", ""),  # an empty box is "", not None
        (r"\boxed", None),  # no brace: not a box
        (r"\boxed 5", None),  # the brace-less form is not recognised (documented)
        ("no box here", None),  # nothing to find
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think> why </think><answer>1</answer>", "why"),  # the template
        ("because</think><answer>1</answer>", "because"),  # prompt ended with "<think>"
        ("<think>a</think><think>b</think>", "a"),  # the FIRST block is the CoT
        ("<think>never closed", None),  # truncated reasoning
        ("plain text", None),  # no tags
    ],
)
def test_extract_think(text, expected):
    assert extract_think(text) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("text", "text"),  # strings pass through
        (None, ""),  # None is empty text
        (7, "7"),  # numbers are stringified
        ({"role": "assistant", "content": "hi"}, "hi"),  # one chat message
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "a",
        ),  # last message
        ([], ""),  # empty conversation
    ],
)
def test_as_text(completion, expected):
    assert as_text(completion) == expected


@pytest.mark.parametrize("fn", [extract_answer, extract_boxed, extract_think])
def test_garbage_in_none_out(fn):
    # Non-strings are garbage, not errors.
    assert fn(None) is None
    assert fn(12345) is None


def test_adversarial_inputs_are_linear_time():
    # Each of these is quadratic for a naive "rescan from every opener" implementation.
    nasty = [
        "<answer>" * 100_000 + "</answer>",
        "\\boxed{" * 100_000,
        "{" * 100_000 + "\\boxed{1}",
        "<think>" * 100_000 + "</think>",
    ]
    start = time.perf_counter()
    assert extract_answer(nasty[0]) == ""
    assert extract_boxed(nasty[1]) is None
    assert extract_boxed(nasty[2]) == "1"
    assert extract_think(nasty[3]) == ""
    assert time.perf_counter() - start < 2.0
