"""DAPO dynamic sampling helpers: keep mask and resample indices by hand, the splice on hand-built lists."""

import dataclasses

import pytest
import torch

from r1lightning.advantages import zero_std_group_mask
from r1lightning.dapo import ScoredCompletions, keep_mask, splice_groups, zero_variance_groups

# ---------------------------------------------------------------- keep_mask / zero_variance_groups


def test_keep_mask_hand():
    # G = 2, groups [1, 1] [0, 1] [0, 0] [0.5, 0.25]: the 2nd and 4th have spread
    rewards = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.25]
    mask = keep_mask(rewards, 2)
    assert mask.dtype == torch.bool and mask.shape == (8,)
    assert mask.tolist() == [False, False, True, True, False, False, True, True]
    assert torch.equal(keep_mask(torch.tensor(rewards), 2), mask)  # tensor or list
    assert zero_variance_groups(rewards, 2) == [0, 2]
    assert zero_variance_groups(torch.tensor(rewards), 2) == [0, 2]


def test_keep_mask_matches_a_loop_and_zero_std_group_mask():
    rewards = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(3)).float()  # G = 4: many equal groups
    expected = []
    for k in range(10):
        group = rewards[4 * k : 4 * k + 4].tolist()
        expected += [max(group) != min(group)] * 4
    assert keep_mask(rewards, 4).tolist() == expected
    assert zero_variance_groups(rewards, 4) == [k for k in range(10) if not expected[4 * k]]
    assert zero_variance_groups(rewards, 4) == zero_std_group_mask(rewards, 4).nonzero().flatten().tolist()


def test_keep_mask_edges():
    assert keep_mask([0.3, 0.3, 0.3], 3).tolist() == [False] * 3  # all equal: nothing kept
    assert zero_variance_groups([0.3, 0.3, 0.3], 3) == [0]
    assert keep_mask([1.0, 0.0, 0.5], 1).tolist() == [False] * 3  # G = 1: a lone sample has no spread
    assert zero_variance_groups([0.0, 1.0, 0.0, 1.0], 2) == []  # every group informative
    assert keep_mask([True, False], 2).tolist() == [True, True]  # bool rewards are compared as numbers
    with pytest.raises(ValueError, match="multiple of group_size=2"):
        keep_mask([1.0, 0.0, 1.0], 2)
    with pytest.raises(ValueError, match="empty"):
        zero_variance_groups([], 2)


# ---------------------------------------------------------------- splice_groups

G = 2


def batch(tag: str, num_groups: int, logprobs: bool = True) -> ScoredCompletions:
    """Rows named ``{tag}{row}``; every field derived from the row so a misplaced row is visible."""
    n = num_groups * G
    return ScoredCompletions(
        completion_ids=[[ord(tag), r] for r in range(n)],
        texts=[f"{tag}{r}" for r in range(n)],
        truncated=[tag == "n" and r % 2 == 0 for r in range(n)],
        rewards=[float(r) + (100.0 if tag == "n" else 0.0) for r in range(n)],
        per_fn={"accuracy": [float(r) for r in range(n)], "format": [-float(r) for r in range(n)]},
        logprobs=[[-0.1 * r] * (r + 1) for r in range(n)] if logprobs else None,
    )


def test_splice_one_group_of_three():
    # 3 groups of G = 2 (rows o0..o5); group 1 (rows 2, 3) regenerated as rows n0, n1
    old, new = batch("o", 3), batch("n", 1)
    out = splice_groups(old, [1], new, G)
    assert out.texts == ["o0", "o1", "n0", "n1", "o4", "o5"]
    assert out.completion_ids == [[111, 0], [111, 1], [110, 0], [110, 1], [111, 4], [111, 5]]  # ord("o"), ord("n")
    assert out.truncated == [False, False, True, False, False, False]  # n0 truncated, n1 not
    assert out.rewards == [0.0, 1.0, 100.0, 101.0, 4.0, 5.0]
    assert out.per_fn == {"accuracy": [0.0, 1.0, 0.0, 1.0, 4.0, 5.0], "format": [-0.0, -1.0, -0.0, -1.0, -4.0, -5.0]}
    assert out.logprobs == [[-0.0], [-0.1] * 2, [-0.0], [-0.1] * 2, [-0.4] * 5, [-0.5] * 6]
    # the inputs are untouched
    assert old == batch("o", 3) and new == batch("n", 1)


def test_splice_groups_in_any_order_without_logprobs():
    # groups [2, 0] regenerated in that order: new rows n0, n1 -> group 2; n2, n3 -> group 0
    old, new = batch("o", 3, logprobs=False), batch("n", 2, logprobs=False)
    out = splice_groups(old, [2, 0], new, G)
    assert out.texts == ["n2", "n3", "o2", "o3", "n0", "n1"]
    assert out.rewards == [102.0, 103.0, 2.0, 3.0, 100.0, 101.0]
    assert out.per_fn["format"] == [-2.0, -3.0, -2.0, -3.0, -0.0, -1.0]
    assert out.logprobs is None


def test_splice_matches_the_in_place_loop():
    # the reference: the in-place loop the trainer ran before these helpers (one round)
    old, new, dead = batch("o", 4), batch("n", 2), [3, 1]
    ref = dataclasses.replace(old, completion_ids=list(old.completion_ids), texts=list(old.texts),
                              truncated=list(old.truncated), rewards=list(old.rewards),
                              per_fn={k: list(v) for k, v in old.per_fn.items()}, logprobs=list(old.logprobs))
    for j, grp in enumerate(dead):
        src, dst = slice(j * G, (j + 1) * G), slice(grp * G, (grp + 1) * G)
        for field in ("completion_ids", "texts", "truncated", "rewards", "logprobs"):
            getattr(ref, field)[dst] = getattr(new, field)[src]
        for k in ref.per_fn:
            ref.per_fn[k][dst] = new.per_fn[k][src]
    assert splice_groups(old, dead, new, G) == ref


def test_splice_nothing_and_everything():
    old = batch("o", 2)
    same = splice_groups(old, [], batch("n", 0), G)
    assert same == old and same.texts is not old.texts  # a copy, not the same lists
    new = batch("n", 2)
    assert splice_groups(old, [0, 1], new, G) == new  # all groups replaced in order -> new


@pytest.mark.parametrize("groups, new, match", [
    ([1], batch("n", 2), "new has 4 rows; 1 regenerated groups of 2 need 2"),
    ([3], batch("n", 1), r"in \[0, 3\)"),  # out of range
    ([-1], batch("n", 1), r"in \[0, 3\)"),
    ([1, 1], batch("n", 2), "distinct"),
    ([1], batch("n", 1, logprobs=False), "log-probs in only one"),  # stale log-probs would stay behind
    ([1], dataclasses.replace(batch("n", 1), per_fn={"accuracy": [0.0, 1.0]}), "different reward functions"),
    ([1], dataclasses.replace(batch("n", 1), texts=["n0"]), "one entry per row"),
])
def test_splice_refuses_inconsistent_inputs(groups, new, match):
    with pytest.raises(ValueError, match=match):
        splice_groups(batch("o", 3), groups, new, G)


def test_splice_refuses_bad_old_and_group_size():
    with pytest.raises(ValueError, match="not a multiple of group_size=4"):
        splice_groups(batch("o", 3), [], batch("n", 0), 4)  # 6 rows
    with pytest.raises(ValueError, match="positive int"):
        splice_groups(batch("o", 3), [], batch("n", 0), 0)
    with pytest.raises(ValueError, match="log-probs in only one"):
        splice_groups(batch("o", 3, logprobs=False), [0], batch("n", 1), G)
