"""Format reward: does the completion follow the R1-Zero template? (DeepSeek-R1 §2.2.)

R1-Zero's rule-based reward has two parts, accuracy and format; the format reward "enforces the
model to put its thinking process between '<think>' and '</think>' tags" with the answer in
``<answer> ... </answer>`` after it. The paper does not spell out the check; this one is strict,
because a loose format reward is the first thing a policy learns to game:

    completion ::= ws "<think>" THINK "</think>" ws "<answer>" ANSWER "</answer>" ws

where ``ws`` is optional whitespace, THINK and ANSWER are non-empty after stripping whitespace
and control characters (a block of NUL bytes is empty), and neither
contains a ``<think>``/``</think>``/``<answer>``/``</answer>`` tag (any case, spaces allowed
inside the brackets). Anything else scores 0.0: no reasoning, an empty answer, two think or two
answer blocks, the answer before the reasoning, tags nested in either block, or any text after
``</answer>`` (so a rollout must strip EOS/pad tokens before scoring).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from r1lightning.rewards.errors import RewardConfigError
from r1lightning.rewards.parsing import as_text, strip_blank

__all__ = ["format_reward", "is_well_formatted"]

_TEMPLATE_RE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_ANY_TAG_RE = re.compile(r"<\s*/?\s*(?:think|answer)\s*>", re.IGNORECASE)


def is_well_formatted(text: str) -> bool:
    """True iff ``text`` is exactly one non-empty think block then one non-empty answer block."""
    # Exactly four tag-like tokens in all; if the template then matches, they are its four
    # tags, so neither block holds a stray one. Counting first also keeps the regex linear on
    # adversarial input ("<think>a</think><answer>" x 10,000 would otherwise backtrack
    # quadratically).
    n_tags = 0
    for _ in _ANY_TAG_RE.finditer(text):
        n_tags += 1
        if n_tags > 4:
            return False
    if n_tags != 4:
        return False
    match = _TEMPLATE_RE.fullmatch(text)
    # strip_blank: a block of only NUL / control / zero-width characters is empty.
    return (
        match is not None
        and bool(strip_blank(match.group(1)))
        and bool(strip_blank(match.group(2)))
    )


def format_reward(
    completions: Sequence[str],
    completion_prefix: str = "",
    **kwargs: object,
) -> list[float]:
    """1.0 for a completion that matches the R1-Zero template exactly, else 0.0.

    Args:
        completions: model outputs.
        completion_prefix: text the prompt already ends with and the completion continues,
            e.g. ``"<think>"`` for templates whose prompt opens the think block; prepended to
            each completion before the check.
        **kwargs: dataset columns, ignored.
    """
    if not isinstance(completion_prefix, str):
        raise RewardConfigError(f"completion_prefix must be a string, got {completion_prefix!r}")
    return [1.0 if is_well_formatted(completion_prefix + as_text(c)) else 0.0 for c in completions]
