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
per-sample ``language`` column beats ``language: en``). A function that raises, or returns
the wrong number of scores, scores 0.0 for that batch with one warning per function, and is
counted in :attr:`WeightedReward.failures`; non-finite scores become 0.0. Training never stops
for a reward.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from r1lightning.rewards.accuracy import accuracy_reward, exact_match_reward, math_verify_reward
from r1lightning.rewards.errors import RewardConfigError
from r1lightning.rewards.format import format_reward
from r1lightning.rewards.language import language_consistency_reward

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


@dataclass
class RewardTerm:
    """One weighted component of :class:`WeightedReward`."""

    label: str
    fn: RewardFn
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)


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
        _check_kwargs(label, fn, options)
        return RewardTerm(label=label, fn=fn, weight=weight, kwargs=options)
    return RewardTerm(label=label, fn=fn, weight=_check_weight(label, value))


class WeightedReward:
    """Weighted sum of reward functions, with every component returned for logging.

    Args:
        rewards: ``{name: weight}`` or ``{name: {"weight": w, **options}}`` (names are built-in
            names or import paths), or a list of names, callables, ``RewardTerm``\\ s and
            ``{"name": ..., "weight": ..., "label": ..., **options}`` mappings. See the module
            docstring.

    Call with ``(completions, **columns)``; returns ``(total, per_fn)`` where ``total[i] =
    sum_k weight_k * per_fn[label_k][i]`` and ``per_fn`` holds the *unweighted* scores.
    """

    def __init__(self, rewards: Mapping[str, Any] | Sequence[Any]) -> None:
        terms: list[RewardTerm] = []
        if isinstance(rewards, Mapping):
            terms = [_term_from_entry(name, value) for name, value in rewards.items()]
        elif isinstance(rewards, Sequence) and not isinstance(rewards, (str, bytes)):
            for entry in rewards:
                if isinstance(entry, RewardTerm):
                    _check_weight(entry.label, entry.weight)
                    _check_kwargs(entry.label, entry.fn, entry.kwargs)
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
        self.terms: list[RewardTerm] = terms
        #: Batches each function failed on (raised, or returned a wrong-length result).
        self.failures: Counter[str] = Counter()
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

    def _warn_once(self, label: str, message: str, *args: object, exc_info: bool = False) -> None:
        if label not in self._warned:
            self._warned.add(label)
            log.warning(message + " (warned once per reward)", *args, exc_info=exc_info)

    def _score(
        self, term: RewardTerm, completions: Sequence[str], columns: Mapping[str, Any]
    ) -> list[float]:
        n = len(completions)
        kwargs = {**term.kwargs, **columns}
        try:
            params = inspect.signature(term.fn).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                kwargs = {k: v for k, v in kwargs.items() if k in params}
        except (TypeError, ValueError):
            pass
        try:
            raw = list(term.fn(completions, **kwargs))
            if len(raw) != n:
                raise ValueError(f"returned {len(raw)} scores for {n} completions")
            scores = [float(x) if x is not None else math.nan for x in raw]
        except RewardConfigError:
            raise  # a configuration mistake repeats every step: stop now, loudly
        except Exception as exc:
            self.failures[term.label] += 1
            self._warn_once(
                term.label,
                "reward %r failed (%s: %s); scoring the batch 0.0",
                term.label,
                type(exc).__name__,
                exc,
                exc_info=True,
            )
            return [0.0] * n
        if not all(math.isfinite(x) for x in scores):
            self._warn_once(
                term.label, "reward %r returned non-finite scores; using 0.0", term.label
            )
            scores = [x if math.isfinite(x) else 0.0 for x in scores]
        return scores

    def __call__(
        self, completions: Sequence[str], **columns: Any
    ) -> tuple[list[float], dict[str, list[float]]]:
        per_fn = {term.label: self._score(term, completions, columns) for term in self.terms}
        total = [0.0] * len(completions)
        for term in self.terms:
            for i, r in enumerate(per_fn[term.label]):
                total[i] += term.weight * r
        return total, per_fn
