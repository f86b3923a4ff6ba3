"""cons@k: group equivalent final answers and take the majority vote (DeepSeek-R1 reports
cons@64 next to pass@1: the answer most of 64 samples agree on, judged right or wrong).

A vote is over *answers*, not strings: ``1/2``, ``0.5`` and ``\\frac{1}{2}`` are one answer.

1. :func:`~r1lightning.rewards.accuracy.normalize_answer` on each answer (the exact-match
   reward's normalisation); plain numbers are keyed by their exact value
   (``0.5 == 1/2 == \\frac12``), everything else by the normalised string. Free, in-process,
   and all a question whose sampled answers are all numbers (GSM8K, AIME) ever needs.
2. math-verify between the distinct representatives, when at least one is not a plain number
   (``2\\sqrt2`` and ``\\sqrt8``; ``(3, \\pi/2)`` and ``\\left(3, \\frac{\\pi}{2}\\right)``;
   ``2^{10}`` and ``1024``): one pool task per question, greedy leader clustering (each answer
   is compared with the first answer of every group so far, in order of appearance, that one
   taking the gold's side of ``verify``), each answer parsed once. Two plain numbers are never
   sent (step 1 decided them), nor two constants of clearly different value.

Unlike :func:`~r1lightning.rewards.accuracy.accuracy_reward`, which refuses an expression for
a numeric gold (a reward hack, see its docstring), grouping merges ``2^{10}`` with ``1024``: the
vote is about values. A group is right when any member was scored right (:func:`majority_answer`).

Time is bounded as in the rewards: the task runs in the math-verify process pool under
``timeout_s`` (wall clock; every math-verify call inside is bounded to 1 s by math-verify's own
alarm and the worker stops merging 3.5 s before the limit, returning what it has); a task that
times out or fails leaves its question grouped by step 1 only. Never raises on model output.
"""

from __future__ import annotations

import cmath
import time
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from r1lightning.rewards.accuracy import (
    DEFAULT_BATCH_TIMEOUT_S,
    DEFAULT_MAX_ANSWER_CHARS,
    _check_options,
    _mv_parse_gold,
    _run_checks,
    normalize_answer,
    parse_number,
)
from r1lightning.rewards.parsing import as_text, extract_final_answer, strip_blank

__all__ = [
    "DEFAULT_GROUP_TIMEOUT_S",
    "extract_final_answer",
    "group_equivalent",
    "group_equivalent_batch",
    "majority_answer",
    "majority_answers",
]

#: Wall-clock limit for grouping one question's answers, seconds.
DEFAULT_GROUP_TIMEOUT_S = 10.0
_GROUP_INNER_TIMEOUT = 1  # seconds, per math-verify parse / verify call


def _vote_key(answer: object) -> tuple[str, Fraction | str] | None:
    """("num", exact value) for a plain number, ("str", normalised text) otherwise; None for no
    answer (``None``, empty, or blank after normalisation)."""
    if answer is None:
        return None
    text = strip_blank(as_text(answer))
    if not text:
        return None
    norm = normalize_answer(text)
    if not norm:
        return None
    value = parse_number(norm)
    return ("num", value) if value is not None else ("str", norm)


def _numeric_value(parsed: list, inner_timeout: int) -> complex | None:
    """The value of a parsed answer that is a plain constant (``2\\sqrt{2}``, ``\\pi/3``), else
    None (symbols, tuples, sets, intervals, matrices, anything that fails or takes too long)."""
    import sympy
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout

    expr = parsed[0] if parsed else None
    if not isinstance(expr, sympy.Expr) or not expr.is_number:
        return None
    try:
        value = timeout(timeout_seconds=inner_timeout)(lambda: complex(expr.evalf(20)))()
    except (Exception, TimeoutException):  # time, TypeError (not a number after all), overflow
        return None
    return value if cmath.isfinite(value) else None


def _clearly_different(a: complex | None, b: complex | None) -> bool:
    # Far beyond math-verify's own float tolerance (it rounds to 6 decimals): verify could never
    # call these equal, so the call is skipped. Anything closer, or not a constant, is verified.
    return a is not None and b is not None and abs(a - b) > 1e-4 * max(1.0, abs(a), abs(b))


def _mv_cluster(
    reps: list[str], numeric: list[bool], inner_timeout: int, budget_s: float
) -> list[int]:
    """Greedy leader clustering of ``reps`` with math-verify; runs in a pool worker.

    Returns, for each rep, the index of the rep that leads its group (itself when it starts
    one). A rep math-verify cannot parse stays alone. Two plain numbers (``numeric``) are never
    verified (different values, decided exactly before), nor two constants whose values clearly
    differ (most pairs among a question's distinct answers; a verify costs ~15 ms).
    Once ``budget_s`` seconds have passed the remaining reps stay alone too, so the task ends
    at most about ``3 * inner_timeout`` after the budget (every parse / verify is bounded by
    math-verify's own alarm).
    """
    from math_verify import verify
    from math_verify.errors import TimeoutException

    start = time.monotonic()
    out = list(range(len(reps)))
    leaders: list[tuple[int, list, complex | None]] = []  # (rep index, parsed, value)
    for j, rep in enumerate(reps):
        if time.monotonic() - start > budget_s:
            break
        try:
            parsed = _mv_parse_gold(rep, inner_timeout)  # cached: answers recur across calls
        except (Exception, TimeoutException):
            parsed = []
        if not parsed:
            continue
        value = _numeric_value(parsed, inner_timeout)
        for leader, leader_parsed, leader_value in leaders:
            if (numeric[leader] and numeric[j]) or _clearly_different(leader_value, value):
                continue
            if time.monotonic() - start > budget_s:
                break
            try:
                same = verify(leader_parsed, parsed, timeout_seconds=inner_timeout)
            except (Exception, TimeoutException):
                same = False
            if same:
                out[j] = leader
                break
        else:
            leaders.append((j, parsed, value))
    return out


def group_equivalent_batch(
    batch: Sequence[Sequence[str | None]],
    timeout_s: float = DEFAULT_GROUP_TIMEOUT_S,
    workers: int | None = None,
    mp_context: str = "spawn",
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
    batch_timeout_s: float | None = DEFAULT_BATCH_TIMEOUT_S,
) -> list[list[int | None]]:
    """:func:`group_equivalent` for many questions at once (their math-verify tasks share the
    pool's workers). ``timeout_s`` bounds each question, ``batch_timeout_s`` the whole call."""
    _check_options(timeout_s, workers, mp_context, False, max_answer_chars, batch_timeout_s)
    keys_per_q: list[list[tuple | None]] = []
    tasks: list[tuple[int, list[tuple]]] = []  # (question, its representatives' keys)
    args: list[tuple] = []
    for answers in batch:
        keys = [_vote_key(a) for a in answers]
        keys_per_q.append(keys)
        first_text: dict[tuple, str] = {}
        for key, answer in zip(keys, answers):
            if key is not None and key not in first_text:
                text = strip_blank(as_text(answer))
                if len(text) <= max_answer_chars:
                    first_text[key] = text
        if len(first_text) >= 2 and any(kind == "str" for kind, _ in first_text):
            rep_keys = list(first_text)
            tasks.append((len(keys_per_q) - 1, rep_keys))
            # One second per parse / verify (math-verify's alarm takes whole seconds; a real
            # answer takes milliseconds). A bare answer is parsed up to twice
            # (``_parse_candidates``) and then verified, so the worker stops merging 3 s and a
            # margin before the hard limit.
            args.append(
                (
                    list(first_text.values()),
                    [kind == "num" for kind, _ in rep_keys],
                    _GROUP_INNER_TIMEOUT,
                    max(0.0, timeout_s - 3 * _GROUP_INNER_TIMEOUT - 0.5),
                )
            )
    merged = _run_checks(
        _mv_cluster,
        args,
        timeout_s=timeout_s,
        workers=workers,
        mp_context=mp_context,
        default=None,
        batch_timeout_s=batch_timeout_s,
    )
    canonical: list[dict[tuple, tuple]] = [{} for _ in batch]
    for (q, rep_keys), leaders in zip(tasks, merged):
        if leaders is None:  # timed out or failed: this question keeps its exact grouping
            continue
        for key, leader in zip(rep_keys, leaders):
            canonical[q][key] = rep_keys[leader]
    out = []
    for keys, canon in zip(keys_per_q, canonical):
        ids: dict[tuple, int] = {}
        row: list[int | None] = []
        for key in keys:
            if key is None:
                row.append(None)
                continue
            key = canon.get(key, key)
            row.append(ids.setdefault(key, len(ids)))
        out.append(row)
    return out


def group_equivalent(
    answers: Sequence[str | None],
    timeout_s: float = DEFAULT_GROUP_TIMEOUT_S,
    workers: int | None = None,
    mp_context: str = "spawn",
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
) -> list[int | None]:
    """A group id per answer, equal ids for equivalent answers, ``None`` for no answer.

    Ids are numbered 0, 1, ... in order of first appearance. See the module docstring for what
    counts as equivalent and how the time is bounded. ``workers=0`` runs math-verify
    in-process (main thread only, as in the rewards).

    >>> group_equivalent(["1/2", "0.5", "\\\\frac{1}{2}", "3", None, "3"], workers=0)
    [0, 0, 0, 1, None, 1]
    """
    return group_equivalent_batch(
        [answers],
        timeout_s=timeout_s,
        workers=workers,
        mp_context=mp_context,
        max_answer_chars=max_answer_chars,
        batch_timeout_s=None,
    )[0]


def _majority(groups: Sequence[int | None], correct: Sequence[object]) -> tuple[int | None, bool]:
    votes = Counter(g for g in groups if g is not None)
    if not votes:
        return None, False
    top = max(votes.values())
    # Ids count up in order of first appearance, so the smallest top id is the first-seen tie.
    winner = min(g for g, n in votes.items() if n == top)
    members = [i for i, g in enumerate(groups) if g == winner]
    return members[0], any(bool(correct[i]) for i in members)


def majority_answer(
    answers: Sequence[str | None],
    correct: Sequence[object],
    timeout_s: float = DEFAULT_GROUP_TIMEOUT_S,
    workers: int | None = None,
    groups: Sequence[int | None] | None = None,
) -> tuple[int | None, bool]:
    """cons@k for one question: ``(index of the winning answer's first sample, is it right)``.

    The winner is the largest group of equivalent answers (:func:`group_equivalent`; pass
    ``groups`` to reuse ids already computed); ties go to the group seen first. ``None`` answers
    do not vote; no answer at all gives ``(None, False)``. The group is right when any of its
    members was scored right: members are equivalent answers, so one scored wrong lost its point
    to something other than its value (an ``<answer>`` tag missing, a check that ran out of
    time).

    >>> majority_answer(["1/2", "0.5", "\\\\frac{1}{2}", "3", "3"], [1, 1, 1, 0, 0], workers=0)
    (0, True)
    """
    if len(correct) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    if groups is None:
        groups = group_equivalent(answers, timeout_s=timeout_s, workers=workers)
    elif len(groups) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(groups)} group ids")
    return _majority(groups, correct)


def majority_answers(
    batch: Sequence[Sequence[str | None]],
    correct: Sequence[Sequence[object]],
    timeout_s: float = DEFAULT_GROUP_TIMEOUT_S,
    workers: int | None = None,
    batch_timeout_s: float | None = DEFAULT_BATCH_TIMEOUT_S,
) -> list[tuple[int | None, bool]]:
    """:func:`majority_answer` for many questions, grouped in one pool call."""
    if len(correct) != len(batch):
        raise ValueError(f"{len(batch)} questions but {len(correct)} rows of correctness flags")
    groups = group_equivalent_batch(
        batch, timeout_s=timeout_s, workers=workers, batch_timeout_s=batch_timeout_s
    )
    return [majority_answer(a, c, groups=g) for a, c, g in zip(batch, correct, groups)]
