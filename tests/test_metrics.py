"""Evaluation metrics against hand-computed cases and naive references (r1lightning/metrics.py)."""

from __future__ import annotations

import itertools

import pytest
import torch

from r1lightning.metrics import BenchmarkMetrics, ConsAtK, PassAtK, bootstrap_ci, pass_at_k


def naive_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of the n samples (c of them correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 1, 0.25),           # k = 1 is the mean correctness: 1/4
    (4, 1, 2, 0.5),            # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (5, 2, 3, 0.9),            # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (16, 0, 8, 0.0),           # nothing correct: never
    (16, 9, 8, 1.0),           # n - c = 7 < k = 8: every 8-subset holds a correct sample
    (3, 3, 1, 1.0),
])
def test_pass_at_k_hand_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(naive_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_rejects_k_out_of_range():
    with pytest.raises(ValueError, match="k must be in"):
        pass_at_k(4, 1, 5)


def test_bootstrap_ci_matches_a_naive_loop():
    values = torch.tensor([1.0, 0.0, 0.5, 0.25, 1.0, 0.0, 0.75], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(len(values), (200, len(values)), generator=gen)
    means = sorted(float(sum(values[j] for j in row) / len(values)) for row in idx.tolist())
    expected = torch.quantile(torch.tensor(means, dtype=torch.float64), torch.tensor([0.05, 0.95], dtype=torch.float64))
    lo, hi = bootstrap_ci(values, num_resamples=200, confidence=0.9, seed=3)
    assert (lo, hi) == pytest.approx(expected.tolist(), abs=1e-12)


def test_bootstrap_ci_edge_cases_and_width():
    assert bootstrap_ci(torch.full((30,), 0.4)) == pytest.approx((0.4, 0.4))  # no spread, no interval
    lo, hi = bootstrap_ci(torch.tensor([]))
    assert lo != lo and hi != hi  # NaN: nothing was evaluated
    # 30 questions at 50%: the normal approximation gives +-1.96 * sqrt(.25 / 30) = +-0.179 (the issue's
    # "30 AIME problems make +-8 points" is the standard error, 0.091)
    lo, hi = bootstrap_ci(torch.tensor([1.0, 0.0] * 15), num_resamples=4000)
    assert 0.30 < hi - lo < 0.40 and lo < 0.5 < hi
    with pytest.raises(ValueError):
        bootstrap_ci(torch.ones(3), confidence=1.0)


def test_benchmark_metrics_hand_case():
    m = BenchmarkMetrics(pass_k=[1, 2, 4], votes=True, num_resamples=100)
    # question 0: 1 of 4 correct; question 1: 4 of 4; question 2: 0 of 4
    m.update(torch.tensor([1, 4]), torch.tensor([4, 4]), torch.tensor([0.0, 1.0]), tokens=80.0, truncated=1.0,
             formatted=6.0, lang_sum=7.0, lang_count=8.0)
    m.update(torch.tensor([0]), torch.tensor([4]), torch.tensor([0.0]), tokens=40.0, truncated=3.0, formatted=2.0,
             lang_sum=4.0, lang_count=4.0)
    out = m.compute()
    assert out["pass@1"] == pytest.approx((0.25 + 1.0 + 0.0) / 3)
    assert out["pass@2"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)       # 1 - C(3,2)/C(4,2) = 0.5 for question 0
    assert out["pass@4"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert out["cons@4"] == pytest.approx(1 / 3)
    assert out["completion_length"] == pytest.approx(120 / 12)
    assert out["truncated_ratio"] == pytest.approx(4 / 12)
    assert out["format_rate"] == pytest.approx(8 / 12)
    assert out["language_consistency"] == pytest.approx(11 / 12)
    assert (out["questions"], out["samples"]) == (3.0, 12.0)
    assert out["pass@1_ci_low"] <= out["pass@1"] <= out["pass@1_ci_high"]


def test_benchmark_metrics_pass_at_k_needs_k_samples_and_code_sets_do_not_vote():
    m = BenchmarkMetrics(pass_k=[1, 8], votes=False)
    m.update(torch.tensor([1, 2]), torch.tensor([4, 4]))
    out = m.compute()
    assert "pass@8" not in out  # only 4 samples per question: pass@8 is not defined
    assert not any(k.startswith("cons@") for k in out)
    assert out["pass@1"] == pytest.approx(0.375)


def test_benchmark_metrics_rejects_impossible_counts():
    m = BenchmarkMetrics()
    with pytest.raises(ValueError):
        m.update(torch.tensor([5]), torch.tensor([4]))
    with pytest.raises(ValueError):
        m.update(torch.tensor([0]), torch.tensor([0]))


def test_benchmark_metrics_merges_shards_like_one_process():
    """What the rank gather does: two shards' states concatenated give the metrics of the whole set."""
    whole, a, b = BenchmarkMetrics(pass_k=[2]), BenchmarkMetrics(pass_k=[2]), BenchmarkMetrics(pass_k=[2])
    correct, samples, votes = torch.tensor([0, 1, 2, 2, 0]), torch.full((5,), 2), torch.tensor([0., 0., 1., 1., 0.])
    whole.update(correct, samples, votes, tokens=50.0)
    a.update(correct[::2], samples[::2], votes[::2], tokens=30.0)
    b.update(correct[1::2], samples[1::2], votes[1::2], tokens=20.0)
    a.merge_state(b)
    assert a.compute() == pytest.approx(whole.compute(), nan_ok=True)


def test_passatk_and_consatk_metrics_still_agree_with_the_functions():
    p = PassAtK(k=2)
    p.update(torch.tensor([[True, False, False], [True, True, True]]))
    assert float(p.compute()) == pytest.approx((pass_at_k(3, 1, 2) + 1.0) / 2)
    c = ConsAtK()
    # question 1: "2" wins 2-1 and is wrong; question 2: the only vote is right; question 3: 1/2 = 0.5 = \frac{1}{2}
    # outvote 3 (3 votes to 2) although they are written three ways
    c.update([["1", "2", "2", None, None], ["5", None, None, None, None], ["1/2", "0.5", "\\frac{1}{2}", "3", "3"]],
             torch.tensor([[True, False, False, False, False], [True] + [False] * 4, [True, True, True, False, False]]))
    assert float(c.compute()) == pytest.approx(2 / 3)
