"""Arithmetic written in several reasoning styles: the world in which the R1 behaviours can appear.

The plain ``arithmetic`` task has one solution format, so a base model SFT-trained on it has
nothing to change during RL but its accuracy: response length, reflective words and language
mixing stay flat (DeepSeek-R1 §3.3 reports all three moving). This task keeps the same kind of
problems and answers and varies how the *base's* SFT solutions are written, so that RL has styles
to choose between and a reason (the accuracy reward, nothing else) to prefer some:

* ``short``: the answer alone, ``<think>97</think>``: a model of a few million parameters cannot add three
  two-digit numbers in one go, so this style is short and almost always wrong.
* ``worked``: left-to-right partial sums joined by English connectives,
  ``23+45=68, then 68+17=85, so the answer is 85``: longer, more often right.
* ``checked``: a worked solution in which every step is computed a second time ("let me check")
  and, where the two results disagree, a third time after "wait"; the last result is carried on:
  ``68+17=85, let me check: 68+17=85``. With probability ``p_slip`` one of the first two results
  (either, equally often) is a typical slip (off by ten or by one), so the data teaches the model to
  compute the check afresh instead of copying the line above and to say "wait" only where the
  two disagree: ``68+17=75, let me check: 68+17=85, wait, 68+17=85``. A 1M-parameter model
  sampled at T = 1 slips on some steps (12% of direct sums in the measured base); a second
  computation that disagrees catches many of those slips, so checked solutions can be more often
  right, and the accuracy reward can raise the rate of reflective words ("let me", "check",
  "wait") and the response length without rewarding either. (A check by another route, tens then
  units, was tried first: the model's decomposed sums were less reliable than its direct ones,
  86% x 76% against 84%, so that check made solutions worse.) Measured on the base first committed
  (SFT from the 1.1M tiny base), this check does not pay either: checked samples are right in 37% of
  cases against 63% for worked ones.
  The model learnt the surface of checking, not the comparison: its two computations of a step
  disagree in 49% of steps (the data: 30%), the recomputation is right less often than the first
  (71% vs 79%), and "wait" follows a disagreement in only 26 of 99 cases while 30 of its 56 "wait"s
  follow agreeing values -- so RL removes the checks (README).
* ``check="column"`` (the committed base's, r1lightning/assets/tiny_base_styles): the direct
  sum checked column by column, units first, every line a one-digit sum with the carry said
  (``68+17=85, let me check: 8+7=15, 6+1+1=8, 85``; a slipped direct sum gets "wait" and the step
  restated with the checked value), with ``p_column`` of the SFT rows column-addition drills under
  their own prompt so the skill is learnt without raising the share of checked solutions. Measured
  by benchmarks/style_calibration.py (300 held-out prompts x 2 samples, T = 1) on a base SFT-trained
  on it from the 1.1M tiny base (600 steps, ``p_column=0.4``): the column check is right in 87% of
  steps against 85% for the direct sum, but checked solutions are right in 57% of cases against 69%
  for worked ones (78% vs 88% at T = 0.6) -- every extra token is one more chance to slip. On the
  committed base, a 3.6M-parameter model SFT-trained from scratch (configs/sft_tiny_base_styles.yaml,
  900 steps): the check is right in 90% of steps against 68% for the direct sum, and checked
  solutions are right in 72% of cases against 47% for worked ones, so RL spreads checking (README).
* Language mixing, conditioned on the prompt as in R1 ("particularly when RL prompts involve
  multiple languages", §2.3): a share ``p_zh_prompt`` of prompts are worded in Chinese
  (``计算 23+45+17。``), and a share ``p_mixed`` of their worked and checked solutions say the
  connectives in Chinese (``然后`` "then", ``所以答案是`` "so the answer is") while the rest of the
  chain of thought stays English; English prompts never get a mixed solution (``p_mixed_en``).
  Whether a solution mixes is drawn independently of its correctness, so only a
  language-consistency reward (target English) has a reason to remove mixing; without it the
  prompt keeps asking for it.

The arithmetic inside every style is exact (a slip is always followed by its correction), every
row's ``answer`` is the true sum, and the verifier is the same exact-match accuracy reward. The
train/held-out split is by the English wording of the problem (``split_key``), so the Chinese and
English wordings of one sum are always in the same split.
"""

from __future__ import annotations

import random

from r1lightning.data.tasks import format_solution

__all__ = ["CHECKS", "STYLES", "CONNECTIVES_ZH", "check_shares", "classify_style", "column_check", "column_drill",
           "connective", "draw_style", "styled_arithmetic_problem", "write_solution"]

STYLES = ("short", "worked", "checked")
#: English connective -> the Chinese one a mixed chain of thought uses instead.
CONNECTIVES_ZH = {"then": "然后", "so the answer is": "所以答案是"}


def _slip(rng: random.Random, value: int) -> int:
    """A typical wrong partial sum: a dropped or doubled carry (off by ten) or off by one."""
    return value + rng.choice((-10, 10, -1, 1))


def column_check(acc: int, x: int) -> str:
    """``acc + x`` (``acc`` < 1000, ``x`` of two digits) worked column by column, units first, each
    line a sum of single digits with the carry said: ``8+7=15, 6+1+1=8, 85`` for 68+17, and a
    hundreds line where ``acc`` has hundreds: ``3+5=8, 6+4+0=10, 1+1=2, 208`` for 163+45. So a
    check is easier than the direct multi-digit sum it checks."""
    a0, a1, a2 = acc % 10, acc // 10 % 10, acc // 100
    units = a0 + x % 10
    tens = a1 + x // 10 + units // 10
    lines = [f"{a0}+{x % 10}={units}", f"{a1}+{x // 10}+{units // 10}={tens}"]
    if a2:
        lines.append(f"{a2}+{tens // 10}={a2 + tens // 10}")
    return ", ".join(lines + [str(acc + x)])


def connective(english: str, mixed: bool) -> str:
    """A connective of a solution's chain of thought: in Chinese where the solution mixes languages."""
    return CONNECTIVES_ZH[english] if mixed else english


def check_shares(p_short: float, p_checked: float, **others: float) -> None:
    """Refuse style shares that are not probabilities or whose short and checked shares exceed 1, naming them all."""
    shares = {"p_short": p_short, "p_checked": p_checked, **others}
    if not (all(0 <= p <= 1 for p in shares.values()) and p_short + p_checked <= 1):
        got = ", ".join(f"{k}={v}" for k, v in shares.items())
        raise ValueError(f"style shares must be probabilities with p_short + p_checked <= 1, got {got}")


def draw_style(rng: random.Random, p_short: float, p_checked: float, p_zh_prompt: float, p_mixed: float,
               p_mixed_en: float) -> tuple[str, bool, bool]:
    """``(style, zh_prompt, mixed)`` of one row: the style by its shares (the rest is worked), a Chinese-worded
    prompt with probability ``p_zh_prompt``, and a mixed chain of thought (never for the short style) with
    probability ``p_mixed`` after a Chinese prompt, ``p_mixed_en`` after an English one."""
    u = rng.random()
    style = "short" if u < p_short else "checked" if u < p_short + p_checked else "worked"
    zh_prompt = rng.random() < p_zh_prompt
    mixed = style != "short" and rng.random() < (p_mixed if zh_prompt else p_mixed_en)
    return style, zh_prompt, mixed


CHECKS = ("recompute", "column")


def write_solution(nums: list[int], style: str, mixed: bool, rng: random.Random, p_slip: float = 0.3,
                   check: str = "recompute") -> str:
    """The completion (R1 format, answer boxed) for the sum of ``nums`` written in ``style``.

    ``mixed``: connectives in Chinese (worked and checked styles only). ``checked`` computes every
    step twice: ``check="recompute"`` the same way; with probability ``p_slip`` one of the two
    results is a slip, and a third, right result after "wait" settles it. ``check="column"`` checks
    the direct sum column by column (:func:`column_check`); with probability ``p_slip`` the direct
    result is a slip, the check disagrees, and after "wait" the step is restated with the checked value.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    answer = sum(nums)
    if style == "short":
        return format_solution(str(answer), str(answer))

    def say(english: str) -> str:
        return connective(english, mixed)

    parts, acc = [], nums[0]
    for i, x in enumerate(nums[1:]):
        new = acc + x
        if style == "worked":
            step = f"{acc}+{x}={new}"
        elif check == "column":
            if rng.random() < p_slip:
                step = f"{acc}+{x}={_slip(rng, new)}, let me check: {column_check(acc, x)}, wait, {acc}+{x}={new}"
            else:
                step = f"{acc}+{x}={new}, let me check: {column_check(acc, x)}"
        elif rng.random() < p_slip:
            first, second = (_slip(rng, new), new) if rng.random() < 0.5 else (new, _slip(rng, new))
            step = f"{acc}+{x}={first}, let me check: {acc}+{x}={second}, wait, {acc}+{x}={new}"
        else:
            step = f"{acc}+{x}={new}, let me check: {acc}+{x}={new}"
        parts.append(step if i == 0 else f"{say('then')} {step}")
        acc = new
    think = ", ".join(parts) + f", {say('so the answer is')} {answer}"
    return format_solution(think, str(answer))


def styled_arithmetic_problem(rng: random.Random, min_terms: int = 3, max_terms: int = 3, p_short: float = 0.35,
                              p_checked: float = 0.2, p_zh_prompt: float = 0.3, p_mixed: float = 0.8,
                              p_mixed_en: float = 0.0, p_slip: float = 0.3, check: str = "recompute",
                              p_column: float = 0.0) -> dict:
    """One sum of two-digit numbers, its prompt in English or Chinese, with a solution in a randomly drawn style.

    ``check`` picks how checked solutions check a step (:func:`write_solution`). With probability
    ``p_column`` the row is instead a column-addition drill (:func:`column_drill`):
    SFT data for the base teaches the check's method as a skill of its own, under its own prompt,
    so the share of checked solutions to ``Compute ...`` prompts stays ``p_checked``.

    ``p_short`` and ``p_checked`` are the shares of the short and checked styles (the rest is
    worked); ``p_zh_prompt`` the share of prompts worded in Chinese; ``p_mixed`` (``p_mixed_en``)
    the share of worked and checked solutions to Chinese (English) prompts whose connectives are
    Chinese.
    """
    check_shares(p_short, p_checked, p_zh_prompt=p_zh_prompt, p_mixed=p_mixed, p_mixed_en=p_mixed_en, p_slip=p_slip,
                 p_column=p_column)
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if p_column and rng.random() < p_column:
        return column_drill(rng)
    n = rng.randint(min_terms, max_terms)
    nums = [rng.randint(10, 99) for _ in range(n)]
    expr = "+".join(map(str, nums))
    style, zh_prompt, mixed = draw_style(rng, p_short, p_checked, p_zh_prompt, p_mixed, p_mixed_en)
    return {
        "prompt": f"计算 {expr}。" if zh_prompt else f"Compute {expr}.",
        "split_key": f"Compute {expr}.",
        "answer": str(sum(nums)),
        "completion": write_solution(nums, style, mixed, rng, p_slip=p_slip, check=check),
        "task": "arithmetic_styles",
        "style": style,
        "zh_prompt": zh_prompt,
        "mixed": mixed,
    }


def column_drill(rng: random.Random) -> dict:
    """``Add 68+17 column by column.`` solved as a check computes it: a partial sum of the chain (10..198)
    plus a two-digit number. Its own prompt, no reflective words, never a held-out problem (those are
    three-term sums)."""
    acc, x = rng.randint(10, 198), rng.randint(10, 99)
    prompt = f"Add {acc}+{x} column by column."
    return {"prompt": prompt, "split_key": prompt, "answer": str(acc + x),
            "completion": format_solution(column_check(acc, x), str(acc + x)), "task": "arithmetic_styles",
            "style": "column", "zh_prompt": False, "mixed": False}


def classify_style(completion: str) -> str:
    """Which style a completion is written in: ``"checked"`` (re-checks a step), ``"worked"`` (has a
    partial sum), else ``"short"``. Reads only the text, so it applies to model samples too."""
    think = completion.split("</think>")[0] if isinstance(completion, str) else ""
    if "check" in think.lower():
        return "checked"
    return "worked" if "=" in think else "short"
