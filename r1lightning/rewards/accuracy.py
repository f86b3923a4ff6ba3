"""Accuracy rewards: is the final answer right? (DeepSeek-R1 §2.2, R1-Zero's rule-based reward.)

R1-Zero is trained on a rule-based reward of two parts, *accuracy* and *format* (§2.2). For
math, "the model is required to provide the final answer in a specified format (e.g., within a
box), enabling reliable rule-based verification of correctness". Here the answer is the content
of the last ``<answer>...</answer>`` block, and the ``\\boxed{}`` inside it when there is one (else
a GSM8K-style ``#### n`` line in it). The answer-length guard (``max_answer_chars``) bounds that
extracted answer, not the block around it.

Three rewards, all ``fn(completions, answer, **kwargs) -> list[float]`` scoring 1.0 or 0.0:

* :func:`exact_match_reward` -- normalised string / exact rational comparison. For synthetic
  tasks with a unique canonical answer (arithmetic, countdown) and as the cheap first check.
* :func:`math_verify_reward` -- symbolic equivalence with HuggingFace ``math-verify``
  (``\\frac{1}{2}`` == ``0.5``, ``2\\sqrt{2}`` == ``\\sqrt{8}``, intervals, sets, matrices).
* :func:`accuracy_reward` -- exact match, then math-verify only when the gold answer is not a
  plain number (see its docstring for why).

Departures from the paper / peers, on purpose:

* No ``<answer>`` block -> 0.0 (``require_answer_tag=True``). Scanning the whole completion for
  "the last number" rewards outputs the format reward is meant to reject, and lets a policy
  list candidates in its reasoning. Set ``require_answer_tag=False`` to fall back to the text
  after ``</think>``.
* math-verify bounds its work with ``signal.alarm``, which only works in the main thread of the
  main interpreter (it raises ``ValueError`` elsewhere, e.g. in a Lightning / dataloader thread),
  takes whole seconds only, and cannot interrupt long C-level work (big-integer arithmetic in
  sympy). So checks run in a module-level, lazily created ``ProcessPoolExecutor`` (spawn
  context, safe next to torch's threads) whose workers are the main thread of their own process.
  The parent enforces a wall-clock ``timeout_s`` per item; an item over time scores 0.0 and the
  pool is killed and respawned (the other items in flight are re-run, not penalised). All the
  items of one call share ``batch_timeout_s`` (and the caller's deadline under WeightedReward,
  :mod:`r1lightning.rewards.budget`): items not checked in time score 0.0 and are reported as
  timeouts. A crashed worker, a timeout, or an unparsable answer all give 0.0, never an
  exception. Workers die with their trainer, even on SIGKILL (:func:`_die_with_parent`).
  ``workers=0`` checks in-process when called from the main thread (no pool; only math-verify's
  own alarms bound the time, and they cancel any other ``SIGALRM`` timer in the process, e.g.
  pytest-timeout's signal method).

Processes started with "spawn" re-import the main module: scripts calling these rewards at top
level need the usual ``if __name__ == "__main__":`` guard (``python -m r1lightning`` has one).
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from fractions import Fraction
from typing import Any

from r1lightning.rewards import budget
from r1lightning.rewards.errors import RewardConfigError
from r1lightning.rewards.parsing import (
    answer_in_block,
    as_text,
    extract_answer,
    extract_boxed,
    strip_blank,
)

__all__ = [
    "accuracy_reward",
    "exact_match_reward",
    "math_verify_reward",
    "normalize_answer",
    "parse_number",
    "shutdown_pool",
    "warmup_pool",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
#: Wall-clock budget for all math-verify checks of one call (one batch), seconds. A batch of
#: hostile answers (power towers, huge factorials) otherwise costs ~timeout per item.
DEFAULT_BATCH_TIMEOUT_S = 60.0
#: Final answers longer than this are not sent to math-verify (0.0): no real final answer is that
#: long, and sympy on a 100k-character "expression" is how a check hangs. It bounds the extracted
#: answer (the ``\boxed{}`` content when there is one), not the ``<answer>`` block around it, so a
#: long worked solution that ends in a short boxed answer is still checked.
DEFAULT_MAX_ANSWER_CHARS = 1000
#: Pool restarts allowed within one call before the rest of the batch scores 0.0 (a batch of
#: answers that all hang should cost seconds, not a restart per item).
_MAX_RESTARTS_PER_CALL = 4
_STARTUP_TIMEOUT_S = 120.0


# --------------------------------------------------------------------------- shared helpers


def _check_answer_column(answer: object, n: int, reward: str) -> Sequence[object]:
    if answer is None:
        raise RewardConfigError(
            f"reward {reward!r} needs the dataset column 'answer' (the gold answers), "
            "but it was not passed"
        )
    if isinstance(answer, (str, bytes)) or not isinstance(answer, Sequence):
        raise RewardConfigError(
            f"reward {reward!r}: column 'answer' must be a per-sample list, "
            f"got {type(answer).__name__}"
        )
    if len(answer) != n:
        raise RewardConfigError(
            f"reward {reward!r}: column 'answer' has {len(answer)} entries for {n} completions"
        )
    return answer


def _final_answer(completion: object, require_answer_tag: bool) -> str | None:
    """The answer to grade, ``None`` if there is none.

    From the last ``<answer>`` block (or, with ``require_answer_tag=False`` and no block, the
    text after ``</think>``): its last ``\\boxed{}`` content, else its ``#### n`` line
    (GSM8K's marker), else the whole block (:func:`answer_in_block`).
    """
    text = as_text(completion)
    block = extract_answer(text)
    if block is None and not require_answer_tag:
        block = strip_blank(text.rsplit("</think>", 1)[-1])
    return answer_in_block(block) if block else None


def _gold_text(gold: object) -> str | None:
    if gold is None:
        return None
    text = gold if isinstance(gold, str) else str(gold)
    return strip_blank(text) or None


# --------------------------------------------------------------------------- exact match

# A row break (two backslashes, in matrices) is matched first and kept, so the backslash-space
# after it is not read as the spacing command: "1 <row break> 2" with and without spaces
# normalise alike. "{}" is an empty group (MATH's "\\frac{9}{{}19}"), meaningless in math mode.
_LATEX_SPACING_RE = re.compile(
    r"(\\\\)|\\[,!;: ]|~|(?<!\\)\{\}"
    r"|\\(?:quad|qquad|left|right|displaystyle|[bB]igg?[lr]?)(?![A-Za-z])"
)
_CURRENCY_RE = re.compile(r"\\\$")
_DECORATION_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree(?![A-Za-z])|°|\\?%")
_DELIMITERS_RE = re.compile(r"\$|\\[()\[\]]|\s+")
_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\{([^{}]*)\}")
# A unit after the value: "5\text{ cm}", "864\mbox{ inches}^2" (MATH writes units this way).
_TEXT_UNIT_RE = re.compile(r"\\(?:text|textrm|mathrm|mbox)\{[^{}]*\}(?:\^\{?[23]\}?)?$")
# The same written bare after a plain number ("5 cm", "18 dollars"). A closed list: a bare
# letter after a number is a product ("2 pi", "3i"), never dropped.
_BARE_UNIT_RE = re.compile(
    r"([+-]?[\d.,/]+)(?:square|sq|cubic)?(?:cm|mm|km|meters?|metres?|inch(?:es)?|in|feet|foot|ft"
    r"|yards?|yd|miles?|mph|units?|degrees?|cents?|dollars?|hours?|hrs?|minutes?|mins?"
    r"|seconds?|secs?|days?|weeks?|months?|years?|grams?|kg|pounds?|lbs?|liters?|litres?|ml"
    r"|percent)(?:\^\{?[23]\}?|[²³])?"
)
_ASSIGNMENT_RE = re.compile(r"[A-Za-z]=(?!=)")
_MEMBERSHIP_RE = re.compile(r"[A-Za-z]\\in(?=[\[(])")  # "x\in[-2,7]" -> "[-2,7]"
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FRAC_SHORTHAND_RE = re.compile(r"\\frac(\d|\{[^{}]*\})(\d|\{[^{}]*\})")  # \frac43, \frac{270}7
_SQRT_SHORTHAND_RE = re.compile(r"\\sqrt(\d)")  # \sqrt2 -> \sqrt{2}
_BASE_SUBSCRIPT_RE = re.compile(r"(\d+)_\{(\d+)\}")  # 4210_{5} -> 4210_5
_CHOICE_RE = re.compile(r"\(([A-Z])\)")  # "(C)" -> "C"
_DECIMAL_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,4})?")
_SLASH_FRACTION_RE = re.compile(r"([+-]?\d+)/([+-]?\d+)")
_TEX_FRACTION_RE = re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}")
_MIXED_NUMBER_RE = re.compile(r"([+-]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}")  # 1\frac{4}{5} = 9/5
_MAX_NUMBER_CHARS = 100  # longer "numbers" are compared as strings (no giant Fractions)


def _frac_braces(match: re.Match) -> str:
    return "\\frac{%s}{%s}" % (match[1].strip("{}"), match[2].strip("{}"))


def normalize_answer(text: str) -> str:
    """Canonical form used by :func:`exact_match_reward` (the MATH benchmark's ``strip_string``
    normalisation, Hendrycks et al. 2021, plus what real MATH-500 / GSM8K answers need).

    Takes the last ``\\boxed{}`` content if there is one, then:

    * removes whitespace, ``$``, ``\\(``/``\\)``/``\\[``/``\\]``, LaTeX spacing and sizing
      (``\\,`` ``\\!`` ``\\;`` ``\\ `` ``~`` ``\\quad`` ``\\left`` ``\\right`` ``\\bigl``
      ``\\displaystyle``), a trailing period; the Unicode minus becomes ``-``;
    * drops decorations the question already fixes: currency (``\\$18.90`` -> ``18.90``),
      degrees (``30^\\circ``, ``\\degree``, ``°``), the percent sign (``50\\%`` -> ``50``, so
      ``50\\%`` equals ``50``, not ``0.5``), and a unit after the value, as ``\\text{}`` /
      ``\\mbox{}`` (``5\\text{ cm}``, ``864\\mbox{ inches}^2``) or as a known unit word after a
      plain number (``5 cm``, ``18 dollars``);
    * unwraps a ``\\text{}``-style wrapper around the whole answer and a multiple-choice letter
      in parentheses (``\\text{(C)}`` -> ``C``), a leading one-letter assignment or membership
      (``x=3`` -> ``3``, ``x\\in[-2,7]`` -> ``[-2,7]``);
    * thousands separators (``1,234`` and ``1{,}234`` -> ``1234``; ``1,2`` is left alone, a
      pair); ``\\dfrac``/``\\tfrac`` -> ``\\frac``, brace-less ``\\frac43`` -> ``\\frac{4}{3}``,
      ``\\sqrt2`` -> ``\\sqrt{2}``, ``52_{8}`` -> ``52_8``.
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        text = boxed
    text = text.replace("\u2212", "-")
    text = _LATEX_SPACING_RE.sub(r"\1", text)
    text = _CURRENCY_RE.sub("", text)
    text = _DECORATION_RE.sub("", text)
    text = _DELIMITERS_RE.sub("", text).rstrip(".")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    wrapped = _TEXT_WRAPPER_RE.fullmatch(text)
    if wrapped:
        text = wrapped.group(1)
    else:
        unit = _TEXT_UNIT_RE.search(text)
        if unit and unit.start() > 0:
            text = text[: unit.start()]
        bare = _BARE_UNIT_RE.fullmatch(text)
        if bare:
            text = bare.group(1)
    if _CHOICE_RE.fullmatch(text):
        text = text[1]
    if _ASSIGNMENT_RE.match(text):
        text = text[2:]
    else:
        member = _MEMBERSHIP_RE.match(text)
        if member:
            text = text[member.end() :]
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    if "\\frac" in text:
        text = _FRAC_SHORTHAND_RE.sub(_frac_braces, text)
    if "\\sqrt" in text:
        text = _SQRT_SHORTHAND_RE.sub(r"\\sqrt{\1}", text)
    if "_{" in text:
        text = _BASE_SUBSCRIPT_RE.sub(r"\1_\2", text)
    return text


def parse_number(text: str) -> Fraction | None:
    """Exact value of a plain number (integer, decimal, ``1e3``, ``a/b``, ``\\frac{a}{b}``, a mixed
    number ``1\\frac{4}{5}``) or None.

    Runs on :func:`normalize_answer` output. Exact rationals, so ``0.5 == 1/2`` and
    ``0.333 != 1/3``; exponents are limited to 4 digits so ``1e999999999`` cannot hang. An
    integer written right before a proper fraction is a mixed number, as in MATH's answers
    (``137\\frac{1}{2}`` = 137.5; math-verify reads it the same way).
    """
    if not text or len(text) > _MAX_NUMBER_CHARS:
        return None
    try:
        if _DECIMAL_RE.fullmatch(text):
            return Fraction(text)
        match = _SLASH_FRACTION_RE.fullmatch(text)
        if match:
            return Fraction(int(match[1]), int(match[2]))
        match = _TEX_FRACTION_RE.fullmatch(text)
        if match:
            value = Fraction(int(match[2]), int(match[3]))
            return -value if match[1] == "-" else value
        match = _MIXED_NUMBER_RE.fullmatch(text)
        if match and int(match[3]) < int(match[4]):
            value = int(match[2]) + Fraction(int(match[3]), int(match[4]))
            return -value if match[1] == "-" else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _exact_match(gold: str, pred: str) -> bool:
    gold_n, pred_n = normalize_answer(gold), normalize_answer(pred)
    if not pred_n:
        return False
    gold_v, pred_v = parse_number(gold_n), parse_number(pred_n)
    if gold_v is not None and pred_v is not None:
        return gold_v == pred_v
    return gold_n == pred_n


def exact_match_reward(
    completions: Sequence[str],
    answer: Sequence[object] | None = None,
    require_answer_tag: bool = True,
    **kwargs: object,
) -> list[float]:
    """1.0 when the final answer equals the gold answer after normalisation, else 0.0.

    The final answer is taken from the last ``<answer>`` block: its last ``\\boxed{}`` content,
    else its ``#### n`` line (GSM8K), else the whole block (R1 §2.2). Both sides go through
    :func:`normalize_answer`; when both parse as plain numbers (:func:`parse_number`) they are
    compared as exact rationals (``85`` == ``85.0`` == ``170/2``), otherwise as strings
    (case-sensitive).

    Args:
        completions: model outputs.
        answer: dataset column, one gold answer per completion (``str`` or number; ``None``
            scores 0.0).
        require_answer_tag: without an ``<answer>`` block score 0.0 (default); if False, grade
            the text after ``</think>`` instead.
        **kwargs: other dataset columns, ignored.
    """
    if not isinstance(require_answer_tag, bool):
        raise RewardConfigError(
            f"require_answer_tag must be true or false, got {require_answer_tag!r}"
        )
    golds = _check_answer_column(answer, len(completions), "exact_match")
    scores = []
    for completion, gold in zip(completions, golds):
        pred, gold_s = _final_answer(completion, require_answer_tag), _gold_text(gold)
        scores.append(
            1.0 if pred is not None and gold_s is not None and _exact_match(gold_s, pred) else 0.0
        )
    return scores


# --------------------------------------------------------------------------- math-verify: worker

# A ``$`` that is not ``\$`` (an escaped dollar is currency, not a math delimiter).
_DELIMITED_RE = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox")
# Thin spaces inside a number ("1\,000", "32,\!348"): math-verify reads "1\,000" as nothing.
_DIGIT_SPACING_RE = re.compile(r"(?<=[\d,])\\[,!]\s*(?=\d)|(?<=\d)\{,\}(?=\d)")


def _mv_clean(text: str) -> str:
    """What math-verify misreads in real MATH answers: ``\\$`` (currency: ``\\$18.90`` parses to
    nothing) and spacing inside numbers. Both only ever change how a number is written."""
    if "\\$" in text:
        text = _CURRENCY_RE.sub("", text)
    if "\\" in text or "{," in text:
        text = _DIGIT_SPACING_RE.sub(lambda m: "," if m.group() == "{,}" else "", text)
    return text


def _parse_candidates(text: str) -> list[str]:
    """Strings to hand to ``math_verify.parse``, best first.

    math-verify only reads LaTeX inside delimiters: bare ``\\sqrt{8}`` parses to nothing and bare
    ``2\\sqrt{2}`` silently to ``2``. So a boxed answer is wrapped as ``$...$``, text with
    delimiters is passed as is, and bare text is tried wrapped first, then raw.
    """
    text = _mv_clean(text)
    boxed = extract_boxed(text)
    if boxed is not None:
        return [f"${boxed}$"]
    if _DELIMITED_RE.search(text):
        return [text]
    return [f"${text}$", text]


def _mv_parse(text: str, inner_timeout: int) -> list:
    from math_verify import parse

    for candidate in _parse_candidates(text):
        parsed = parse(candidate, parsing_timeout=inner_timeout)
        if parsed:
            return parsed
    return []


@functools.lru_cache(maxsize=4096)
def _mv_parse_gold(gold: str, inner_timeout: int) -> list:
    # A group's G completions share one gold answer: parse it once per worker. Vote grouping
    # (voting.py) parses its answers through here too: a question's answers recur across calls.
    return _mv_parse(gold, inner_timeout)


def _mv_check(gold: str, pred: str, inner_timeout: int) -> float:
    """One math-verify comparison; 0.0 on anything unexpected. Runs in a pool worker."""
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        gold_parsed = _mv_parse_gold(gold, inner_timeout)
        if not gold_parsed:
            return 0.0
        pred_parsed = _mv_parse(pred, inner_timeout)
        if not pred_parsed:
            return 0.0
        return 1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=inner_timeout) else 0.0
    except (Exception, TimeoutException):
        return 0.0


def _inner_timeout(timeout_s: float) -> int:
    # signal.alarm takes whole seconds (a float raises TypeError deep in math-verify). A third of
    # the wall-clock budget per parse / verify leaves room for the three steps of one item.
    return max(1, int(timeout_s // 3))


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCHDOG_PERIOD_S = 1.0


def _die_with_parent(parent_pid: int) -> None:
    """End this worker when the trainer that started it dies, even by SIGKILL.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` -- the kernel kills the worker the moment its
    parent goes, even while the worker is stuck in C code holding the GIL (a sympy big-integer
    computation). The "parent" there is the parent *thread* that started the process (prctl(2)),
    which is why the pool is always started from one long-lived thread (:func:`_spawner`), never
    from whichever short-lived thread happens to call a reward. Everywhere (and as a second line
    on Linux): a daemon thread that exits the worker once ``os.getppid()`` changes (the orphan
    was re-parented); it needs the GIL, so it cannot stop a worker that never releases it.
    """
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except Exception:  # no libc / prctl (exotic platforms): the watchdog still runs
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watchdog() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_WATCHDOG_PERIOD_S)
        os._exit(1)

    threading.Thread(target=watchdog, name="r1lightning-parent-watchdog", daemon=True).start()


def _worker_init(barrier: Any, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    # Timeouts are expected here; math-verify logs each one with the whole expression.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (pay the sympy import before the first timed item)

    barrier.wait(timeout=_STARTUP_TIMEOUT_S)


def _worker_ready() -> int:
    return os.getpid()


# --------------------------------------------------------------------------- the process pool

_POOL_LOCK = threading.RLock()
_pool: ProcessPoolExecutor | None = None
_pool_key: tuple[int, str] | None = None
_warned_thread_fallback = False
_spawner_executor: ThreadPoolExecutor | None = None


def _spawner() -> ThreadPoolExecutor:
    """One long-lived thread that starts every pool (see :func:`_die_with_parent`).

    ProcessPoolExecutor (spawn) starts its workers from the thread that calls ``submit``; the
    warm-up submits in :func:`_create_pool` start all of them, so they all run here.
    """
    global _spawner_executor
    if _spawner_executor is None:
        _spawner_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="r1l-mv-spawner")
    return _spawner_executor


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _default_workers() -> int:
    return max(1, min(4, _cpu_count()))


def _kill_executor(pool: ProcessPoolExecutor) -> None:
    """Kill the workers outright (a hung one would never read a shutdown sentinel)."""
    processes = list(getattr(pool, "_processes", {}).values())
    kill_workers = getattr(pool, "kill_workers", None)  # Python >= 3.14
    if kill_workers is not None:
        kill_workers()
    for process in processes:
        if process.is_alive():
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)


def _kill_pool() -> None:
    global _pool, _pool_key
    pool, _pool, _pool_key = _pool, None, None
    if pool is not None:
        _kill_executor(pool)


def shutdown_pool() -> None:
    """Stop the math-verify worker processes (they are restarted lazily on the next call)."""
    with _POOL_LOCK:
        _kill_pool()


def _create_pool(workers: int, mp_context: str, startup_timeout_s: float) -> ProcessPoolExecutor:
    """Start a pool and wait until every worker is ready. Runs on the :func:`_spawner` thread."""
    ctx = multiprocessing.get_context(mp_context)
    # The barrier holds every worker until all have imported math-verify, so once a warm-up
    # task returns, no item's clock will include a worker's start-up.
    barrier = ctx.Barrier(workers)
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(barrier, os.getpid()),
    )
    try:
        warm = [pool.submit(_worker_ready) for _ in range(workers)]
        end = time.monotonic() + startup_timeout_s
        for future in warm:
            future.result(timeout=max(0.0, end - time.monotonic()))
    except BaseException:
        _kill_executor(pool)
        raise
    return pool


def _get_pool(
    workers: int, mp_context: str, startup_timeout_s: float = _STARTUP_TIMEOUT_S
) -> ProcessPoolExecutor:
    global _pool, _pool_key
    if _pool is not None and _pool_key != (workers, mp_context):
        _kill_pool()
    if _pool is None:
        # .result() without a timeout: _create_pool bounds its own wait, and killing the pool
        # on failure is its job (it runs on the spawner thread, which must not take _POOL_LOCK).
        _pool = _spawner().submit(_create_pool, workers, mp_context, startup_timeout_s).result()
        _pool_key = (workers, mp_context)
    return _pool


def warmup_pool(workers: int | None = None, mp_context: str = "spawn") -> None:
    """Start the worker pool now (imports take a few seconds) instead of on the first batch."""
    with _POOL_LOCK:
        _get_pool(_default_workers() if workers is None else workers, mp_context)


def _pool_pids() -> list[int]:
    """Pids of the running pool's workers (for tests and diagnostics)."""
    with _POOL_LOCK:
        return sorted(getattr(_pool, "_processes", {}) or {})


def _run_in_pool(
    fn: Callable[..., Any],
    arg_tuples: Sequence[tuple],
    *,
    timeout_s: float,
    workers: int,
    mp_context: str = "spawn",
    default: Any = 0.0,
    batch_timeout_s: float | None = None,
) -> list[Any]:
    """``[fn(*args) for args in arg_tuples]`` in the pool; an item that fails, runs longer than
    ``timeout_s`` seconds (wall clock, measured from dispatch), or is not done when the batch
    budget runs out gives ``default``.

    The batch budget ends at the sooner of ``batch_timeout_s`` after the pool is up (a cold
    start is bounded by its own start-up timeout, not the budget: :func:`warmup_pool` moves it
    out of the first batch) and the caller's :func:`budget.deadline`. Items scored ``default``
    for time are reported with :func:`budget.report_timeouts`. At most ``workers`` items are in
    flight, one per worker, so dispatch time is start time.
    """
    results: list[Any] = [default] * len(arg_tuples)
    pending = deque(range(len(arg_tuples)))
    restarts = 0
    timed_out = 0
    end: float | None = None
    with _POOL_LOCK:
        while pending:
            if restarts > _MAX_RESTARTS_PER_CALL:
                log.warning(
                    "math-verify pool restarted %d times in one call; scoring the %d remaining "
                    "items 0.0",
                    restarts - 1,
                    len(pending),
                )
                timed_out += len(pending)
                break
            inflight: dict[Future, tuple[int, float]] = {}
            try:
                if end is None:
                    pool = _get_pool(workers, mp_context)
                    ends = [budget.deadline()]
                    if batch_timeout_s is not None:
                        ends.append(time.monotonic() + batch_timeout_s)
                    end = min((e for e in ends if e is not None), default=math.inf)
                else:  # a restart within the call is paid from the budget
                    left = end - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("no batch budget left to restart the pool")
                    pool = _get_pool(workers, mp_context, min(_STARTUP_TIMEOUT_S, left))
            except Exception as exc:  # could not start: the next call tries again
                log.warning(
                    "could not start the math-verify pool (%s: %s); scoring %d item(s) 0.0",
                    type(exc).__name__,
                    exc,
                    len(pending),
                )
                if end is not None:
                    timed_out += len(pending)
                break
            try:
                while pending or inflight:
                    if time.monotonic() >= end:
                        n_left = len(pending) + len(inflight)
                        log.warning(
                            "math-verify batch budget spent; scoring %d unchecked item(s) 0.0",
                            n_left,
                        )
                        timed_out += n_left
                        pending.clear()
                        if inflight:  # their workers are busy, maybe for ever: start afresh
                            inflight.clear()
                            _kill_pool()
                        break
                    while pending and len(inflight) < workers:
                        i = pending.popleft()
                        inflight[pool.submit(fn, *arg_tuples[i])] = (i, time.monotonic())
                    first_deadline = min(t0 for _, t0 in inflight.values()) + timeout_s
                    done, _ = wait(
                        list(inflight),
                        timeout=max(0.0, min(first_deadline, end) - time.monotonic()),
                        return_when=FIRST_COMPLETED,
                    )
                    for future in done:
                        i, _ = inflight.pop(future)
                        exc = future.exception()
                        if isinstance(exc, BrokenProcessPool):
                            raise exc  # the whole pool is gone: handled below
                        results[i] = default if exc is not None else future.result()
                    now = time.monotonic()
                    expired = [f for f, (_, t0) in inflight.items() if now - t0 >= timeout_s]
                    if expired:
                        for future in expired:
                            inflight.pop(future)  # results[i] stays `default`
                        timed_out += len(expired)
                        # Innocent items in flight are re-run on the fresh pool.
                        pending.extendleft(i for i, _ in inflight.values())
                        inflight.clear()
                        log.warning(
                            "math-verify check exceeded %.1fs (%d item(s)); restarting its pool",
                            timeout_s,
                            len(expired),
                        )
                        _kill_pool()
                        restarts += 1
                        break
            except Exception as exc:  # a worker died (segfault, OOM kill)
                log.warning(
                    "math-verify pool failed (%s: %s); its items in flight score 0.0",
                    type(exc).__name__,
                    exc,
                )
                _kill_pool()
                restarts += 1
    budget.report_timeouts(timed_out)
    return results


def _check_options(
    timeout_s: object,
    workers: object,
    mp_context: object,
    require_answer_tag: object,
    max_answer_chars: object,
    batch_timeout_s: object = None,
) -> None:
    """Raise configuration errors on the first call, whether or not math-verify is needed."""

    def is_int(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if not (isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool)) or not (
        timeout_s > 0
    ):
        raise RewardConfigError(
            f"timeout_s must be a positive number of seconds, got {timeout_s!r}"
        )
    if workers is not None and not (is_int(workers) and workers >= 0):
        raise RewardConfigError(
            f"workers must be None (auto), 0 (in-process) or a positive int, got {workers!r}"
        )
    if mp_context not in multiprocessing.get_all_start_methods():
        raise RewardConfigError(
            f"mp_context must be one of {multiprocessing.get_all_start_methods()}, "
            f"got {mp_context!r}"
        )
    if not isinstance(require_answer_tag, bool):
        raise RewardConfigError(
            f"require_answer_tag must be true or false, got {require_answer_tag!r}"
        )
    if not (is_int(max_answer_chars) and max_answer_chars > 0):
        raise RewardConfigError(
            f"max_answer_chars must be a positive int, got {max_answer_chars!r}"
        )
    if batch_timeout_s is not None and not (
        isinstance(batch_timeout_s, (int, float))
        and not isinstance(batch_timeout_s, bool)
        and batch_timeout_s > 0
    ):
        raise RewardConfigError(
            f"batch_timeout_s must be None or a positive number of seconds, got {batch_timeout_s!r}"
        )


def _run_checks(
    fn: Callable[..., Any],
    arg_tuples: Sequence[tuple],
    *,
    timeout_s: float,
    workers: int | None,
    mp_context: str,
    default: Any,
    batch_timeout_s: float | None = DEFAULT_BATCH_TIMEOUT_S,
) -> list[Any]:
    """``[fn(*args) for args in arg_tuples]`` for math-verify work: in the pool (see
    :func:`_run_in_pool`), or in-process for ``workers=0`` on the main thread. ``fn`` must bound
    its own math-verify calls with math-verify's alarms (``_inner_timeout``)."""
    global _warned_thread_fallback
    if not arg_tuples:
        return []
    if workers == 0:
        if threading.current_thread() is threading.main_thread():
            # In-process: math-verify's alarms bound each item; the budget is checked between
            # items (items after it get ``default`` and count as timeouts).
            ends = [budget.deadline()]
            if batch_timeout_s is not None:
                ends.append(time.monotonic() + batch_timeout_s)
            end = min((e for e in ends if e is not None), default=math.inf)
            out = [default] * len(arg_tuples)
            for k, args in enumerate(arg_tuples):
                if time.monotonic() >= end:
                    budget.report_timeouts(len(arg_tuples) - k)
                    break
                try:
                    out[k] = fn(*args)
                except Exception:  # the pool path gives `default` for a failed item too
                    pass
            return out
        if not _warned_thread_fallback:
            log.warning(
                "math_verify workers=0 needs the main thread (math-verify uses signal.alarm); "
                "called from thread %r, so using the process pool instead",
                threading.current_thread().name,
            )
            _warned_thread_fallback = True
        workers = None
    return _run_in_pool(
        fn,
        arg_tuples,
        timeout_s=timeout_s,
        workers=_default_workers() if workers is None else workers,
        mp_context=mp_context,
        default=default,
        batch_timeout_s=batch_timeout_s,
    )


def _check_pairs(
    pairs: Sequence[tuple[str, str]],
    *,
    timeout_s: float,
    workers: int | None,
    mp_context: str,
    batch_timeout_s: float | None = DEFAULT_BATCH_TIMEOUT_S,
) -> list[float]:
    """math-verify every ``(gold, pred)``: in the pool, or in-process for ``workers=0``."""
    inner = _inner_timeout(timeout_s)
    args = [(gold, pred, inner) for gold, pred in pairs]
    return [
        float(r)
        for r in _run_checks(
            _mv_check,
            args,
            timeout_s=timeout_s,
            workers=workers,
            mp_context=mp_context,
            default=0.0,
            batch_timeout_s=batch_timeout_s,
        )
    ]


# --------------------------------------------------------------------------- math-verify rewards


def math_verify_reward(
    completions: Sequence[str],
    answer: Sequence[object] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
    mp_context: str = "spawn",
    require_answer_tag: bool = True,
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
    batch_timeout_s: float | None = DEFAULT_BATCH_TIMEOUT_S,
    **kwargs: object,
) -> list[float]:
    """1.0 when math-verify finds the final answer equivalent to the gold answer, else 0.0.

    Gold answers may come with or without ``$...$`` / ``\\boxed{}``; bare LaTeX is wrapped in
    ``$...$`` before parsing (math-verify ignores undelimited LaTeX). The prediction is the final
    answer of :func:`exact_match_reward`.

    Args:
        completions: model outputs.
        answer: dataset column, one gold answer per completion.
        timeout_s: wall-clock limit per item, seconds; slower items score 0.0.
        batch_timeout_s: wall-clock budget for the whole call, seconds (``None``: no budget);
            items not checked in time score 0.0. Under :class:`WeightedReward` the call also
            ends by its per-call deadline, whichever comes first. Items scored 0.0 for time are
            counted in ``WeightedReward.timeouts``.
        workers: pool size; ``None`` = ``min(4, CPUs)``; ``0`` = check in-process when called
            from the main thread (from another thread the pool is used, with a warning).
        mp_context: multiprocessing start method for the pool ("spawn" or "forkserver"; "fork"
            is unsafe next to torch's threads).
        require_answer_tag: see :func:`exact_match_reward`.
        max_answer_chars: longer final answers score 0.0 without being parsed. The limit is on
            the extracted answer (the ``\\boxed{}`` content, or the ``#### n`` line, or else the
            whole block), not on the ``<answer>`` block that holds it.
        **kwargs: other dataset columns, ignored.
    """
    _check_options(
        timeout_s, workers, mp_context, require_answer_tag, max_answer_chars, batch_timeout_s
    )
    golds = _check_answer_column(answer, len(completions), "math_verify")
    scores = [0.0] * len(completions)
    todo: list[int] = []
    pairs: list[tuple[str, str]] = []
    for i, (completion, gold) in enumerate(zip(completions, golds)):
        pred, gold_s = _final_answer(completion, require_answer_tag), _gold_text(gold)
        if pred is None or gold_s is None or len(pred) > max_answer_chars:
            continue
        todo.append(i)
        pairs.append((gold_s, pred))
    checked = _check_pairs(pairs, timeout_s=timeout_s, workers=workers, mp_context=mp_context,
                           batch_timeout_s=batch_timeout_s)
    for i, score in zip(todo, checked):
        scores[i] = score
    return scores


def accuracy_reward(
    completions: Sequence[str],
    answer: Sequence[object] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    workers: int | None = None,
    mp_context: str = "spawn",
    require_answer_tag: bool = True,
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
    batch_timeout_s: float | None = DEFAULT_BATCH_TIMEOUT_S,
    **kwargs: object,
) -> list[float]:
    """R1-Zero accuracy reward (§2.2): exact match first, math-verify for non-numeric golds.

    1. :func:`exact_match_reward`'s test; a match scores 1.0 with no process pool involved.
    2. If the gold answer is a plain number (``85``, ``-0.5``, ``3/4``, ``1,000``), exact match
       is final. A numeric answer is only right when it *is* that number; handing it to
       math-verify would also accept any expression of equal value, and the cheapest such
       expression is often the question itself ("Compute 23+45+17." -> ``23+45+17``), a reward
       hack a policy finds quickly on arithmetic tasks. It also keeps GSM8K/AIME-style data off
       the pool entirely.
    3. Otherwise (expressions, intervals, sets, ``\\frac{\\sqrt{3}}{2}``, ...) math-verify decides.

    Arguments are those of :func:`math_verify_reward`.
    """
    _check_options(
        timeout_s, workers, mp_context, require_answer_tag, max_answer_chars, batch_timeout_s
    )
    golds = _check_answer_column(answer, len(completions), "accuracy")
    scores = [0.0] * len(completions)
    todo: list[int] = []
    pairs: list[tuple[str, str]] = []
    for i, (completion, gold) in enumerate(zip(completions, golds)):
        pred, gold_s = _final_answer(completion, require_answer_tag), _gold_text(gold)
        if pred is None or gold_s is None:
            continue
        if _exact_match(gold_s, pred):
            scores[i] = 1.0
        elif parse_number(normalize_answer(gold_s)) is None and len(pred) <= max_answer_chars:
            todo.append(i)
            pairs.append((gold_s, pred))
    checked = _check_pairs(pairs, timeout_s=timeout_s, workers=workers, mp_context=mp_context,
                           batch_timeout_s=batch_timeout_s)
    for i, score in zip(todo, checked):
        scores[i] = score
    return scores
