"""Arithmetic in several reasoning styles (the R1-behaviours world): every solution is right, slips are
always caught after the check, styles and language mixing come in the configured shares (mixing only
for Chinese-worded prompts) and are recognisable, and both wordings of a problem share its split."""

from __future__ import annotations

import random
import re
import statistics

import pytest

from r1lightning.callbacks.reflection import DEFAULT_REFLECTIVE_WORDS, ReflectiveWordCounter
from r1lightning.data.styles import classify_style, column_check, styled_arithmetic_problem, write_solution
from r1lightning.data.tasks import generate, split_of
from r1lightning.rewards import accuracy_reward, extract_think
from r1lightning.rewards.language import target_language_fraction

SUM = re.compile(r"(\d+)\+(\d+)=(\d+)")
CHECK = re.compile(r"(\d+)\+(\d+)=(\d+), let me check: (\d\+\d=\d+, \d\+\d\+[01]=\d+, (?:\d\+[01]=\d, )?\d+)(, wait, \d+\+\d+=\d+)?")


@pytest.fixture(scope="module")
def rows():
    return generate("arithmetic_styles", n=3000, split="train", seed=0)


def nums_of(row):
    return [int(x) for x in row["split_key"][len("Compute "):-1].split("+")]


def test_every_solution_is_right_and_every_slip_is_caught(rows):
    assert accuracy_reward([r["completion"] for r in rows], answer=[r["answer"] for r in rows]) == [1.0] * len(rows)
    slips = 0
    for r in rows:
        nums = nums_of(r)
        assert r["answer"] == str(sum(nums))
        expr = "+".join(map(str, nums))
        assert r["prompt"] == (f"计算 {expr}。" if r["zh_prompt"] else f"Compute {expr}.")
        think = extract_think(r["completion"])
        for m in SUM.finditer(think):
            a, b, c = map(int, m.groups())
            if a + b != c:  # a slip, in the first or the second computation; "wait", then the right sum
                slips += 1
                after = think[m.end():]
                assert re.match(rf"(, let me check: {a}\+{b}={a + b})?, wait, {a}\+{b}={a + b}(,|$)", after), after
                assert abs(c - (a + b)) in (1, 10)
        # every step of a checked solution is checked, and the value carried on is the checked one
        if r["style"] == "checked":
            assert think.count("let me check") == len(nums) - 1
    assert slips > 200  # p_slip 0.3 of 2 steps of ~600 checked solutions
    # a step is checked by computing it again; "wait" comes exactly where the two computations disagree
    for r in rows:
        for m in re.finditer(r"(\d+\+\d+)=(\d+), let me check: \1=(\d+)(, wait)?", extract_think(r["completion"])):
            assert (m.group(2) != m.group(3)) == bool(m.group(4)), m.group(0)


def test_style_and_language_shares(rows):
    styles = [r["style"] for r in rows]
    share = {s: styles.count(s) / len(rows) for s in ("short", "worked", "checked")}
    assert share["short"] == pytest.approx(0.35, abs=0.03)  # defaults: p_short 0.35, p_checked 0.2
    assert share["checked"] == pytest.approx(0.2, abs=0.02)
    assert statistics.mean(r["zh_prompt"] for r in rows) == pytest.approx(0.3, abs=0.03)
    long_zh = [r for r in rows if r["style"] != "short" and r["zh_prompt"]]
    assert statistics.mean(r["mixed"] for r in long_zh) == pytest.approx(0.8, abs=0.04)
    # mixing comes only with a Chinese-worded prompt, never in an answer-only solution
    assert not any(r["mixed"] for r in rows if r["style"] == "short" or not r["zh_prompt"])


def test_styles_are_recognisable_and_measured_as_intended(rows):
    counter = ReflectiveWordCounter(DEFAULT_REFLECTIVE_WORDS)
    for r in rows:
        assert classify_style(r["completion"]) == r["style"]
        english = target_language_fraction(extract_think(r["completion"]), "en")
        # mixing is what the callback's 0.9 threshold sees; English and short CoTs are fully consistent
        assert (english < 0.9) == r["mixed"], r["completion"]
        reflective = sum(counter.count(r["completion"]).values())
        assert (reflective > 0) == (r["style"] == "checked")


def test_hand_written_solutions():
    rng = random.Random(0)
    assert write_solution([23, 45, 17], "short", False, rng) == "<think>85</think><answer>\\boxed{85}</answer>"
    assert write_solution([23, 45, 17], "worked", True, rng) == (
        "<think>23+45=68, 然后 68+17=85, 所以答案是 85</think><answer>\\boxed{85}</answer>")
    checked = write_solution([23, 45, 17], "checked", False, random.Random(3), p_slip=0.0)
    assert checked == ("<think>23+45=68, let me check: 23+45=68, then 68+17=85, let me check: 68+17=85, "
                       "so the answer is 85</think><answer>\\boxed{85}</answer>")  # no slip: confirming checks
    slipped = write_solution([23, 45, 17], "checked", False, random.Random(3), p_slip=1.0)
    assert slipped.count("wait") == 2  # every step slips once, every check disagrees
    assert slipped.endswith(", wait, 68+17=85, so the answer is 85</think><answer>\\boxed{85}</answer>")
    with pytest.raises(ValueError, match="style"):
        write_solution([1, 2], "long", False, rng)


def test_split_is_by_the_problem_in_either_wording():
    test_rows = generate("arithmetic_styles", n=200, split="test", seed=1)
    assert all(split_of(r["split_key"]) == "test" for r in test_rows)
    assert any(r["zh_prompt"] for r in test_rows) and not all(r["zh_prompt"] for r in test_rows)
    train = generate("arithmetic_styles", n=3000, split="train", seed=1)
    # no held-out sum is trained on in either wording (a Chinese prompt's own hash would split it independently)
    assert {tuple(nums_of(r)) for r in train}.isdisjoint(tuple(nums_of(r)) for r in test_rows)
    assert not any(split_of(r["split_key"]) == "test" for r in train)


def test_column_check_by_hand():
    assert column_check(68, 17) == "8+7=15, 6+1+1=8, 85"
    assert column_check(23, 45) == "3+5=8, 2+4+0=6, 68"
    assert column_check(99, 99) == "9+9=18, 9+9+1=19, 198"
    assert column_check(163, 45) == "3+5=8, 6+4+0=10, 1+1=2, 208"  # a hundreds line: every line sums single digits
    assert column_check(150, 47) == "0+7=7, 5+4+0=9, 1+0=1, 197"
    for acc in range(10, 199):
        for x in range(10, 100):
            *lines, value = column_check(acc, x).split(", ")
            assert all(int(t) < 10 for line in lines for t in line.split("=")[0].split("+"))
            digits = [int(line.split("=")[1]) for line in lines]
            carry_out = digits[-1] // 10 * 10 ** len(digits)
            assert int(value) == acc + x == sum(d % 10 * 10 ** i for i, d in enumerate(digits)) + carry_out


def test_column_checked_solutions_and_drills():
    rows = generate("arithmetic_styles", n=2000, split="train", seed=0, check="column", p_column=0.4)
    drills = [r for r in rows if r["style"] == "column"]
    assert len(drills) / len(rows) == pytest.approx(0.4, abs=0.03)
    assert accuracy_reward([r["completion"] for r in rows], answer=[r["answer"] for r in rows]) == [1.0] * len(rows)
    for r in drills:
        a, b = map(int, re.fullmatch(r"Add (\d+)\+(\d+) column by column\.", r["prompt"]).groups())
        assert extract_think(r["completion"]) == column_check(a, b) and r["answer"] == str(a + b)
        assert split_of(r["split_key"]) == "train"
    checks = slips = 0
    for r in rows:
        if r["style"] != "checked":
            assert "let me check" not in r["completion"]
            continue
        think, nums = extract_think(r["completion"]), nums_of(r)
        found = CHECK.findall(think)
        assert len(found) == len(nums) - 1 == think.count("let me check")
        for a, b, c, column, wait in found:
            a, b, c = int(a), int(b), int(c)
            checks += 1
            assert column == column_check(a, b)
            # "wait" exactly where the direct sum slipped, then the step restated with the checked value
            assert (wait == f", wait, {a}+{b}={a + b}") if a + b != c else wait == "", (think, a, b, c)
            slips += a + b != c
            assert a + b == c or abs(c - (a + b)) in (1, 10)
        # the value carried on is the checked (true) partial sum
        carried = [int(m) for m in re.findall(r"(?:then|然后) (\d+)\+", think)]
        assert carried == [sum(nums[:i + 1]) for i in range(1, len(nums) - 1)]
    assert checks > 300 and 0.2 < slips / checks < 0.4  # p_slip 0.3
    with pytest.raises(ValueError, match="check"):
        styled_arithmetic_problem(random.Random(0), check="tens")
    assert write_solution([23, 45, 17], "checked", True, random.Random(3), p_slip=0.0, check="column") == (
        "<think>23+45=68, let me check: 3+5=8, 2+4+0=6, 68, 然后 68+17=85, let me check: 8+7=15, 6+1+1=8, 85, "
        "所以答案是 85</think><answer>\\boxed{85}</answer>")


@pytest.mark.parametrize("kwargs", [{"p_short": 0.9, "p_checked": 0.2}, {"p_mixed": 1.5}, {"p_slip": -0.1},
                                    {"p_zh_prompt": 2.0}, {"p_mixed_en": -1.0},
                                    {"p_column": 1.5}])
def test_bad_shares_raise(kwargs):
    with pytest.raises(ValueError, match="probabilities"):
        styled_arithmetic_problem(random.Random(0), **kwargs)
