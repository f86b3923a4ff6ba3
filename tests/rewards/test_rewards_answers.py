"""What counts as the same answer: the final-answer extraction, the answer-length guard, and a
table of tricky equivalences (every row says why it scores what it scores).

math-verify runs in-process here (``workers=0``: main thread, math-verify's own alarms), so
these tests need no pool. The real-data checks are in test_rewards_real_data.py.
"""

from __future__ import annotations

import pytest

from r1lightning.rewards.accuracy import (
    DEFAULT_MAX_ANSWER_CHARS,
    accuracy_reward,
    exact_match_reward,
    math_verify_reward,
)
from r1lightning.rewards.parsing import (
    answer_in_block,
    extract_final_answer,
    extract_hash_answer,
)
from r1lightning.rewards.voting import group_equivalent

pytest.importorskip("math_verify")


def r1(answer: str, think: str = "work") -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (r1(r"so \boxed{\frac{1}{2}}"), r"\frac{1}{2}"),  # the box inside the answer block
        (r1(r"\boxed{1} no, \boxed{2}"), "2"),  # the last box of the block
        (r"\boxed{9}" + r1("7"), "7"),  # the block beats a box outside it
        (r1("7") + r"\boxed{9}", "7"),  # ... on either side
        (r1("the answer is 7"), "the answer is 7"),  # no box: the whole block
        (r1("Janet: 16-3-4=9 eggs\n#### 1,234"), "1,234"),  # GSM8K marker inside the block
        (r1(r"#### 3 \boxed{4}"), "4"),  # a box beats the marker
        (r"<think>x</think> so \boxed{42}.", "42"),  # no block: the last box of the text
        ("She has 9 left.\n#### 18\n", "18"),  # no block, no box: the GSM8K marker
        ("The answer is 42.", None),  # prose alone: no guessing the last number
        (r1(""), None),  # empty block, nothing else
        (r1("") + r"\boxed{6}", "6"),  # an empty block says nothing: the box after it counts
        (r1(r"\boxed{}"), None),  # an empty box is no answer
        (r1("####"), "####"),  # a marker with nothing after it is no marker: the block
        ("<answer>" + r"\boxed{" * 500 + "1" + "</answer>", r"\boxed{" * 500 + "1"),  # unclosed
        (None, None),  # garbage in, None out
        (12345, None),  # a number is coerced to text, which has no answer
        ([{"role": "assistant", "content": r1("5")}], "5"),  # chat-message form
    ],
)
def test_extract_final_answer(completion, expected):
    assert extract_final_answer(completion) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),  # GSM8K rationale
        ("#### 1,234\nthanks", "1,234"),  # only the rest of the marker's line
        ("#### 1\n#### 2", "2"),  # the last marker
        ("#### ", None),  # nothing after it
        ("no marker", None),  # nothing to find
    ],
)
def test_extract_hash_answer(text, expected):
    assert extract_hash_answer(text) == expected


def test_answer_in_block_prefers_box_then_marker_then_block():
    assert answer_in_block(r"work \boxed{3}") == "3"
    assert answer_in_block("work\n#### 3") == "3"
    assert answer_in_block("  3  ") == "3"
    assert answer_in_block("") is None


# ----------------------------------------------------------------------------- length guard


# > 1,000 characters of worked solution before a short boxed answer (MATH-500 has 56 reference
# solutions that long). Today's code measured the whole block and scored these 0.
LONG_WORK = "We expand and simplify step by step. " * 40


@pytest.mark.parametrize(
    ("boxed", "gold"),
    [
        (r"\frac{\pi}{3}", r"\pi/3"),  # an expression: exact match cannot settle it
        (r"(3, \tfrac{9}{2}]", r"\left(3, 4.5\right]"),  # an interval
        (r"\begin{pmatrix} 1/5 \\ 0.4 \end{pmatrix}", r"\begin{pmatrix} 0.2 \\ 2/5 \end{pmatrix}"),
    ],
)
@pytest.mark.parametrize("fn", [accuracy_reward, math_verify_reward])
def test_length_guard_bounds_the_extracted_answer_not_the_block(fn, boxed, gold):
    completion = r1(LONG_WORK + rf"So the answer is $\boxed{{{boxed}}}$.")
    assert len(completion) > DEFAULT_MAX_ANSWER_CHARS
    assert exact_match_reward([completion], answer=[gold]) == [0.0]  # math-verify must decide
    assert fn([completion], answer=[gold], workers=0) == [1.0]


@pytest.mark.parametrize("fn", [accuracy_reward, math_verify_reward])
def test_length_guard_still_refuses_long_answers(fn):
    long_box = r1(r"\boxed{" + "+".join(["x"] * 600) + "}")  # the boxed answer itself is long
    long_block = r1("x+" * 600 + "x")  # no box: the block is the answer
    out = fn([long_box, long_block], answer=["600x", "601x"], workers=0)
    assert out == [0.0, 0.0]  # both equal the gold, but not parsed: too long


# ----------------------------------------------------------------------------- equivalences

# (final answer, gold, accuracy_reward). Policies, decided here:
# * percent: the sign is dropped and the number compared as written, so 50\% == 50 != 0.5
#   (MATH's "what percent" answers are the number of percent);
# * units, currency, degrees: dropped, on both sides, whether written as \text{ cm}, \mbox{},
#   ^\circ, \$, or a known unit word after a number; a unit is never checked;
# * a plain-number gold accepts only plain numbers of the same exact value (fractions,
#   decimals, mixed numbers): no expression (10^3), no approximation (0.333 for 1/3), see
#   accuracy_reward. Non-numeric golds go to math-verify.
EQUIVALENCES = [
    # fractions and decimals
    (r"\frac12", "0.5", 1.0),  # brace-less \frac vs decimal (numeric gold: exact rationals)
    ("1/2", r"\frac{1}{2}", 1.0),  # slash vs LaTeX fraction
    (r"\dfrac{1}{2}", "1/2", 1.0),  # \dfrac is \frac
    (r"\tfrac{3}{4}", "0.75", 1.0),  # \tfrac too
    ("0.50", "0.5", 1.0),  # trailing zero
    ("2.0", "2", 1.0),  # integer written as a decimal
    ("0.333", r"\frac{1}{3}", 0.0),  # an approximation of a rational is wrong
    (r"\frac{2}{4}", r"\frac{1}{2}", 1.0),  # unreduced fraction, same value
    (r"1\frac{4}{5}", r"\frac{9}{5}", 1.0),  # mixed number (MATH writes them)
    (r"137 \frac{1}{2}", "137.5", 1.0),  # mixed number with a space
    (r"\frac{4}{5}", r"1\frac{4}{5}", 0.0),  # the fractional part alone is wrong
    # percentages
    (r"50\%", "50", 1.0),  # percent sign dropped
    ("50", r"50\%", 1.0),  # ... on the gold side too
    ("0.5", r"50\%", 0.0),  # policy: 50% is the number 50, not 0.5
    # intervals: the brackets matter
    ("(3,4]", "(3, 4]", 1.0),  # same interval, other spacing
    (r"\left(3, 4.5\right]", r"(3, \frac{9}{2}]", 1.0),  # sizing commands, equal endpoints
    ("[3,4]", "(3,4]", 0.0),  # closed vs half-open: different sets
    ("(3,4)", "(3,4]", 0.0),  # open vs half-open
    (r"(-\infty, 0)", r"(-\infty, 0]", 0.0),  # infinite interval, bracket differs
    (r"(2,\infty)", r"(2, \infty)", 1.0),  # same
    (r"(-\infty,2)\cup(3,\infty)", r"(-\infty, 2) \cup (3, \infty)", 1.0),  # a union
    ("(0,36)", r"(0,9) \cup (9,36)", 0.0),  # the union misses 9
    (r"x \in [-2,7]", "[-2,7]", 1.0),  # "x \in" dropped
    # tuples, ordered pairs, sets, lists of solutions
    (r"(3, \pi/2)", r"\left( 3, \frac{\pi}{2} \right)", 1.0),  # polar coordinates, equal entries
    ("(2,1)", "(1,2)", 0.0),  # an ordered pair is ordered
    (r"(6, 31, -1)", "(6,31,-1)", 1.0),  # a triple, spacing
    (r"\{2, 1\}", r"\{1,2\}", 1.0),  # a set is not
    ("-2, 1", "1,-2", 1.0),  # a list of all solutions compares as a set (math-verify)
    (r"1+\sqrt{19}, 1-\sqrt{19}", r"1 \pm \sqrt{19}", 1.0),  # \pm expands to both
    # matrices and vectors
    (r"\begin{bmatrix} 0.2 \\ -3.6 \end{bmatrix}", r"\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}",
     1.0),  # other brackets, decimals for fractions
    (r"\begin{pmatrix}-1&0\\0&-1\end{pmatrix}", r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}",
     1.0),  # spacing only (exact match keeps the row breaks)
    (r"\begin{pmatrix} 2 \\ 1 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}",
     0.0),  # rows in another order
    # units, currency, degrees
    ("5", r"5 \text{ cm}", 1.0),  # unit on the gold
    (r"5\text{ cm}", "5", 1.0),  # unit on the answer
    ("5 cm", "5", 1.0),  # a bare unit word after a number
    (r"864", r"864 \mbox{ inches}^2", 1.0),  # MATH-500's \mbox unit with a power
    ("2 pi", "2", 0.0),  # a bare letter after a number is a product, not a unit
    ("18.9", r"\$18.90", 1.0),  # currency and a trailing zero
    (r"\$32,348", r"\$32,\!348", 1.0),  # currency, thousands separator with a thin space
    ("30", r"30^\circ", 1.0),  # degrees on the gold
    (r"30^{\circ}", "30", 1.0),  # degrees on the answer, braced
    (r"\frac{270}{7}", r"\frac{270}7\text{ degrees}", 1.0),  # MATH-500's unit and brace-less \frac
    # \text{} wrappers and words
    (r"\text{(C)}", "C", 1.0),  # multiple choice, wrapped or not
    (r"\textbf{(C)}", r"\text{(C)}", 1.0),  # bold wrapper
    (r"\text{(E)}", r"\text{(C)}", 0.0),  # the wrong choice
    ("Evelyn", r"\text{Evelyn}", 1.0),  # a name
    (r"\text{Navin}", r"\text{Evelyn}", 0.0),  # another name
    # thousands separators
    ("1,234", "1234", 1.0),  # separator
    ("1234", "1{,}234", 1.0),  # LaTeX's {,} separator
    ("11,111,111,100", r"11,\! 111,\! 111,\! 100", 1.0),  # MATH-500's thin-spaced separators
    ("12", "1,2", 0.0),  # a pair is not a thousands-separated 12
    ("1,2", "12", 0.0),  # ... either way
    # LaTeX spacing and sizing
    (r"1\,000", "1000", 1.0),  # thin space in a number
    (r"3\!\sqrt{5}", r"3 \sqrt{5}", 1.0),  # negative thin space
    (r"x\ +\ 1", "x+1", 1.0),  # control space
    (r"\left( 1, 2 \right)", "(1,2)", 1.0),  # \left( \right)
    (r"\displaystyle\frac{1}{2}", "0.5", 1.0),  # \displaystyle
    # negative numbers
    ("-5", "-5", 1.0),  # identical
    ("- 5", "-5", 1.0),  # a space after the sign
    ("\u22125", "-5", 1.0),  # Unicode minus sign
    ("5", "-5", 0.0),  # the sign matters
    (r"-\frac{3}{4}", "-0.75", 1.0),  # sign outside a fraction
    # assignments
    ("x = 3", "3", 1.0),  # one-letter assignment
    ("3", "x=3", 1.0),  # ... on the gold
    ("y = 2x + 3", "y=2x+3", 1.0),  # a line
    ("y = 2x + 4", "y = 2x + 3", 0.0),  # another line
    # pi and square roots (math-verify)
    (r"\pi/2", r"\frac{\pi}{2}", 1.0),  # two spellings
    (r"2\sqrt{2}", r"\sqrt{8}", 1.0),  # simplified radical
    (r"11\sqrt2", r"11\sqrt{2}", 1.0),  # brace-less \sqrt
    (r"\frac{1}{\sqrt{3}}", r"\frac{\sqrt{3}}{3}", 1.0),  # rationalised denominator
    (r"\frac{\pi}{4}", r"\frac{\pi}{3}", 0.0),  # wrong constant
    (r"\sqrt{52}", r"\sqrt{51}", 0.0),  # wrong radicand
    ("3.14", r"\pi", 0.0),  # a short approximation of pi is wrong
    # expressions
    ("2(k+1)", "2k+2", 1.0),  # factored vs expanded
    ("q - p", "p - q", 0.0),  # sign flipped
    (r"\frac{\cos x}{\sin x}", r"\cot x", 1.0),  # trigonometric identity
    # numeric golds: exact values only
    ("10^{3}", "1000", 0.0),  # policy: an expression for a numeric gold is refused
    ("23+45+17", "85", 0.0),  # the question echoed back
    ("86", "85", 0.0),  # wrong number
    ("85.0001", "85", 0.0),  # close is not equal
    # wrong answers and garbage
    ("", "5", 0.0),  # empty
    (r"\boxed{", r"\frac{1}{2}", 0.0),  # unbalanced
    ("I do not know", r"\sqrt{2}", 0.0),  # prose
]


@pytest.mark.parametrize(("pred", "gold", "expected"), EQUIVALENCES)
def test_tricky_equivalences(pred, gold, expected):
    completion = r1(rf"The answer is $\boxed{{{pred}}}$." if pred else "")
    assert accuracy_reward([completion], answer=[gold], workers=0, timeout_s=6) == [expected]


def test_equivalence_table_rows_are_unique():
    pairs = [(p, g) for p, g, _ in EQUIVALENCES]
    assert len(pairs) == len(set(pairs))


def test_vote_grouping_agrees_with_the_table():
    # cons@k groups answers the way this table scores them (r1lightning.rewards.voting).
    # Leader = gold, as in the reward. The two rows the reward refuses on purpose (an
    # expression for a numeric gold) are one value, so they vote together.
    value_merges = {("10^{3}", "1000"), ("23+45+17", "85")}
    for pred, gold, expected in EQUIVALENCES:
        if not pred:
            continue
        ids = group_equivalent([gold, pred], workers=0, timeout_s=6)
        same = ids[0] is not None and ids[0] == ids[1]
        if (pred, gold) in value_merges:
            assert same, (pred, gold)
        else:
            assert same == bool(expected), (pred, gold, expected)
