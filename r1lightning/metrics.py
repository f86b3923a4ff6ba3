"""Evaluation metrics of the R1 protocol as torchmetrics (summed correctly across DDP ranks).

R1 evaluates with k samples per question (temperature 0.6, top-p 0.95): pass@1 is the mean
correctness over the k samples, cons@k the correctness of the majority-voted answer.
``PassAtK`` uses the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), which is the
plain mean correctness for k = 1.
"""

from __future__ import annotations

from collections import Counter
from math import comb
from typing import Optional, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k for one question with ``num_correct`` of ``num_samples`` correct."""
    if not 1 <= k <= num_samples:
        raise ValueError(f"k must be in [1, {num_samples}], got {k}")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - comb(num_samples - num_correct, k) / comb(num_samples, k)


def majority_vote(answers: Sequence[Optional[str]], correct: Sequence[bool]) -> bool:
    """Correctness of the most frequent extracted answer (ties: first seen); no answer at all -> False."""
    votes = Counter(a for a in answers if a is not None and a != "")
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and a != "" and votes[a] == top)
    return bool(next(c for a, c in zip(answers, correct) if a == winner))


class PassAtK(Metric):
    """Mean pass@k over questions. ``update(correct)`` takes a (questions, samples) bool tensor."""

    full_state_update = False

    def __init__(self, k: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.k = k
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, correct: Tensor) -> None:
        correct = correct.bool().reshape(correct.shape[0], -1)  # (P, n)
        n = correct.shape[1]
        for c in correct.sum(1).tolist():
            self.total += pass_at_k(n, int(c), self.k)
        self.count += correct.shape[0]

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class ConsAtK(Metric):
    """Majority-vote accuracy (cons@k). ``update(answers, correct)``: per question, k extracted answers
    (None when a sample has no answer) and their correctness."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, answers: Sequence[Sequence[Optional[str]]], correct: Tensor) -> None:
        correct = correct.bool().reshape(len(answers), -1)
        for ans, cor in zip(answers, correct.tolist()):
            self.hits += float(majority_vote(list(ans), cor))
        self.count += len(answers)

    def compute(self) -> Tensor:
        return (self.hits / self.count.clamp(min=1)).float()
