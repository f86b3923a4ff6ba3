"""Evaluation metrics of the R1 protocol as torchmetrics (summed correctly across DDP ranks).

R1 evaluates with k samples per question (temperature 0.6, top-p 0.95): pass@1 is the mean
correctness over the k samples, cons@k the correctness of the majority-voted answer.
``PassAtK`` uses the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), which is the
plain mean correctness for k = 1.

:class:`BenchmarkMetrics` keeps one row per question (correct count, samples, vote) so that pass@k for
any k <= n, cons@n and a bootstrap confidence interval over questions can be computed after the rows of
all ranks are gathered: 30 AIME questions give pass@1 a 95% interval of about +-8 points at 50%, and
users compare checkpoints with it.
"""

from __future__ import annotations

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


def bootstrap_ci(values: Tensor, num_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (P,), resampling the P questions.

    Resampling questions (not samples) is what makes the interval honest for pass@1 over k samples: the
    k samples of one question are not independent draws of the benchmark. Deterministic for a seed.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    values = values.detach().double().reshape(-1).cpu()  # (P,)
    if values.numel() == 0:
        return float("nan"), float("nan")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(values.numel(), (num_resamples, values.numel()), generator=gen)  # (B, P)
    means = values[idx].mean(1)  # (B,)
    alpha = (1.0 - confidence) / 2
    lo, hi = torch.quantile(means, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    return lo, hi


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
    (None when a sample has no answer) and their correctness. Equivalent answers (``1/2``, ``0.5``,
    ``\\frac{1}{2}``) vote together (:func:`r1lightning.rewards.voting.majority_answers`)."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, answers: Sequence[Sequence[Optional[str]]], correct: Tensor) -> None:
        from r1lightning.rewards.voting import majority_answers

        correct = correct.bool().reshape(len(answers), -1)
        for _, ok in majority_answers([list(a) for a in answers], correct.tolist()):
            self.hits += float(ok)
        self.count += len(answers)

    def compute(self) -> Tensor:
        return (self.hits / self.count.clamp(min=1)).float()


class BenchmarkMetrics(Metric):
    """Everything the R1 evaluation reports for one benchmark, gathered across ranks.

    ``update`` takes one batch of questions: ``num_correct`` (P,) and ``num_samples`` (P,) per question,
    ``vote`` (P,) the cons@k correctness (ignored when the benchmark does not vote, e.g. code), and the sums
    of the per-sample statistics. ``compute`` returns plain floats:

    - ``pass@1``: mean over questions of (correct samples / samples) -- R1's pass@1 with k samples;
    - ``pass@{k}`` for each k in ``pass_k`` (unbiased, Chen et al. 2021) with k <= every question's samples;
    - ``cons@{n}``: majority-vote accuracy (when ``votes``);
    - ``pass@1_ci_low`` / ``pass@1_ci_high``: bootstrap interval over questions (``confidence``);
    - ``completion_length`` (mean tokens), ``truncated_ratio``, ``format_rate``, ``language_consistency``
      (mean over samples that were scored for it), ``questions``, ``samples``.
    """

    full_state_update = False

    def __init__(self, pass_k: Sequence[int] = (1,), votes: bool = True, num_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if any(int(k) < 1 for k in pass_k):
            raise ValueError(f"pass_k values must be >= 1, got {list(pass_k)}")
        self.pass_k = sorted({int(k) for k in pass_k})
        self.votes = votes
        self.num_resamples, self.confidence, self.seed = num_resamples, confidence, seed
        for name in ("num_correct", "num_samples", "vote"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        for name in ("tokens", "truncated", "formatted", "lang_sum", "lang_count"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, num_correct: Tensor, num_samples: Tensor, vote: Optional[Tensor] = None, tokens: float = 0.0,
               truncated: float = 0.0, formatted: float = 0.0, lang_sum: float = 0.0, lang_count: float = 0.0) -> None:
        num_correct = torch.as_tensor(num_correct, dtype=torch.float64).reshape(-1)  # (P,)
        num_samples = torch.as_tensor(num_samples, dtype=torch.float64).reshape(-1)  # (P,)
        if num_correct.shape != num_samples.shape or bool((num_correct > num_samples).any()):
            raise ValueError("num_correct and num_samples must have the same length, with correct <= samples")
        if bool((num_samples < 1).any()):
            raise ValueError("every question needs at least one sample")
        vote = torch.zeros_like(num_correct) if vote is None else torch.as_tensor(vote, dtype=torch.float64).reshape(-1)
        self.num_correct.append(num_correct.to(self.device))
        self.num_samples.append(num_samples.to(self.device))
        self.vote.append(vote.to(self.device))
        self.tokens += tokens
        self.truncated += truncated
        self.formatted += formatted
        self.lang_sum += lang_sum
        self.lang_count += lang_count

    @staticmethod
    def _cat(state) -> Tensor:
        if isinstance(state, Tensor):
            return state.reshape(-1).double().cpu()
        return torch.cat([t.reshape(-1) for t in state]).double().cpu() if state else torch.zeros(0, dtype=torch.float64)

    def compute(self) -> dict[str, float]:
        correct, samples, vote = self._cat(self.num_correct), self._cat(self.num_samples), self._cat(self.vote)
        questions, total = correct.numel(), float(samples.sum())
        nan = float("nan")
        per_question = correct / samples.clamp(min=1)  # (P,) pass@1 of each question
        out: dict[str, float] = {"pass@1": float(per_question.mean()) if questions else nan}
        lo, hi = bootstrap_ci(per_question, self.num_resamples, self.confidence, self.seed)
        out["pass@1_ci_low"], out["pass@1_ci_high"] = lo, hi
        n_min = int(samples.min()) if questions else 0
        for k in self.pass_k:
            if k > 1 and k <= n_min:
                out[f"pass@{k}"] = sum(pass_at_k(int(n), int(c), k) for n, c in zip(samples.tolist(), correct.tolist())) / questions
        if self.votes and questions:
            n_max = int(samples.max())
            out[f"cons@{n_max}" if n_min == n_max else "cons@k"] = float(vote.mean())
        out["completion_length"] = float(self.tokens) / total if total else nan
        out["truncated_ratio"] = float(self.truncated) / total if total else nan
        out["format_rate"] = float(self.formatted) / total if total else nan
        out["language_consistency"] = float(self.lang_sum / self.lang_count) if float(self.lang_count) else nan
        out["questions"] = float(questions)
        out["samples"] = total
        return out
