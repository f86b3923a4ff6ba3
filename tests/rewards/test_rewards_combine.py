"""Reward registry and WeightedReward: spec parsing, weighted sums worked by hand, and the
never-crash-mid-run guarantee (with its exception for configuration errors)."""

from __future__ import annotations

import logging
import math

import pytest

from r1lightning.rewards import (
    REWARD_FUNCS,
    RewardConfigError,
    RewardTerm,
    WeightedReward,
    get_reward_fn,
)
from r1lightning.rewards.accuracy import exact_match_reward
from r1lightning.rewards.format import format_reward

GOOD = "<think>23+45=68, 68+17=85</think><answer>85</answer>"
WRONG = "<think>23+45=68, 68+17=84</think><answer>84</answer>"
NO_FORMAT = "85"


USER_MODULE = """
def length_reward(completions, **kwargs):
    return [float(len(c)) for c in completions]
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    # A user's own reward module, importable by path as "my_rewards_for_test:length_reward".
    (tmp_path / "my_rewards_for_test.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards_for_test"


# User rewards passed as callables (the Python API; a YAML spec would use an import path).
def scaled_reward(completions, scale=1.0):  # no **kwargs: columns must be filtered out for it
    return [scale] * len(completions)


def broken_reward(completions, **kwargs):
    raise RuntimeError("bug in a user reward")


def nan_reward(completions, **kwargs):
    return [math.nan, math.inf, 1.0][: len(completions)]


def config_error_reward(completions, **kwargs):
    raise RewardConfigError("column 'solution' missing")


def test_registry_names():
    assert set(REWARD_FUNCS) == {
        "accuracy",
        "exact_match",
        "math_verify",
        "format",
        "language_consistency",
        "code",
        "reward_model",
    }
    assert get_reward_fn("format") is format_reward


@pytest.mark.parametrize(
    "path",
    [
        "r1lightning.rewards.accuracy:exact_match_reward",  # module:function
        "r1lightning.rewards.accuracy.exact_match_reward",  # dotted
        " r1lightning.rewards:exact_match_reward ",  # surrounding whitespace from YAML
    ],
)
def test_get_reward_fn_import_paths(path):
    assert get_reward_fn(path) is exact_match_reward


@pytest.mark.parametrize(
    ("name", "match"),
    [
        (
            "acuracy",
            "unknown reward 'acuracy'; built-in rewards: accuracy, code, exact_match",
        ),  # typo lists names
        ("no_such_pkg.mod:fn", "cannot import module 'no_such_pkg.mod'"),  # bad module
        ("r1lightning.rewards:nope", "no callable 'nope'"),  # bad attribute
        ("r1lightning.rewards:REWARD_FUNCS", "no callable"),  # not callable
        ("", "non-empty string"),  # empty
        (3, "non-empty string"),  # not a string
    ],
)
def test_get_reward_fn_errors(name, match):
    with pytest.raises(ValueError, match=match):
        get_reward_fn(name)


def test_weighted_sum_by_hand():
    # YAML-shaped spec: accuracy 1.0, format 0.5.
    reward = WeightedReward({"exact_match": 1.0, "format": 0.5})
    total, per_fn = reward([GOOD, WRONG, NO_FORMAT], answer=["85", "85", "85"], language=["en"] * 3)
    # GOOD:      1.0 * 1 + 0.5 * 1 = 1.5
    # WRONG:     1.0 * 0 + 0.5 * 1 = 0.5
    # NO_FORMAT: 1.0 * 0 + 0.5 * 0 = 0.0   (no <answer> block, so not even accuracy)
    assert total == [1.5, 0.5, 0.0]
    assert per_fn == {"exact_match": [1.0, 0.0, 0.0], "format": [1.0, 1.0, 0.0]}  # unweighted
    assert reward.names == ["exact_match", "format"]
    assert reward.weights == {"exact_match": 1.0, "format": 0.5}


def test_options_and_column_override(caplog):
    reward = WeightedReward(
        {"format": 1.0, "language_consistency": {"weight": 0.1, "language": "zh"}}
    )
    zh = "<think>先算二十三加四十五</think><answer>85</answer>"
    # Spec says zh: the Chinese CoT scores 1, so total = 1*1 + 0.1*1 = 1.1.
    with caplog.at_level(logging.WARNING, logger="r1lightning.rewards.combine"):
        total, per_fn = reward([zh])
    assert per_fn["language_consistency"] == [1.0] and total == pytest.approx([1.1])
    assert not caplog.records
    # A per-sample `language` column overrides the spec's option: now the target is English -- and the log says so,
    # once per reward and key (format takes no language option: nothing to say about it).
    with caplog.at_level(logging.WARNING, logger="r1lightning.rewards.combine"):
        for _ in range(2):
            total, per_fn = reward([zh], language=["en"])
    assert per_fn["language_consistency"] == [0.0] and total == pytest.approx([1.0])
    (record,) = caplog.records
    assert ("reward 'language_consistency': the dataset column 'language' overrides its option language='zh'"
            in record.getMessage())


def test_list_spec_with_labels_and_negative_weight(user_module):
    reward = WeightedReward(
        [
            "format",  # bare name, weight 1
            {"name": "language_consistency", "label": "lang_en", "language": "en", "weight": 0.2},
            {"name": "language_consistency", "label": "lang_zh", "language": "zh", "weight": 0.3},
            {
                "name": f"{user_module}:length_reward",
                "weight": -0.01,
            },  # import path; label = function name
            RewardTerm(label="const", fn=scaled_reward, weight=2.0, kwargs={"scale": 0.25}),
        ]
    )
    assert reward.names == ["format", "lang_en", "lang_zh", "length_reward", "const"]
    total, per_fn = reward([GOOD], answer=["85"])
    # GOOD's CoT is pure arithmetic (no words), so both language terms score 1.0:
    # format 1*1 + lang_en 0.2*1 + lang_zh 0.3*1 + length -0.01*len(GOOD) + const 2*0.25
    assert per_fn["lang_en"] == per_fn["lang_zh"] == [1.0]
    assert total == pytest.approx([1.0 + 0.2 + 0.3 - 0.01 * len(GOOD) + 0.5])


def test_function_without_var_kwargs_gets_only_its_parameters():
    # scaled_reward(completions, scale) would raise TypeError on answer=...; columns it does not
    # name are filtered out instead.
    reward = WeightedReward([RewardTerm(label="s", fn=scaled_reward, kwargs={"scale": 3.0})])
    assert reward(["a", "b"], answer=["1", "2"]) == ([3.0, 3.0], {"s": [3.0, 3.0]})


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (
            {"accuracy": "1.0"},
            "reward 'accuracy': weight must be a finite number, got '1.0'",
        ),  # string weight
        ({"accuracy": True}, "weight must be a finite number"),  # bool is not a weight
        ({"accuracy": float("nan")}, "weight must be a finite number"),  # NaN weight
        ({"accuracy": None}, "weight must be a finite number"),  # missing weight
        ({"accuracy": {"weight": [1]}}, "weight must be a finite number"),  # wrong type in options
        ({"acuracy": 1.0}, "unknown reward 'acuracy'"),  # typo in the name
        (
            {"language_consistency": {"langauge": "zh"}},
            r"unknown option\(s\) \['langauge'\]",
        ),  # typo in an option
        (
            {"format": {"weight": 1, "bogus": 2}},
            "valid options: \\['completion_prefix'\\]",
        ),  # lists valid options
        ([{"weight": 1.0}], "has no 'name'"),  # list entry without a name
        ([3.0], "must be names, callables or mappings"),  # junk list entry
        (["format", "format"], r"duplicate reward label\(s\) \['format'\]"),  # same label twice
        ({}, "empty"),  # nothing to optimise
        ("accuracy", "mapping .* or a list"),  # a bare string is not a spec
    ],
)
def test_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        WeightedReward(spec)


def test_failing_reward_scores_zero_warns_once_and_counts(caplog):
    reward = WeightedReward(
        [
            "format",
            {"name": broken_reward, "weight": 5.0},  # raises (3 batches < 5 in a row: no stop)
            nan_reward,  # non-finite scores
        ]
    )
    with caplog.at_level(logging.WARNING, logger="r1lightning.rewards.combine"):
        for _ in range(3):
            total, per_fn = reward([GOOD, WRONG, NO_FORMAT])
    # format [1, 1, 0] + 5 * broken [0, 0, 0] + nan -> [0, 0, 1]
    assert total == [1.0, 1.0, 1.0]
    assert per_fn["broken_reward"] == [0.0, 0.0, 0.0]
    assert per_fn["nan_reward"] == [0.0, 0.0, 1.0]
    assert reward.failures == {"broken_reward": 3}  # every failed batch counted
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("broken_reward" in w for w in warnings) == 1  # ... but warned once
    assert sum("nan_reward" in w for w in warnings) == 1


@pytest.mark.parametrize(
    ("spec", "columns", "match"),
    [
        ({"exact_match": 1.0}, {}, "column 'answer'"),  # built-in: the gold column is missing
        (
            {"language_consistency": 1.0},
            {"language": ["tlh"]},
            "unknown language 'tlh'",
        ),  # bad code in data
        ([config_error_reward], {}, "column 'solution'"),  # a user function may raise it too
    ],
)
def test_configuration_errors_are_not_swallowed(spec, columns, match):
    # A missing column would otherwise zero the reward on every step: stop loudly instead.
    with pytest.raises(RewardConfigError, match=match):
        WeightedReward(spec)([GOOD], **columns)
