"""Arithmetic in several reasoning styles (the R1-behaviours world): every solution is right, slips are
always caught, styles and language mixing come in the configured shares and are recognisable."""

from __future__ import annotations

import random
import re
import statistics

import pytest

from r1lightning.callbacks.reflection import DEFAULT_REFLECTIVE_WORDS, ReflectiveWordCounter
from r1lightning.data.styles import _check, classify_style, styled_arithmetic_problem, write_solution
from r1lightning.data.tasks import generate, split_of
from r1lightning.rewards import accuracy_reward, extract_think
from r1lightning.rewards.language import target_language_fraction

SUM = re.compile(r"(\d+)\+(\d+)=(\d+)")


@pytest.fixture(scope="module")
def rows():
    return generate("arithmetic_styles", n=3000, split="train", seed=0)


def test_every_solution_is_right_and_every_slip_is_caught(rows):
    assert accuracy_reward([r["completion"] for r in rows], answer=[r["answer"] for r in rows]) == [1.0] * len(rows)
    slips = 0
    for r in rows:
        nums = [int(x) for x in r["prompt"][len("Compute "):-1].split("+")]
        assert r["answer"] == str(sum(nums))
        think = extract_think(r["completion"])
        for m in SUM.finditer(think):
            a, b, c = map(int, m.groups())
            if a + b != c:  # a slip: the very next words are the re-check, which ends in the right sum
                slips += 1
                after = think[m.end():]
                assert after.startswith(", wait, let me check: ")
                assert re.match(rf", wait, let me check: [^,]+(, [^,]+)?, (so|所以) {a}\+{b}={a + b}", after)
                assert abs(c - (a + b)) in (1, 10)
    assert slips > 100  # p_slip 0.5 of ~450 checked solutions


def test_style_and_language_shares(rows):
    styles = [r["style"] for r in rows]
    share = {s: styles.count(s) / len(rows) for s in ("short", "worked", "checked")}
    assert share["short"] == pytest.approx(0.45, abs=0.03)  # defaults: p_short 0.45, p_checked 0.15
    assert share["checked"] == pytest.approx(0.15, abs=0.02)
    long_rows = [r for r in rows if r["style"] != "short"]
    assert statistics.mean(r["mixed"] for r in long_rows) == pytest.approx(0.3, abs=0.03)
    assert not any(r["mixed"] for r in rows if r["style"] == "short")


def test_styles_are_recognisable_and_measured_as_intended(rows):
    counter = ReflectiveWordCounter(DEFAULT_REFLECTIVE_WORDS)
    for r in rows:
        assert classify_style(r["completion"]) == r["style"]
        english = target_language_fraction(extract_think(r["completion"]), "en")
        # mixing is what the callback's 0.9 threshold sees; English and short CoTs are fully consistent
        assert (english < 0.9) == r["mixed"], r["completion"]
        reflective = sum(counter.count(r["completion"]).values())
        assert (reflective > 0) == (r["style"] == "checked")


def test_check_decomposes_tens_then_units():
    assert _check(68, 17) == "68+10=78, 78+7=85"
    assert _check(68, 20) == "68+20=88"  # no units: one step


def test_hand_written_solutions():
    rng = random.Random(0)
    assert write_solution([23, 45, 17], "short", False, rng) == "<think>85</think><answer>\\boxed{85}</answer>"
    assert write_solution([23, 45, 17], "worked", True, rng) == (
        "<think>23+45=68, 然后 68+17=85, 所以答案是 85</think><answer>\\boxed{85}</answer>")
    checked = write_solution([23, 45, 17], "checked", False, random.Random(3), p_slip=0.0)
    assert "let me check" in checked and "wait" not in checked  # no slip: a confirming check
    slipped = write_solution([23, 45, 17], "checked", False, random.Random(3), p_slip=1.0)
    assert "wait, let me check" in slipped
    with pytest.raises(ValueError, match="style"):
        write_solution([1, 2], "long", False, rng)


def test_same_problems_and_split_as_arithmetic():
    test_rows = generate("arithmetic_styles", n=200, split="test", seed=1)
    assert all(split_of(r["prompt"]) == "test" for r in test_rows)
    train_prompts = {r["prompt"] for r in generate("arithmetic_styles", n=3000, split="train", seed=1)}
    assert train_prompts.isdisjoint(r["prompt"] for r in test_rows)


@pytest.mark.parametrize("kwargs", [{"p_short": 0.9, "p_checked": 0.2}, {"p_mixed": 1.5}, {"p_slip": -0.1}])
def test_bad_shares_raise(kwargs):
    with pytest.raises(ValueError, match="probabilities"):
        styled_arithmetic_problem(random.Random(0), **kwargs)
