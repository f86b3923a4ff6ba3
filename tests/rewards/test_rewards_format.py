"""Table tests for the R1-Zero format reward, including the reward hacks it must refuse."""

from __future__ import annotations

import time

import pytest

from r1lightning.rewards.format import format_reward, is_well_formatted


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        # --- well formed
        ("<think>2+2=4</think><answer>4</answer>", 1.0),  # the template, no whitespace
        (
            "\n <think>\nreason\n</think>\n\n<answer> 4 </answer>\n",
            1.0,
        ),  # whitespace around and inside
        (
            "<think>a < b and b > c</think><answer>x<y</answer>",
            1.0,
        ),  # "<" and ">" that are not tags
        ("<think>uses the word think</think><answer>answer</answer>", 1.0),  # tag names as words
        # --- missing pieces
        ("", 0.0),  # empty completion
        ("4", 0.0),  # bare answer
        ("<think>reason</think>", 0.0),  # no answer block
        ("<answer>4</answer>", 0.0),  # no think block (skipping the reasoning)
        ("<think>reason</think><answer>4", 0.0),  # answer never closed (truncated)
        ("<think>reason<answer>4</answer>", 0.0),  # think never closed
        # --- empty blocks (hack: satisfy the tags with nothing in them)
        ("<think></think><answer>4</answer>", 0.0),  # empty reasoning
        ("<think> \n </think><answer>4</answer>", 0.0),  # whitespace-only reasoning
        ("<think>reason</think><answer></answer>", 0.0),  # empty answer
        ("<think>reason</think><answer>  </answer>", 0.0),  # whitespace-only answer
        # --- repeated blocks (hack: several answers, one of which may be right)
        ("<think>a</think><think>b</think><answer>4</answer>", 0.0),  # two think blocks
        ("<think>a</think><answer>4</answer><answer>5</answer>", 0.0),  # two answer blocks
        (
            "<think>a</think><answer>4</answer><think>b</think><answer>4</answer>",
            0.0,
        ),  # template twice
        # --- nesting (hack: hide a second block inside the first)
        ("<think>a</think><answer><think>b</think>4</answer>", 0.0),  # think nested in answer
        ("<think>a<answer>5</answer></think><answer>4</answer>", 0.0),  # answer nested in think
        ("<think>a<think>b</think><answer>4</answer>", 0.0),  # stray opener inside think
        ("<think>a</think><answer>4 <ANSWER>5</ANSWER></answer>", 0.0),  # tag in another case
        ("<think>a</think><answer>4 < /answer ></answer>", 0.0),  # tag with inner spaces
        # --- order and trailing text
        ("<answer>4</answer><think>reason</think>", 0.0),  # answer before reasoning
        ("<think>a</think> text <answer>4</answer>", 0.0),  # text between the blocks
        ("<think>a</think><answer>4</answer> trailing", 0.0),  # text after </answer>
        (
            "<think>a</think><answer>4</answer><|endoftext|>",
            0.0,
        ),  # EOS left in (rollout must strip)
        ("preamble <think>a</think><answer>4</answer>", 0.0),  # text before <think>
    ],
)
def test_format_reward_table(completion, expected):
    assert format_reward([completion]) == [expected]


def test_completion_prefix_for_prompts_ending_in_think():
    # Template variant where the prompt ends with "<think>": the completion starts mid-block.
    assert format_reward(["reason</think><answer>4</answer>"], completion_prefix="<think>") == [1.0]
    assert format_reward(["reason</think><answer>4</answer>"]) == [0.0]


def test_batch_garbage_and_extra_columns():
    # Non-strings are garbage scored 0, dataset columns are ignored, order is kept.
    out = format_reward(
        [
            None,
            17,
            "<think>a</think><answer>b</answer>",
            {"content": "<think>a</think><answer>b</answer>"},
        ],
        answer=["x", "y", "z", "w"],
        language="en",
    )
    assert out == [0.0, 0.0, 1.0, 1.0]


def test_adversarial_input_is_fast():
    # Many template fragments: a naive regex backtracks quadratically here.
    nasty = [
        "<think>a</think><answer>" * 20_000,
        " " * 200_000 + "<think>a</think><answer>1</answer>x",
    ]
    start = time.perf_counter()
    assert format_reward(nasty) == [0.0, 0.0]
    assert time.perf_counter() - start < 1.0


def test_is_well_formatted_matches_reward():
    assert is_well_formatted("<think>a</think><answer>b</answer>")
    assert not is_well_formatted("<think>a</think><answer></answer>")
