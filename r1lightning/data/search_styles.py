"""A search problem written in several styles: a world in which checking pays even for a 1M-parameter model.

In ``arithmetic_styles`` a check re-derives what the model just computed, so it can only pay if the
second computation is more reliable than the first; at 1M parameters it never was (every extra token
is another chance to slip, r1lightning/data/styles.py). Here checking is *easier than answering*, the
asymmetry R1's reflection exploits: the task is to find which of four candidates completes a sum,

    Find x among 27, 17, 57, 37 with 45+x=62.

Answering directly is a subtraction (62-45), which the tiny base was never taught; checking a candidate
is an addition it does well (45+27=72) and a comparison with the target. The candidates share the
answer's last digit, so the answer cannot be read off the units. The base's SFT solutions come in
three styles, and RL chooses among them for the accuracy reward alone:

* ``short``: the answer alone, ``<think>17</think>`` -- a guess unless the model learns to subtract.
* ``worked``: one candidate computed and taken, ``45+17=62, so the answer is 17`` -- in the data the
  right one, so the model learns to *pick* a candidate and add, not to test it.
* ``checked``: candidates tried in a random order until one reaches the target; a wrong one is
  rejected after its sum ("45+27=72, wait, not 62"), the right one confirmed ("45+17=62, check:
  62=62"): ``45+27=72, wait, not 62, then 45+17=62, check: 62=62, so the answer is 17``. The right
  candidate is equally likely at each position, so a checked solution tries 2.5 candidates on average.

Language mixing as in ``arithmetic_styles``: a share ``p_zh_prompt`` of prompts are worded in Chinese
(``在 27, 17, 57, 37 中找 x，使 45+x=62。``) and a share ``p_mixed`` of their worked and checked solutions
say the connectives in Chinese (然后, 所以答案是); English prompts never mix. The split is by the
English wording, so both wordings of a problem are in the same split. Every solution is right; the
answer (one number) is verified by exact match.

Measured (calibrated and set aside, like the column check at 1.1M parameters in styles.py): the premise
fails. SFT from tiny_base on these solutions (the then configs/sft_tiny_base_styles.yaml, which fine-tuned
tiny_base, with ``train_data`` this task, ``max_length`` 208), benchmarks/style_calibration.py
``--task search_styles`` at T = 1 on 300 held-out prompts x 2: after 450 steps every style is weak (short
31% right, worked 37%, checked 30%: the model miscopies the prompt's numbers, sums a candidate right in 73%
of trials, and its verdict is right in 80%); after 900 steps the model has learnt the subtraction from the
short solutions (short 79% right, worked 72%) while checked solutions are right in 51% (sums right 90%,
verdicts 74%: "check: 83=83" compares the sum with itself). So answering directly beats checking, and RL
would remove the checks. With ``p_checked=0.3`` (450 steps) checked solutions were right in 23%.
"""

from __future__ import annotations

import random

from r1lightning.data.styles import STYLES, check_shares, connective, draw_style
from r1lightning.data.tasks import format_solution

__all__ = ["search_problem", "write_search_solution"]


def write_search_solution(a: int, candidates: list[int], answer: int, style: str, mixed: bool,
                          rng: random.Random) -> str:
    """The completion (R1 format, answer boxed) for ``a + x = a + answer`` with ``x`` among ``candidates``."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if answer not in candidates:
        raise ValueError(f"the answer {answer} is not among the candidates {candidates}")
    target = a + answer

    def say(english: str) -> str:
        return connective(english, mixed)

    if style == "short":
        return format_solution(str(answer), str(answer))
    if style == "worked":
        return format_solution(f"{a}+{answer}={target}, {say('so the answer is')} {answer}", str(answer))
    wrong = [c for c in candidates if c != answer]
    rng.shuffle(wrong)
    tried = wrong[: rng.randrange(len(candidates))] + [answer]
    steps = [f"{a}+{c}={a + c}, wait, not {target}" for c in tried[:-1]]
    steps.append(f"{a}+{answer}={target}, check: {target}={target}")
    think = f", {say('then')} ".join(steps) + f", {say('so the answer is')} {answer}"
    return format_solution(think, str(answer))


def search_problem(rng: random.Random, n_candidates: int = 4, p_short: float = 0.45, p_checked: float = 0.15,
                   p_zh_prompt: float = 0.3, p_mixed: float = 0.8, p_mixed_en: float = 0.0) -> dict:
    """One problem: ``a`` and the answer two-digit, ``n_candidates`` distinct candidates sharing the
    answer's units digit, the prompt in English or Chinese, a solution in a randomly drawn style."""
    check_shares(p_short, p_checked, p_zh_prompt=p_zh_prompt, p_mixed=p_mixed, p_mixed_en=p_mixed_en)
    if not 2 <= n_candidates <= 9:
        raise ValueError(f"n_candidates must be 2..9 (distinct two-digit numbers with one units digit), "
                         f"got {n_candidates}")
    a = rng.randint(10, 99)
    units = rng.randrange(10)
    candidates = [10 * t + units for t in rng.sample(range(1, 10), n_candidates)]
    answer = rng.choice(candidates)
    listed = ", ".join(map(str, candidates))
    english = f"Find x among {listed} with {a}+x={a + answer}."
    style, zh_prompt, mixed = draw_style(rng, p_short, p_checked, p_zh_prompt, p_mixed, p_mixed_en)
    return {
        "prompt": f"在 {listed} 中找 x，使 {a}+x={a + answer}。" if zh_prompt else english,
        "split_key": english,
        "answer": str(answer),
        "completion": write_search_solution(a, candidates, answer, style, mixed, rng),
        "task": "search_styles",
        "style": style,
        "zh_prompt": zh_prompt,
        "mixed": mixed,
    }
