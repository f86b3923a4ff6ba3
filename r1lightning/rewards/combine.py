"""Reward registry and the weighted sum the GRPO module optimises.

R1-Zero's reward is accuracy + format (DeepSeek-R1 §2.2); R1's first RL stage adds the
language-consistency reward to the accuracy reward (§2.3). :class:`WeightedReward` computes
``total = sum_k weight_k * r_k`` and also returns every component *unweighted*, so the trainer can
log ``rewards/<name>/mean`` and ``rewards/<name>/std`` per function (as TRL does).

A spec is plain data, so it can live in a YAML config::

    rewards:
      accuracy: 1.0
      format: 0.5
      language_consistency: {weight: 0.1, language: en}
      my_pkg.rewards:length_penalty: {weight: -0.01}

or, when the same function is needed twice, a list whose entries are a name (weight 1.0) or a
mapping with ``name``, optional ``weight``, optional ``label`` (the logging key; defaults to the
name, or the function name for an import path) and any other keys as keyword arguments::

    - accuracy
    - {name: language_consistency, label: lang_zh, language: zh, weight: 0.1}

Keyword arguments given in the spec must be named parameters of the function (a typo is an
error, not a silent no-op), unless the function takes only ``**kwargs``. At call time every
dataset column is passed too; a column overrides a spec argument of the same name (so a
per-sample ``language`` column beats ``language: en``), and the log says so once per reward and key.

What a shared cluster does to a run, and what happens then:

* **Time.** Every call runs under a wall-clock limit (``call_timeout_s``, per reward; a spec
  key ``call_timeout_s`` overrides it) and all rewards of one batch share a budget
  (``batch_timeout_s``). Built-in rewards run inline (they are linear-time, fuzz-tested; the
  math-verify ones and ``code`` bound their own items through :mod:`r1lightning.rewards.budget`,
  scoring items not checked in time 0.0). A user function runs in a daemon worker thread
  (``isolation: thread``, the default for anything not built in) and WeightedReward stops
  waiting at the limit: the batch scores 0.0 and ``timeouts[label]`` grows. A Python thread
  cannot be killed, so the call may go on in the background; while it does, that reward is not
  called again (its batches score 0.0, counted as timeouts), so at most one thread per reward
  leaks. A reward that never releases the GIL (a C-level loop) cannot be bounded this way; run
  such code in your own subprocess. ``isolation: inline`` runs a user function in the calling
  thread, unbounded (for code that needs the main thread, e.g. ``signal.alarm``).
* **Failures.** A function that raises scores 0.0 for that batch (one warning per function)
  and is counted in :attr:`WeightedReward.failures`; non-finite scores become 0.0. A reward
  that raises or times out on ``max_consecutive_failures`` batches in a row stops the run with
  :class:`~r1lightning.rewards.errors.RewardFailedError` naming it (training on zeros for ever
  is worse than stopping). Returning the wrong number of scores, or no sequence at all, is a
  programming error, not model output: it stops the run at once.
  :class:`~r1lightning.rewards.errors.RewardConfigError` always propagates.
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from r1lightning.rewards.accuracy import accuracy_reward, exact_match_reward, math_verify_reward
from r1lightning.rewards import budget
from r1lightning.rewards.code import code_reward
from r1lightning.rewards.errors import RewardConfigError, RewardFailedError
from r1lightning.rewards.format import format_reward
from r1lightning.rewards.language import language_consistency_reward
from r1lightning.rewards.reward_model import reward_model_reward

__all__ = ["REWARD_FUNCS", "RewardFn", "RewardTerm", "WeightedReward", "get_reward_fn"]

log = logging.getLogger(__name__)

RewardFn = Callable[..., Sequence[float]]

#: Built-in rewards by name.
REWARD_FUNCS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "exact_match": exact_match_reward,
    "math_verify": math_verify_reward,
    "format": format_reward,
    "language_consistency": language_consistency_reward,
    "code": code_reward,
    "reward_model": reward_model_reward,
}


def get_reward_fn(name: str) -> RewardFn:
    """A built-in reward by name, or a user function by import path.

    Import paths may be ``"pkg.module:function"`` or ``"pkg.module.function"``.
    Raises ``ValueError`` (listing the built-in names) when nothing callable is found.
    """
    if not isinstance(name, str) or not name.strip():
        raise RewardConfigError(f"reward name must be a non-empty string, got {name!r}")
    name = name.strip()
    if name in REWARD_FUNCS:
        return REWARD_FUNCS[name]
    valid = ", ".join(sorted(REWARD_FUNCS))
    if ":" in name:
        module_name, _, attr = name.partition(":")
    elif "." in name:
        module_name, _, attr = name.rpartition(".")
    else:
        raise RewardConfigError(
            f"unknown reward {name!r}; built-in rewards: {valid}; "
            "or give an import path such as 'my_pkg.rewards:my_reward'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RewardConfigError(
            f"reward {name!r}: cannot import module {module_name!r} ({exc}); "
            f"built-in rewards: {valid}"
        ) from exc
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise RewardConfigError(f"reward {name!r}: {module_name!r} has no callable {attr!r}")
    return fn


#: How a reward call is run: "inline" (in the calling thread, not interruptible) or "thread"
#: (a daemon worker thread; WeightedReward stops waiting at the limit).
ISOLATIONS = ("inline", "thread")
DEFAULT_CALL_TIMEOUT_S = 60.0
DEFAULT_BATCH_TIMEOUT_S = 120.0
DEFAULT_MAX_CONSECUTIVE_FAILURES = 5


@dataclass
class RewardTerm:
    """One weighted component of :class:`WeightedReward`.

    ``call_timeout_s`` and ``isolation`` default (``None``) to WeightedReward's per-call limit
    and to "inline" for built-in rewards, "thread" for any other function.
    """

    label: str
    fn: RewardFn
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    call_timeout_s: float | None = None
    isolation: str | None = None


def _check_seconds(label: str, key: str, value: object, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise RewardConfigError(
            f"reward {label!r}: {key} must be a positive number of seconds, got {value!r}"
        )
    return float(value)


def _check_isolation(label: str, value: object) -> str | None:
    if value is not None and value not in ISOLATIONS:
        raise RewardConfigError(
            f"reward {label!r}: isolation must be one of {list(ISOLATIONS)}, got {value!r}"
        )
    return value  # type: ignore[return-value]


def _is_builtin(fn: RewardFn) -> bool:
    return any(fn is f for f in REWARD_FUNCS.values())


def _check_weight(label: str, weight: object) -> float:
    if (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not math.isfinite(weight)
    ):
        raise RewardConfigError(
            f"reward {label!r}: weight must be a finite number, "
            f"got {weight!r} ({type(weight).__name__})"
        )
    return float(weight)


def _check_kwargs(label: str, fn: RewardFn, kwargs: Mapping[str, Any]) -> None:
    """Spec keyword arguments must be named parameters of ``fn`` (typos fail loudly)."""
    if not kwargs:
        return
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return  # builtins / C functions: nothing to check against
    named = [p.name for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    if not named and takes_var_kw:
        return
    unknown = sorted(set(kwargs) - set(named))
    if unknown:
        raise RewardConfigError(
            f"reward {label!r}: unknown option(s) {unknown}; valid options: {named}"
        )


def _default_label(name: object, fn: RewardFn) -> str:
    if isinstance(name, str) and name in REWARD_FUNCS:
        return name
    return getattr(fn, "__name__", None) or type(fn).__name__


def _term_from_entry(name: object, value: object) -> RewardTerm:
    """Build a term from a name (or callable) and a weight or an options mapping."""
    fn = name if callable(name) else get_reward_fn(name)  # type: ignore[arg-type]
    label = _default_label(name, fn)
    if isinstance(value, Mapping):
        options = dict(value)
        options.pop("name", None)
        label = options.pop("label", label)
        if not isinstance(label, str) or not label:
            raise RewardConfigError(
                f"reward {name!r}: label must be a non-empty string, got {label!r}"
            )
        weight = _check_weight(label, options.pop("weight", 1.0))
        call_timeout_s = _check_seconds(
            label, "call_timeout_s", options.pop("call_timeout_s", None)
        )
        isolation = _check_isolation(label, options.pop("isolation", None))
        _check_kwargs(label, fn, options)
        _check_options(fn, options)
        return RewardTerm(
            label=label,
            fn=fn,
            weight=weight,
            kwargs=options,
            call_timeout_s=call_timeout_s,
            isolation=isolation,
        )
    _check_options(fn, {})
    return RewardTerm(label=label, fn=fn, weight=_check_weight(label, value))


def _check_options(fn: RewardFn, options: Mapping[str, Any]) -> None:
    """A reward may validate its spec when it is built (``fn.check_options(**options)``), e.g.
    reward_model's folder, so a configuration mistake stops the run before the first rollout."""
    check = getattr(fn, "check_options", None)
    if callable(check):
        check(**options)


class _CallTimeout(Exception):
    """A bounded reward call did not return within its limit."""


class WeightedReward:
    """Weighted sum of reward functions, with every component returned for logging.

    Args:
        rewards: ``{name: weight}`` or ``{name: {"weight": w, **options}}`` (names are built-in
            names or import paths), or a list of names, callables, ``RewardTerm``\\ s and
            ``{"name": ..., "weight": ..., "label": ..., **options}`` mappings. See the module
            docstring. Besides the function's own options a spec may set ``call_timeout_s``
            (this reward's per-call limit) and ``isolation`` ("inline" or "thread").
        call_timeout_s: wall-clock limit of one reward call (one batch), seconds. A user
            reward still running then scores 0.0 for the batch (a timeout); a built-in
            math-verify reward stops checking items (those score 0.0, counted as timeouts).
        batch_timeout_s: wall-clock budget of all reward calls of one batch together, seconds.
            Inline (built-in) rewards run first; each later call gets at most what is left,
            and a call with nothing left is not made (0.0, a timeout).
        max_consecutive_failures: a reward that raises or times out on this many batches in a
            row stops the run (:class:`RewardFailedError`); ``None`` never stops.

    Call with ``(completions, **columns)``; returns ``(total, per_fn)`` where ``total[i] =
    sum_k weight_k * per_fn[label_k][i]`` and ``per_fn`` holds the *unweighted* scores.
    """

    def __init__(
        self,
        rewards: Mapping[str, Any] | Sequence[Any],
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S,
        max_consecutive_failures: int | None = DEFAULT_MAX_CONSECUTIVE_FAILURES,
    ) -> None:
        terms: list[RewardTerm] = []
        if isinstance(rewards, Mapping):
            terms = [_term_from_entry(name, value) for name, value in rewards.items()]
        elif isinstance(rewards, Sequence) and not isinstance(rewards, (str, bytes)):
            for entry in rewards:
                if isinstance(entry, RewardTerm):
                    _check_weight(entry.label, entry.weight)
                    _check_kwargs(entry.label, entry.fn, entry.kwargs)
                    _check_seconds(entry.label, "call_timeout_s", entry.call_timeout_s)
                    _check_isolation(entry.label, entry.isolation)
                    terms.append(entry)
                elif isinstance(entry, Mapping):
                    if "name" not in entry:
                        raise RewardConfigError(f"reward spec {dict(entry)!r} has no 'name'")
                    terms.append(_term_from_entry(entry["name"], entry))
                elif isinstance(entry, str) or callable(entry):
                    terms.append(_term_from_entry(entry, 1.0))
                else:
                    raise RewardConfigError(
                        f"reward spec entries must be names, callables or mappings, got {entry!r}"
                    )
        else:
            raise RewardConfigError(
                "rewards must be a mapping {name: weight or options} or a list of specs, "
                f"got {type(rewards).__name__}"
            )
        if not terms:
            raise RewardConfigError("rewards is empty: give at least one reward function")
        labels = [t.label for t in terms]
        duplicates = sorted({lbl for lbl in labels if labels.count(lbl) > 1})
        if duplicates:
            raise RewardConfigError(
                f"duplicate reward label(s) {duplicates}: give each a distinct 'label'"
            )
        if max_consecutive_failures is not None and (
            isinstance(max_consecutive_failures, bool)
            or not isinstance(max_consecutive_failures, int)
            or max_consecutive_failures < 1
        ):
            raise RewardConfigError(
                "max_consecutive_failures must be a positive int or None, "
                f"got {max_consecutive_failures!r}"
            )
        self.call_timeout_s = _check_seconds("*", "call_timeout_s", call_timeout_s, False)
        self.batch_timeout_s = _check_seconds("*", "batch_timeout_s", batch_timeout_s, False)
        self.max_consecutive_failures = max_consecutive_failures
        self.terms: list[RewardTerm] = terms
        #: Batches each function failed on (raised, or returned a wrong-length result).
        self.failures: Counter[str] = Counter()
        #: Per label: calls that ran out of time (or were skipped: budget spent, or the previous
        #: call's thread still running), plus items a reward scored 0.0 for time itself
        #: (math-verify's per-item limit and per-batch budget).
        self.timeouts: Counter[str] = Counter()
        self._consecutive: Counter[str] = Counter()
        self._last_error: dict[str, str] = {}
        self._running: dict[str, threading.Thread] = {}
        self._warned: set[str] = set()

    @property
    def names(self) -> list[str]:
        """Component labels, in order (the keys of ``per_fn``)."""
        return [t.label for t in self.terms]

    @property
    def weights(self) -> dict[str, float]:
        return {t.label: t.weight for t in self.terms}

    def __repr__(self) -> str:
        inner = ", ".join(f"{t.label}={t.weight:g}" for t in self.terms)
        return f"{type(self).__name__}({inner})"

    def _warn_once(
        self, key: str, message: str, *args: object, exc_info: BaseException | bool = False
    ) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message + " (warned once per reward)", *args, exc_info=exc_info)

    def _isolation(self, term: RewardTerm) -> str:
        if term.isolation is not None:
            return term.isolation
        return "inline" if _is_builtin(term.fn) else "thread"

    def _call_in_thread(
        self, term: RewardTerm, completions: Sequence[str], kwargs: dict[str, Any], limit: float
    ) -> Any:
        running = self._running.get(term.label)
        if running is not None and running.is_alive():
            raise _CallTimeout("its previous call is still running")
        box: dict[str, Any] = {}
        ctx = contextvars.copy_context()  # carries the deadline and the timeout sink

        def target() -> None:
            try:
                box["value"] = ctx.run(term.fn, completions, **kwargs)
            except BaseException as exc:  # handed to the caller below
                box["error"] = exc

        # A daemon thread, not a ThreadPoolExecutor: the executor's threads are joined at
        # interpreter exit, so one hung reward would also hang the end of the run.
        thread = threading.Thread(target=target, name=f"reward-{term.label}", daemon=True)
        thread.start()
        thread.join(limit)
        if thread.is_alive():
            self._running[term.label] = thread
            raise _CallTimeout(f"no result after {limit:.1f}s")
        self._running.pop(term.label, None)
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _count_timeouts(self, label: str, n: int) -> None:
        if n:  # no zero entries: the Counter lists only rewards that did time out
            self.timeouts[label] += n

    def _fail(self, term: RewardTerm, what: str, exc: BaseException | None) -> None:
        """Count a failed batch; stop the run after ``max_consecutive_failures`` in a row."""
        self._consecutive[term.label] += 1
        self._last_error[term.label] = what
        k, limit = self._consecutive[term.label], self.max_consecutive_failures
        if limit is not None and k >= limit:
            raise RewardFailedError(
                f"reward {term.label!r} ({_fn_name(term.fn)}) failed on {k} consecutive "
                f"batches (last: {what}); every one scored 0.0. Fix the function or remove it "
                "from `rewards` (max_consecutive_failures sets how many failures in a row stop "
                "the run)"
            ) from exc

    def _score(
        self,
        term: RewardTerm,
        completions: Sequence[str],
        columns: Mapping[str, Any],
        end: float,
    ) -> list[float]:
        n = len(completions)
        limit = end - time.monotonic()
        if limit <= 0:
            self.timeouts[term.label] += 1
            self._warn_once(
                f"{term.label}:budget",
                "reward %r not called: the batch budget (batch_timeout_s=%gs) was spent by the "
                "rewards before it; scoring the batch 0.0",
                term.label,
                self.batch_timeout_s,
            )
            return [0.0] * n
        for key in sorted(set(term.kwargs) & set(columns)):
            self._warn_once(
                f"{term.label}:column:{key}",
                "reward %r: the dataset column %r overrides its option %s=%r (each row's own value is used)",
                term.label,
                key,
                key,
                term.kwargs[key],
            )
        kwargs = {**term.kwargs, **columns}
        try:
            params = inspect.signature(term.fn).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                kwargs = {k: v for k, v in kwargs.items() if k in params}
        except (TypeError, ValueError):
            pass
        with budget.bounded(end) as reported:
            try:
                if self._isolation(term) == "thread":
                    raw = self._call_in_thread(term, completions, kwargs, limit)
                else:
                    raw = term.fn(completions, **kwargs)
            except RewardConfigError:
                raise  # a configuration mistake repeats every step: stop now, loudly
            except _CallTimeout as exc:
                self.timeouts[term.label] += 1 + sum(reported)
                self._warn_once(
                    f"{term.label}:timeout",
                    "reward %r timed out (%s; limit %.1fs per call); scoring the batch 0.0. Its "
                    "thread cannot be killed and may still be running",
                    term.label,
                    exc,
                    limit,
                )
                self._fail(term, f"timed out: {exc}", None)
                return [0.0] * n
            except Exception as exc:
                self.failures[term.label] += 1
                self._count_timeouts(term.label, sum(reported))
                self._warn_once(
                    term.label,
                    "reward %r failed (%s: %s); scoring the batch 0.0",
                    term.label,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
                self._fail(term, f"{type(exc).__name__}: {exc}", exc)
                return [0.0] * n
        self._count_timeouts(term.label, sum(reported))
        scores = self._check_result(term, raw, n)
        self._consecutive[term.label] = 0
        if not all(math.isfinite(x) for x in scores):
            self._warn_once(
                f"{term.label}:nonfinite",
                "reward %r returned non-finite or non-numeric scores; using 0.0",
                term.label,
            )
            scores = [x if math.isfinite(x) else 0.0 for x in scores]
        return scores

    @staticmethod
    def _check_result(term: RewardTerm, raw: object, n: int) -> list[float]:
        """Scores as floats; a wrong count or type is a bug in the function: stop at once."""
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
            try:
                raw = list(raw)  # type: ignore[call-overload]  (a generator, a tensor, ...)
            except TypeError:
                raise RewardFailedError(
                    f"reward {term.label!r} ({_fn_name(term.fn)}) returned "
                    f"{type(raw).__name__}, expected a list of {n} scores (one per completion)"
                ) from None
        if len(raw) != n:
            raise RewardFailedError(
                f"reward {term.label!r} ({_fn_name(term.fn)}) returned {len(raw)} scores for "
                f"{n} completions: a reward must return one score per completion"
            )
        scores = []
        for x in raw:
            try:
                scores.append(float(x) if x is not None else math.nan)
            except (TypeError, ValueError):
                scores.append(math.nan)  # garbage score -> 0.0, with the non-finite warning
        return scores

    def __call__(
        self, completions: Sequence[str], **columns: Any
    ) -> tuple[list[float], dict[str, list[float]]]:
        start = time.monotonic()
        batch_end = start + self.batch_timeout_s
        # Inline rewards first: they are cheap, so a slow user reward cannot starve them.
        order = sorted(self.terms, key=lambda t: self._isolation(t) != "inline")
        scored: dict[str, list[float]] = {}
        for term in order:
            limit = term.call_timeout_s if term.call_timeout_s is not None else self.call_timeout_s
            end = min(batch_end, time.monotonic() + limit)
            scored[term.label] = self._score(term, completions, columns, end)
        per_fn = {term.label: scored[term.label] for term in self.terms}
        total = [0.0] * len(completions)
        for term in self.terms:
            for i, r in enumerate(per_fn[term.label]):
                total[i] += term.weight * r
        return total, per_fn


def _fn_name(fn: RewardFn) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}:{name}" if module else name
