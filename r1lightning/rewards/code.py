"""Code reward: run the completion's program against the row's tests in the sandbox.

DeepSeek-R1 §2.2 names compilers and predefined test cases as the accuracy reward for
LeetCode-style problems; this is that reward for Python, with :mod:`r1lightning.sandbox`
running every candidate (no network, read-only filesystem, its own uid/PID namespace, CPU /
memory / process / output limits, wall clock).

Which code is graded (:func:`extract_code`), first match wins:

1. The last well-formed ``<answer>...</answer>`` block: its last fenced Python block (```python,
   ```py, ```python3, or an untagged ```), else the whole answer text.
2. Otherwise, in the text after the last ``</think>``: the last fenced Python block.
3. Otherwise that whole text, if it is plain Python (it compiles on its own, or appended to the
   prompt: a HumanEval-style body continuation).

A completion with none of these (prose, an empty answer, code longer than ``max_code_chars``)
scores 0.0 without running anything.

How the program is built (:func:`build_program`), as HumanEval does it:

* no prompt: the code alone;
* the code defines the entry point at top level (or, without an entry point, compiles on its
  own): the prompt first when the prompt is Python itself (so its imports and helper functions
  exist; the completion's later definition replaces the stub), then the code; an MBPP prompt,
  which is prose, is dropped;
* otherwise the code continues the prompt: ``prompt + code`` (human-eval's own harness).

Note: GRPO's data module keeps the prompt column out of the reward columns (the prompt is what
the model saw), so under GRPO ``prompt`` is normally absent and the completion must define the
entry point itself; pass the stub in a column named ``prompt`` (a different prompt_column) to
allow body continuations.

Scores (``mode``):

* ``"all"`` (default): 1.0 iff the program and the row's tests, run as one script exactly as
  the benchmark's own harness does, finish without an uncaught exception; else 0.0.
* ``"fraction"``: the tests are split into *units* and the score is the fraction of units that
  pass (units not reached before a time limit, or after a crash, fail; a program that does not
  even import scores 0.0). MBPP: each assertion statement is a unit (``test_setup_code`` and
  other statements without an ``assert`` run in order but are not scored). HumanEval
  (``def check(candidate): ...`` then ``check(entry_point)``): each top-level statement of
  ``check``'s body that contains an ``assert`` is a unit, run with ``candidate`` bound to the
  entry point, so a single ``assert candidate(...) == ...`` line is one unit but a ``for`` loop
  over 100 random inputs is also one unit. "Fraction" is therefore per test *statement*, not
  per executed assertion. Tests that cannot be split (no assert statement, a ``check`` body
  that ``return``\\ s) are one unit, so fraction degenerates to all-or-nothing. ``tests`` given
  as a list of strings are units as they are.

Time: every candidate gets ``wall_s`` / ``cpu_s``; under :class:`WeightedReward` the call also
ends by its per-call deadline (:mod:`r1lightning.rewards.budget`): candidates not started by
then score 0.0 and, with those cut short by it, are reported as timeouts. A candidate that
loops for ever within its own limit is a wrong program (0.0), not a timeout of the reward.
Identical programs within one call (common in a GRPO group) run once.

If the sandbox cannot be set up on this host the reward raises
:class:`~r1lightning.rewards.errors.RewardConfigError` (a run must not silently train on zeros),
never on model output.
"""

from __future__ import annotations

import ast
import logging
import time
import warnings
from collections.abc import Sequence

from r1lightning import sandbox
from r1lightning.rewards import budget
from r1lightning.rewards.errors import RewardConfigError
from r1lightning.rewards.parsing import as_text, extract_answer

__all__ = ["MODES", "build_program", "code_reward", "extract_code", "split_tests"]

log = logging.getLogger(__name__)

MODES = ("all", "fraction")
DEFAULT_MAX_CODE_CHARS = 100_000
_PY_TAGS = {"python", "py", "python3", "py3"}
_FENCE = "```"


def _compiles(source: str) -> bool:
    try:
        with warnings.catch_warnings():  # invalid escape sequences in model text are noise
            warnings.simplefilter("ignore")
            compile(source, "<code>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
        return True
    except Exception:  # SyntaxError, ValueError (NUL bytes), RecursionError, MemoryError
        return False


def _last_fenced_python(text: str) -> str | None:
    """The last closed fenced block tagged Python (or untagged, if none is tagged).

    Fences pair up in order (as in Markdown), found with one ``str.find`` sweep, so unclosed
    or thousands of fences cost linear time.
    """
    tagged = untagged = None
    pos = text.find(_FENCE)
    while pos >= 0:
        close = text.find(_FENCE, pos + 3)
        if close < 0:
            break
        header, nl, body = text[pos + 3:close].partition("\n")
        if nl:  # an inline ```x``` span has no newline: not a block
            tag = header.strip().lower()
            if tag in _PY_TAGS:
                tagged = body
            elif not tag:
                untagged = body
        pos = text.find(_FENCE, close + 3)
    block = tagged if tagged is not None else untagged
    return block if block is not None and block.strip() else None


def _trim(code: str) -> str:
    """Drop blank leading lines and trailing whitespace, keeping the first line's indent."""
    lines = code.split("\n")
    k = 0
    while k < len(lines) and not lines[k].strip():
        k += 1
    return "\n".join(lines[k:]).rstrip()


def extract_code(completion: object, prompt: object = None,
                 max_code_chars: int = DEFAULT_MAX_CODE_CHARS) -> str | None:
    """The code a completion submits (see the module docstring), or ``None``. Never raises."""
    try:
        text = as_text(completion)
        answer = extract_answer(text)
        if answer is not None:
            code = _last_fenced_python(answer)
            code = answer if code is None else code
        else:
            tail = text.rsplit("</think>", 1)[-1]
            code = _last_fenced_python(tail)
            if code is None:
                if not tail.strip() or len(tail) > max_code_chars:
                    return None
                prompt_s = prompt if isinstance(prompt, str) else ""
                if not (_compiles(tail) or (prompt_s and _compiles(prompt_s + tail))):
                    return None
                code = tail
        code = _trim(code)
        if not code or len(code) > max_code_chars:
            return None
        return code
    except Exception:  # garbage in, no code out
        return None


def _defines(code: str, name: str) -> bool:
    """``code`` parses and defines ``name`` at top level (function, class or assignment)."""
    try:
        tree = ast.parse(code)
    except Exception:
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


def build_program(code: str, prompt: str | None = None, entry_point: str | None = None) -> str:
    """The program to run: ``code`` alone, ``prompt`` then ``code``, or ``prompt + code``
    (a continuation), as described in the module docstring."""
    if not prompt:
        return code
    standalone = _defines(code, entry_point) if entry_point else _compiles(code)
    if standalone:
        return f"{prompt}\n\n{code}\n" if _compiles(prompt) else f"{code}\n"
    return f"{prompt}{code}\n"


def _contains_assert(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def _check_call(stmt: ast.stmt) -> tuple[str, ast.expr] | None:
    """``check(x)`` as a top-level expression statement -> ("check", x)."""
    if (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Name)
        and len(stmt.value.args) == 1
        and not stmt.value.keywords
    ):
        return stmt.value.func.id, stmt.value.args[0]
    return None


def split_tests(tests: str) -> tuple[list[str], list[int]]:
    """Split a test script into units: ``(units, scored)`` where ``units`` run in order in the
    program's namespace and ``scored`` are the indices the fraction is taken over (see the
    module docstring). Unsplittable tests give ``([tests], [0])``."""
    whole = ([tests], [0])
    try:
        tree = ast.parse(tests)
    except Exception:
        return whole
    body = tree.body
    funcs = {n.name: n for n in body if isinstance(n, ast.FunctionDef)}
    call = _check_call(body[-1]) if body else None
    if call is not None and call[0] in funcs and len(funcs[call[0]].args.args) == 1:
        # HumanEval: def check(candidate): ...; check(entry_point)
        fn = funcs[call[0]]
        inner = fn.body
        if any(isinstance(n, (ast.Return, ast.Yield, ast.YieldFrom, ast.Nonlocal, ast.Global))
               for s in inner for n in ast.walk(s)):
            return whole
        param = fn.args.args[0].arg
        setup = [ast.unparse(s) for s in body[:-1] if s is not fn]
        setup.append(f"{param} = {ast.unparse(call[1])}")
        units = ["\n".join(setup)] + [ast.unparse(s) for s in inner]
        scored = [k + 1 for k, s in enumerate(inner) if _contains_assert(s)]
    else:  # MBPP: setup code and a list of assert statements
        units = [ast.unparse(s) for s in body]
        scored = [k for k, s in enumerate(body) if _contains_assert(s)]
    if not scored:
        return whole
    return units, scored


def _column(value: object, n: int, name: str, required: bool) -> Sequence[object]:
    if value is None:
        if required:
            raise RewardConfigError(
                f"reward 'code' needs the dataset column {name!r} (the tests to run), "
                "but it was not passed"
            )
        return [None] * n
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise RewardConfigError(
            f"reward 'code': column {name!r} must be a per-sample list, got {type(value).__name__}"
        )
    if len(value) != n:
        raise RewardConfigError(
            f"reward 'code': column {name!r} has {len(value)} entries for {n} completions"
        )
    return value


def code_reward(
    completions: Sequence[str],
    tests: Sequence[object] | None = None,
    entry_point: Sequence[object] | None = None,
    prompt: Sequence[object] | None = None,
    mode: str = "all",
    cpu_s: float = sandbox.SandboxLimits.cpu_s,
    wall_s: float = sandbox.SandboxLimits.wall_s,
    memory_mb: int = sandbox.SandboxLimits.memory_mb,
    max_processes: int = sandbox.SandboxLimits.max_processes,
    max_output_bytes: int = sandbox.SandboxLimits.max_output_bytes,
    max_workers: int | None = None,
    max_code_chars: int = DEFAULT_MAX_CODE_CHARS,
    batch_timeout_s: float | None = None,
    **kwargs: object,
) -> list[float]:
    """Score each completion's code against its row's tests in the sandbox (module docstring).

    Args:
        completions: model outputs.
        tests: dataset column; per row a test script (str: HumanEval's ``check`` program,
            MBPP's assert lines) or a list of test snippets (each one unit).
        entry_point: dataset column, the function the tests call (optional).
        prompt: dataset column, the code stub the completion may continue (optional).
        mode: ``"all"`` (1.0 iff every test passes) or ``"fraction"`` (fraction of units).
        cpu_s, wall_s, memory_mb, max_processes, max_output_bytes: per-candidate
            :class:`~r1lightning.sandbox.SandboxLimits`.
        max_workers: sandboxes at once (default: the CPUs this process may use).
        max_code_chars: longer code scores 0.0 without running.
        batch_timeout_s: wall-clock budget of the whole call (``None``: only WeightedReward's
            deadline, if any).
        **kwargs: other dataset columns, ignored.
    """
    if mode not in MODES:
        raise RewardConfigError(f"reward 'code': mode must be one of {list(MODES)}, got {mode!r}")
    if (isinstance(max_code_chars, bool) or not isinstance(max_code_chars, int)
            or max_code_chars < 1):
        raise RewardConfigError(f"max_code_chars must be a positive int, got {max_code_chars!r}")
    try:
        limits = sandbox.SandboxLimits(cpu_s=cpu_s, wall_s=wall_s, memory_mb=memory_mb,
                                       max_processes=max_processes,
                                       max_output_bytes=max_output_bytes)
    except ValueError as exc:
        raise RewardConfigError(f"reward 'code': {exc}") from None
    if max_workers is not None and (
        isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
    ):
        raise RewardConfigError(f"max_workers must be None or a positive int, got {max_workers!r}")
    n = len(completions)
    tests_col = _column(tests, n, "tests", required=True)
    entry_col = _column(entry_point, n, "entry_point", required=False)
    prompt_col = _column(prompt, n, "prompt", required=False)

    scores = [0.0] * n
    jobs: dict[tuple[str, tuple[str, ...]], list[tuple[int, list[int]]]] = {}
    for i in range(n):
        test = tests_col[i]
        if isinstance(test, str):
            units, scored = split_tests(test) if mode == "fraction" else ([test], [0])
        elif isinstance(test, Sequence) and test and all(isinstance(t, str) for t in test):
            units, scored = list(test), list(range(len(test)))
        else:
            continue  # no usable tests for this row: nothing can be verified
        prompt_i = prompt_col[i] if isinstance(prompt_col[i], str) else None
        entry_i = entry_col[i] if isinstance(entry_col[i], str) and entry_col[i] else None
        code = extract_code(completions[i], prompt_i, max_code_chars)
        if code is None:
            continue
        program = build_program(code, prompt_i, entry_i)
        jobs.setdefault((program, tuple(units)), []).append((i, scored))
    if not jobs:
        return scores

    ends = [budget.deadline()]
    if batch_timeout_s is not None:
        ends.append(time.monotonic() + float(batch_timeout_s))
    end = min((e for e in ends if e is not None), default=None)
    keys = list(jobs)
    try:
        results = sandbox.run_many([k[0] for k in keys], limits, max_workers,
                                   tests=[list(k[1]) for k in keys], deadline=end)
    except sandbox.SandboxUnavailable as exc:
        raise RewardConfigError(f"reward 'code' cannot run programs safely here: {exc}") from exc
    out_of_time = 0
    for key, result in zip(keys, results):
        members = jobs[key]
        if result is None or result.detail.startswith(sandbox.DEADLINE_DETAIL):
            out_of_time += len(members)  # the budget, not the program, ran out
        if result is None:
            continue
        for i, scored in members:
            if mode == "all":
                scores[i] = 1.0 if result.passed else 0.0
            else:
                ok = sum(1 for k in scored if result.test_results[k] is True)
                scores[i] = ok / len(scored)
    budget.report_timeouts(out_of_time)
    broken = [r.detail for r in results if r is not None and r.status == "error"]
    if broken:
        log.warning("code reward: the sandbox failed on %d program(s), scored 0.0 (first: %s)",
                    len(broken), broken[0])
    return scores
