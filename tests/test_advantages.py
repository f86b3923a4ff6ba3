"""Group-relative advantages: hand cases, a naive per-group reference, edge cases."""

import statistics

import pytest
import torch

from r1lightning.advantages import expand_group_mask, group_advantages, zero_std_group_mask

EPS = 1e-4


# ---------------------------------------------------------------- hand-computed cases


def test_hand_group_of_two():
    # rewards [1, 0 | 0, 1], G = 2. Each group: mean 0.5, centred +-0.5,
    # unbiased std = sqrt((0.25 + 0.25) / (2 - 1)) = 0.70711, adv = 0.5 / (0.70711 + 1e-4) = 0.70701
    adv, stats = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=2)
    torch.testing.assert_close(adv, torch.tensor([0.7070068, -0.7070068, -0.7070068, 0.7070068]), atol=1e-6, rtol=0)
    torch.testing.assert_close(stats["group_std"], torch.tensor([0.7071068, 0.7071068]), atol=1e-6, rtol=0)
    # batch: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735; no group has equal rewards
    torch.testing.assert_close(stats["reward_mean"], torch.tensor(0.5))
    torch.testing.assert_close(stats["reward_std"], torch.tensor(0.5773503), atol=1e-6, rtol=0)
    assert stats["frac_zero_std"].item() == 0.0


def test_hand_group_of_four():
    # rewards [1, 0, 0, 1], G = 4: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735,
    # adv = 0.5 / (0.57735 + 1e-4) = 0.86588
    adv, _ = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)
    torch.testing.assert_close(adv, torch.tensor([0.8658754, -0.8658754, -0.8658754, 0.8658754]), atol=1e-6, rtol=0)
    # population std: sqrt(4 * 0.25 / 4) = 0.5, adv = 0.5 / 0.5001 = 0.99980
    adv, _ = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4, std="population")
    torch.testing.assert_close(adv, torch.tensor([0.9998000, -0.9998000, -0.9998000, 0.9998000]), atol=1e-6, rtol=0)


def test_hand_one_right_of_four_population_vs_unbiased():
    # rewards [1, 0, 0, 0], G = 4: mean 0.25, centred [0.75, -0.25, -0.25, -0.25],
    # sum of squares 0.5625 + 3 * 0.0625 = 0.75
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    # population: sqrt(0.75 / 4) = sqrt(3)/4 = 0.4330127; 0.75 / 0.4331127 = 1.7316509, -0.25 / 0.4331127 = -0.5772170
    adv, stats = group_advantages(rewards, 4, std="population")
    torch.testing.assert_close(adv, torch.tensor([1.7316509, -0.5772170, -0.5772170, -0.5772170]), atol=1e-6, rtol=0)
    torch.testing.assert_close(stats["group_std"], torch.tensor([0.4330127]), atol=1e-7, rtol=0)
    torch.testing.assert_close(stats["reward_std"], torch.tensor(0.4330127), atol=1e-7, rtol=0)  # one group = batch
    # unbiased: sqrt(0.75 / 3) = 0.5 exactly; 0.75 / 0.5001 = 1.4997001, -0.25 / 0.5001 = -0.4999000
    adv, stats = group_advantages(rewards, 4, std="unbiased")
    torch.testing.assert_close(adv, torch.tensor([1.4997001, -0.4999000, -0.4999000, -0.4999000]), atol=1e-6, rtol=0)
    assert stats["group_std"].item() == 0.5
    # default is unbiased
    assert torch.equal(group_advantages(rewards, 4)[0], adv)
    # batch scale with one group divides by the same std: identical to "group" in both modes
    for std in ("unbiased", "population"):
        torch.testing.assert_close(group_advantages(rewards, 4, scale="batch", std=std)[0],
                                   group_advantages(rewards, 4, scale="group", std=std)[0], atol=0, rtol=0)


def test_hand_batch_scale_population():
    # [1, 0 | 0, 0], G = 2, scale="batch": batch mean 0.25, sum of squares 0.75 (as above)
    # population batch std sqrt(0.75 / 4) = 0.4330127; group 0 centred +-0.5 -> 0.5 / 0.4331127 = 1.1544339;
    # group 1 all equal -> exactly 0
    adv, stats = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2, scale="batch", std="population")
    torch.testing.assert_close(adv, torch.tensor([1.1544339, -1.1544339, 0.0, 0.0]), atol=1e-6, rtol=0)
    assert adv[2:].tolist() == [0.0, 0.0]
    # group std of [1, 0] with population: 0.5; of [0, 0]: 0
    torch.testing.assert_close(stats["group_std"], torch.tensor([0.5, 0.0]), atol=1e-7, rtol=0)
    # unbiased batch std sqrt(0.75 / 3) = 0.5: 0.5 / 0.5001 = 0.9998000
    adv, _ = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 2, scale="batch", std="unbiased")
    torch.testing.assert_close(adv, torch.tensor([0.9998000, -0.9998000, 0.0, 0.0]), atol=1e-6, rtol=0)


def test_hand_batch_and_none_scales():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # batch: group-centred +-0.5 divided by the whole batch's std 0.57735: 0.5 / 0.57745 = 0.86588
    adv, _ = group_advantages(rewards, group_size=2, scale="batch")
    torch.testing.assert_close(adv, torch.tensor([0.8658754, -0.8658754, -0.8658754, 0.8658754]), atol=1e-6, rtol=0)
    # none (Dr. GRPO): just r - mean(group)
    adv, _ = group_advantages(rewards, group_size=2, scale="none")
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5]


def test_hand_mixed_with_a_solved_group():
    # [1, 1 | 0, 1]: group 0 all correct -> exactly 0; group 1 as in the G = 2 case
    adv, stats = group_advantages(torch.tensor([1.0, 1.0, 0.0, 1.0]), group_size=2)
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.0, -0.7070068, 0.7070068]), atol=1e-6, rtol=0)
    assert stats["frac_zero_std"].item() == 0.5  # 1 of 2 groups
    # batch mode: group 0 still exactly 0 even though the batch std is not 0
    adv, _ = group_advantages(torch.tensor([1.0, 1.0, 0.0, 1.0]), group_size=2, scale="batch")
    assert adv[:2].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- naive reference


def _reference(rewards: list[float], g: int, scale: str, unbiased: bool) -> list[float]:
    """Per-group loop with the statistics module (float64)."""
    std = statistics.stdev if unbiased else statistics.pstdev
    out = []
    for k in range(0, len(rewards), g):
        group = rewards[k : k + g]
        mean = sum(group) / g
        if max(group) == min(group):
            out += [0.0] * g
            continue
        denom = {"group": std(group) + EPS, "batch": std(rewards) + EPS, "none": 1.0}[scale]
        out += [(r - mean) / denom for r in group]
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("std", ["unbiased", "population"])
@pytest.mark.parametrize("g", [2, 3, 8])
def test_matches_reference_loop(scale, std, g):
    gen = torch.Generator().manual_seed(g)
    rewards = torch.randint(0, 3, (6 * g,), generator=gen).float() * 0.5  # ties and equal groups
    rewards[:g] = 1.0  # one group certainly all equal
    rewards[g : 2 * g] = torch.rand(g, generator=gen)  # one with continuous rewards
    adv, stats = group_advantages(rewards, g, scale=scale, std=std)
    expected = torch.tensor(_reference(rewards.tolist(), g, scale, std == "unbiased"))
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)
    # stats against torch built-ins: correction=1 is the unbiased (n - 1) std, correction=0 the population one
    correction = 1 if std == "unbiased" else 0
    grouped = rewards.view(-1, g)
    torch.testing.assert_close(stats["group_std"], torch.std(grouped, dim=1, correction=correction), atol=1e-6, rtol=0)
    torch.testing.assert_close(stats["reward_std"], torch.std(rewards, correction=correction), atol=1e-6, rtol=0)
    torch.testing.assert_close(stats["reward_mean"], rewards.mean(), atol=1e-6, rtol=0)
    n_equal = sum(max(row) == min(row) for row in grouped.tolist())
    assert stats["frac_zero_std"].item() == pytest.approx(n_equal / grouped.shape[0], abs=1e-7)


def test_group_advantages_sum_to_zero_per_group():
    rewards = torch.rand(40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    adv, _ = group_advantages(rewards, 8)
    torch.testing.assert_close(adv.view(5, 8).sum(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    assert adv.dtype == torch.float64  # float64 is kept


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_equal_rewards_give_exactly_zero(scale):
    # In fp32, 0.9 - mean(0.9, 0.9, 0.9) = 6e-8 and 0.7 - mean(16 x 0.7) = 6e-8 (measured), which
    # divided by (0 + 1e-4) would be a spurious 6e-4 advantage: it must be exactly 0.
    cases = [(torch.full((6,), 0.9), 3), (torch.full((32,), 0.7), 16), (torch.zeros(6), 3), (torch.ones(6), 2)]
    for rewards, g in cases:
        adv, stats = group_advantages(rewards, g, scale=scale)
        assert torch.equal(adv, torch.zeros_like(rewards)), (rewards, adv)
        assert stats["frac_zero_std"].item() == 1.0
        assert not torch.isnan(stats["reward_std"])


@pytest.mark.parametrize("std", ["unbiased", "population"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_size_one_gives_zero_not_nan(scale, std):
    # unbiased std of one sample is 0/0, population std is 0; a lone sample has no baseline -> advantage 0
    adv, stats = group_advantages(torch.tensor([1.0, 0.0, 0.5]), 1, scale=scale, std=std)
    assert torch.equal(adv, torch.zeros(3))
    assert torch.equal(stats["group_std"], torch.zeros(3))
    assert stats["frac_zero_std"].item() == 1.0
    assert not torch.isnan(stats["reward_std"])


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_equal_rewards_exactly_zero_with_population_std(scale):
    # population std of [0.9, 0.9, 0.9] is 0 (or a rounding error): still exactly 0, never r - mean / eps
    for rewards, g in [(torch.full((6,), 0.9), 3), (torch.full((32,), 0.7), 16), (torch.ones(4), 4)]:
        adv, stats = group_advantages(rewards, g, scale=scale, std="population")
        assert torch.equal(adv, torch.zeros_like(rewards)), (rewards, adv)
        assert stats["frac_zero_std"].item() == 1.0


def test_single_reward_stats_not_nan():
    adv, stats = group_advantages(torch.tensor([2.0]), 1)
    assert adv.tolist() == [0.0]
    assert stats["reward_std"].item() == 0.0


def test_int_and_bool_rewards_are_cast():
    adv, _ = group_advantages(torch.tensor([1, 0, 0, 1]), 2, scale="none")
    assert adv.dtype == torch.float32 and adv.tolist() == [0.5, -0.5, -0.5, 0.5]
    adv, _ = group_advantages(torch.tensor([True, False]), 2, scale="none")
    assert adv.tolist() == [0.5, -0.5]


def test_stats_are_detached():
    rewards = torch.tensor([1.0, 0.0, 0.3, 1.0], requires_grad=True)
    _, stats = group_advantages(rewards, 2)
    assert all(not v.requires_grad for v in stats.values())


@pytest.mark.parametrize(
    "rewards, g, match",
    [
        (torch.zeros(5), 2, "multiple of group_size=2"),  # 5 not divisible by 2
        (torch.zeros(4), 0, "positive int"),  # G < 1
        (torch.zeros(4), -2, "positive int"),
        (torch.zeros(4), 2.0, "positive int"),  # float G would silently reshape wrong
        (torch.zeros(0), 2, "empty"),
        (torch.zeros(2, 2), 2, "1-D"),  # rewards must be flat
    ],
)
def test_invalid_inputs_raise(rewards, g, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, g)


def test_invalid_scale_and_eps():
    with pytest.raises(ValueError, match="scale="):
        group_advantages(torch.zeros(4), 2, scale="global")
    with pytest.raises(ValueError, match="eps"):
        group_advantages(torch.zeros(4), 2, eps=-1.0)
    with pytest.raises(ValueError, match="std='sample'"):
        group_advantages(torch.zeros(4), 2, std="sample")
    with pytest.raises(ValueError, match="std=True"):
        group_advantages(torch.zeros(4), 2, std=True)  # the old boolean spelling is refused, not misread


# ---------------------------------------------------------------- dynamic-sampling helpers


def test_zero_std_group_mask_hand():
    # groups [1, 1] [0, 1] [0, 0] [0.5, 0.5]: only the second has spread
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5])
    mask = zero_std_group_mask(rewards, 2)
    assert mask.dtype == torch.bool and mask.tolist() == [True, False, True, True]
    assert expand_group_mask(mask, 2).tolist() == [True, True, False, False, True, True, True, True]
    # DAPO dynamic sampling: keep informative groups only
    kept = rewards[~expand_group_mask(mask, 2)]
    assert kept.tolist() == [0.0, 1.0]


def test_zero_std_group_mask_matches_stats_and_std():
    rewards = torch.randint(0, 2, (32,), generator=torch.Generator().manual_seed(1)).float()
    mask = zero_std_group_mask(rewards, 4)
    _, stats = group_advantages(rewards, 4)
    assert torch.equal(mask, rewards.view(8, 4).std(dim=1) == 0)
    assert stats["frac_zero_std"].item() == pytest.approx(mask.float().mean().item())


def test_group_mask_helpers_validate():
    with pytest.raises(ValueError, match="multiple"):
        zero_std_group_mask(torch.zeros(3), 2)
    with pytest.raises(ValueError, match="1-D"):
        expand_group_mask(torch.zeros(2, 2, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="positive int"):
        expand_group_mask(torch.zeros(2, dtype=torch.bool), 0)
    assert expand_group_mask(torch.tensor([3, 4]), 1).tolist() == [3, 4]  # G = 1 is the identity
