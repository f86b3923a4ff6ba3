"""Arithmetic written in several reasoning styles: the world in which the R1 behaviours can appear.

The plain ``arithmetic`` task has one solution format, so a base model SFT-trained on it has
nothing to change during RL but its accuracy: response length, reflective words and language
mixing stay flat (DeepSeek-R1 §3.3 reports all three moving). This task keeps the same problems,
prompts, answers and train/held-out split (``split_of`` of the same prompt text) and varies only
how the *base's* SFT solutions are written, so that RL has styles to choose between and a reason
(the accuracy reward, nothing else) to prefer some:

* ``short``: the answer alone, ``<think>97</think>``: a 1M-parameter model cannot add four
  two-digit numbers in one go, so this style is short and mostly wrong.
* ``worked``: left-to-right partial sums joined by English connectives,
  ``23+45=68, then 68+17=85, then 85+12=97, so the answer is 97``: longer, more often right.
* ``checked``: a worked solution in which a step is re-checked by the easier decomposition
  (tens, then units): ``68+17=85, let me check: 68+10=78, 78+7=85``. With probability ``p_slip``
  the first result of a checked step is a typical slip (off by ten or by one) and the check
  catches it: ``68+17=75, wait, let me check: 68+10=78, 78+7=85, so 68+17=85``. Checking is
  longer still and, if the decomposition is easier for the model than the direct sum, more
  often right: the reward can then raise the rate of reflective words ("wait", "let me",
  "check") without ever rewarding a word.
* Language: a share ``p_mixed`` of worked and checked solutions say their connectives in Chinese
  (``然后`` "then", ``所以答案是`` "so the answer is"), chosen independently of correctness, so the
  base mixes languages in its chains of thought and only a language-consistency reward has a
  reason to remove it.

The arithmetic inside every style is exact (a slip is always followed by its correction), every
row's ``answer`` is the true sum, and the verifier is the same exact-match accuracy reward.
"""

from __future__ import annotations

import random

from r1lightning.data.tasks import format_solution

__all__ = ["STYLES", "CONNECTIVES_ZH", "classify_style", "styled_arithmetic_problem", "write_solution"]

STYLES = ("short", "worked", "checked")
#: English connective -> the Chinese one a mixed chain of thought uses instead.
CONNECTIVES_ZH = {"then": "然后", "so the answer is": "所以答案是", "so": "所以"}


def _check(acc: int, x: int) -> str:
    """The decomposed re-computation of ``acc + x``: tens first, then units (``68+10=78, 78+7=85``)."""
    tens, units = x - x % 10, x % 10
    mid = acc + tens
    return f"{acc}+{tens}={mid}, {mid}+{units}={mid + units}" if units else f"{acc}+{tens}={mid}"


def _slip(rng: random.Random, value: int) -> int:
    """A typical wrong partial sum: a dropped or doubled carry (off by ten) or off by one."""
    return value + rng.choice((-10, 10, -1, 1))


def write_solution(nums: list[int], style: str, mixed: bool, rng: random.Random, p_slip: float = 0.5,
                   max_checks: int = 1) -> str:
    """The completion (R1 format, answer boxed) for the sum of ``nums`` written in ``style``.

    ``mixed``: connectives in Chinese (worked and checked styles only). ``checked`` re-checks
    steps (each with probability 1/2, at least one, at most ``max_checks``: every digit is a token,
    so a check costs ~25 tokens); a checked step's first result is a slip with probability ``p_slip``.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    answer = sum(nums)
    if style == "short":
        return format_solution(str(answer), str(answer))

    def say(english: str) -> str:
        return CONNECTIVES_ZH[english] if mixed else english

    n_steps = len(nums) - 1
    checked: set[int] = set()
    if style == "checked":
        picks = [i for i in range(n_steps) if rng.random() < 0.5] or [rng.randrange(n_steps)]
        checked = set(rng.sample(picks, min(len(picks), max_checks)))
    parts, acc = [], nums[0]
    for i, x in enumerate(nums[1:]):
        new = acc + x
        if i not in checked:
            step = f"{acc}+{x}={new}"
        elif rng.random() < p_slip:
            step = f"{acc}+{x}={_slip(rng, new)}, wait, let me check: {_check(acc, x)}, {say('so')} {acc}+{x}={new}"
        else:
            step = f"{acc}+{x}={new}, let me check: {_check(acc, x)}"
        parts.append(step if i == 0 else f"{say('then')} {step}")
        acc = new
    think = ", ".join(parts) + f", {say('so the answer is')} {answer}"
    return format_solution(think, str(answer))


def styled_arithmetic_problem(rng: random.Random, min_terms: int = 3, max_terms: int = 3, p_short: float = 0.45,
                              p_checked: float = 0.15, p_mixed: float = 0.3, p_slip: float = 0.5) -> dict:
    """One ``arithmetic`` problem (same prompt and answer) with a solution in a randomly drawn style.

    ``p_short`` and ``p_checked`` are the shares of the short and checked styles (the rest is
    worked); ``p_mixed`` is the share of worked and checked solutions with Chinese connectives.
    """
    if not (0 <= p_short and 0 <= p_checked and p_short + p_checked <= 1 and 0 <= p_mixed <= 1 and 0 <= p_slip <= 1):
        raise ValueError(f"style shares must be probabilities with p_short + p_checked <= 1, got p_short={p_short}, "
                         f"p_checked={p_checked}, p_mixed={p_mixed}, p_slip={p_slip}")
    n = rng.randint(min_terms, max_terms)
    nums = [rng.randint(10, 99) for _ in range(n)]
    u = rng.random()
    style = "short" if u < p_short else "checked" if u < p_short + p_checked else "worked"
    mixed = style != "short" and rng.random() < p_mixed
    return {
        "prompt": f"Compute {'+'.join(map(str, nums))}.",
        "answer": str(sum(nums)),
        "completion": write_solution(nums, style, mixed, rng, p_slip=p_slip),
        "task": "arithmetic_styles",
        "style": style,
        "mixed": mixed,
    }


def classify_style(completion: str) -> str:
    """Which style a completion is written in: ``"checked"`` (re-checks a step), ``"worked"`` (has a
    partial sum), else ``"short"``. Reads only the text, so it applies to model samples too."""
    think = completion.split("</think>")[0] if isinstance(completion, str) else ""
    if "check" in think.lower():
        return "checked"
    return "worked" if "=" in think else "short"
