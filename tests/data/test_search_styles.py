"""The search world of the R1-behaviours demo: every solution right, the checked style tries candidates until the
sum reaches the target (rejecting exactly the wrong ones), candidates share the answer's units digit, shares and
language mixing as configured, both wordings of a problem in one split."""

from __future__ import annotations

import random
import re
import statistics

import pytest

from r1lightning.callbacks.reflection import DEFAULT_REFLECTIVE_WORDS, ReflectiveWordCounter
from r1lightning.data.search_styles import search_problem, write_search_solution
from r1lightning.data.styles import classify_style
from r1lightning.data.tasks import generate, split_of
from r1lightning.rewards import accuracy_reward, extract_think
from r1lightning.rewards.language import target_language_fraction

PROMPT = re.compile(r"Find x among ((?:\d+, )*\d+) with (\d+)\+x=(\d+)\.")
TRIAL = re.compile(r"(\d+)\+(\d+)=(\d+), (?:wait, not (\d+)|check: (\d+)=(\d+))")


@pytest.fixture(scope="module")
def rows():
    return generate("search_styles", n=3000, split="train", seed=0)


def parse(row):
    m = PROMPT.fullmatch(row["split_key"])
    return [int(c) for c in m[1].split(", ")], int(m[2]), int(m[3])


def test_every_solution_is_right_and_checks_reject_exactly_the_wrong_candidates(rows):
    assert accuracy_reward([r["completion"] for r in rows], answer=[r["answer"] for r in rows]) == [1.0] * len(rows)
    tries = []
    for r in rows:
        candidates, a, target = parse(r)
        answer = int(r["answer"])
        assert a + answer == target and answer in candidates and len(set(candidates)) == 4
        assert len({c % 10 for c in candidates}) == 1  # the answer cannot be read off the units digit
        listed = ", ".join(map(str, candidates))
        assert r["prompt"] == (f"在 {listed} 中找 x，使 {a}+x={target}。" if r["zh_prompt"] else r["split_key"])
        think = extract_think(r["completion"])
        trials = TRIAL.findall(think)
        if r["style"] != "checked":
            assert not trials
            continue
        tried = [int(t[1]) for t in trials]
        assert len(set(tried)) == len(tried) and set(tried) <= set(candidates) and tried[-1] == answer
        for x, y, s, rejected, c1, c2 in trials:
            assert int(x) == a and int(x) + int(y) == int(s)  # every sum exact
            if int(y) == answer:
                assert not rejected and int(c1) == int(c2) == target
            else:
                assert int(rejected) == target and not c1
        tries.append(len(tried))
    assert statistics.mean(tries) == pytest.approx(2.5, abs=0.15)  # the answer equally likely at each position


def test_shares_mixing_and_measures(rows):
    share = {s: statistics.mean(r["style"] == s for r in rows) for s in ("short", "worked", "checked")}
    assert share["short"] == pytest.approx(0.45, abs=0.03) and share["checked"] == pytest.approx(0.15, abs=0.02)
    assert statistics.mean(r["zh_prompt"] for r in rows) == pytest.approx(0.3, abs=0.03)
    assert not any(r["mixed"] for r in rows if r["style"] == "short" or not r["zh_prompt"])
    counter = ReflectiveWordCounter(DEFAULT_REFLECTIVE_WORDS)
    for r in rows:
        assert classify_style(r["completion"]) == r["style"]
        assert (target_language_fraction(extract_think(r["completion"]), "en") < 0.9) == r["mixed"]
        assert (sum(counter.count(r["completion"]).values()) > 0) == (r["style"] == "checked")


def test_hand_written_solutions():
    assert write_search_solution(45, [27, 17, 57, 37], 17, "short", False, random.Random(0)) == (
        "<think>17</think><answer>\\boxed{17}</answer>")
    assert write_search_solution(45, [27, 17, 57, 37], 17, "worked", True, random.Random(0)) == (
        "<think>45+17=62, 所以答案是 17</think><answer>\\boxed{17}</answer>")
    checked = write_search_solution(45, [27, 17, 57, 37], 17, "checked", False, random.Random(1))
    assert re.fullmatch(r"<think>(45\+[2-5]7=\d+, wait, not 62, then ){0,3}45\+17=62, check: 62=62, so the answer is 17"
                        r"</think><answer>\\boxed\{17\}</answer>", checked), checked
    with pytest.raises(ValueError, match="not among"):
        write_search_solution(45, [27, 57], 17, "checked", False, random.Random(0))
    with pytest.raises(ValueError, match="style"):
        write_search_solution(45, [17], 17, "long", False, random.Random(0))


def test_split_is_by_the_problem_in_either_wording():
    test_rows = generate("search_styles", n=200, split="test", seed=1)
    assert all(split_of(r["split_key"]) == "test" for r in test_rows)
    assert any(r["zh_prompt"] for r in test_rows) and not all(r["zh_prompt"] for r in test_rows)
    train = generate("search_styles", n=3000, split="train", seed=1)
    assert {r["split_key"] for r in train}.isdisjoint(r["split_key"] for r in test_rows)


@pytest.mark.parametrize("kwargs", [{"p_short": 0.9, "p_checked": 0.2}, {"p_mixed": 1.5}, {"p_zh_prompt": -0.1},
                                    {"n_candidates": 1}, {"n_candidates": 10}])
def test_bad_options_raise(kwargs):
    with pytest.raises(ValueError, match="probabilities|n_candidates"):
        search_problem(random.Random(0), **kwargs)
