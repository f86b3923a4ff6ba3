"""benchmarks/style_calibration.py: the numbers a styles base is calibrated by before any RL run (per-style accuracy,
and whether checks catch slips) -- parsed checks against hand-counted values, and a small real run on the
committed base."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from r1lightning.policy import PACKAGE_ROOT

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "style_calibration.py"


@pytest.fixture(scope="module")
def cal():
    spec = importlib.util.spec_from_file_location("style_calibration", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_stats_by_hand(cal):
    texts = [
        # column: direct right, check right, agree, no wait
        "<think>23+45=68, let me check: 3+5=8, 2+4+0=6, 68, then 68+17=75, let me check: 8+7=15, 6+1+1=8, 85, "
        # ... direct slipped (75), check right (85), disagree, wait said: the ideal catch
        "wait, 68+17=85, so the answer is 85</think>",
        # column with a hundreds line: direct right, check wrong (218), disagree, no wait
        "<think>163+45=208, let me check: 3+5=8, 6+4+0=10, 1+1=2, 218, so the answer is 218</think>",
        # recompute: both wrong and agreeing, then a "wait" after agreeing values
        "<think>68+17=84, let me check: 68+17=84, wait, 68+17=85</think>",
    ]
    stats = cal.check_stats(texts)
    assert stats["checks"] == 4 and stats["designs"] == ["column", "recompute"]
    assert stats["direct_right"] == 0.5      # 68 and 208 right; 75 and 84 wrong
    assert stats["check_right"] == 0.5       # 68 and 85 right; 218 and 84 wrong
    assert stats["disagree"] == 0.5          # 75/85 and 208/218
    assert stats["wait"] == 0.5
    assert stats["wait_matches_disagreement"] == 0.5  # right for the first two, wrong for the last two
    assert cal.check_stats(["<think>85</think>"]) == {"checks": 0}


def test_trial_stats_by_hand(cal):
    # search_styles, target 96: a right sum rightly rejected; a right sum wrongly confirmed (76 is not 96);
    # a right sum wrongly rejected; a slipped sum (44+52=95) rightly rejected by its own value, wrongly by the truth
    text = ("<think>44+12=56, wait, not 96, then 44+32=76, check: 96=96, then 44+52=96, wait, not 96, "
            "then 44+52=95, wait, not 96, so the answer is 52</think>")
    stats = cal.trial_stats([text], [96])
    assert stats == {"trials": 4, "sum_right": 0.75, "verdict_matches_own_sum": 0.5, "verdict_right": 0.25}
    assert cal.trial_stats(["<think>52</think>"], [96]) == {"trials": 0}


def test_style_stats_by_hand(cal):
    texts = ["<think>85</think><answer>\\boxed{85}</answer>", "<think>90</think><answer>\\boxed{90}</answer>",
             "<think>23+45=68, then 68+17=85, so the answer is 85</think><answer>\\boxed{85}</answer>",
             "<think>23+45=68, let me check: 23+45=68</think><answer>no box</answer>"]
    stats = cal.style_stats(texts, ["85"] * 4, [4, 4, 20, 12])
    assert stats["pass@1"] == 0.5 and stats["length"] == 10.0
    assert stats["short"] == {"share": 0.5, "right": 0.5, "length": 4}
    assert stats["worked"] == {"share": 0.25, "right": 1.0, "length": 20}
    assert stats["checked"] == {"share": 0.25, "right": 0.0, "length": 12}


def test_small_run_on_the_committed_base(cal):
    result = cal.calibrate(str(PACKAGE_ROOT / "assets" / "tiny_base_styles"), prompts=12, samples=2, drills=4)
    shares = [result[s]["share"] for s in ("short", "worked", "checked", "column") if s in result]
    assert sum(shares) == pytest.approx(1.0, abs=0.01) and len(shares) >= 2
    assert 0 <= result["pass@1"] <= 1 and result["length"] > 0 and 0 <= result["mixing_rate"] <= 1
    assert 0 <= result["drill_right"] <= 1 and result["temperature"] == 1.0


@pytest.mark.parametrize("config", ["r1_behaviours.yaml", "r1_behaviours_no_lang.yaml"])
def test_calibration_samples_the_rl_configs_held_out_prompts(cal, config):
    """The calibration judges a base on what the RL run will sample: the same prompts, rendered and encoded by the
    RL config's own data settings (source, template, system prompt). Fails if either drifts."""
    import yaml
    from transformers import AutoTokenizer

    from r1lightning.data import PromptDataModule

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / config).read_text())["data"]["init_args"]
    tok = AutoTokenizer.from_pretrained(PACKAGE_ROOT / "assets" / "tiny_base_styles")
    rl = PromptDataModule(val_data=data["val_data"], template=data.get("template", "chat"),
                          system_prompt=data.get("system_prompt"), tokenizer=tok)
    rl.setup("validate")
    n = len(rl.val_set)
    ours = cal.prompt_data(f"synthetic:arithmetic_styles?n={n}&split=test&seed=1", tok)
    assert n == 300 and [x["prompt_ids"] for x in ours.val_set.items] == [x["prompt_ids"] for x in rl.val_set.items]
    assert [x["columns"] for x in ours.val_set.items] == [x["columns"] for x in rl.val_set.items]
    assert ours.encode_prompt("Add 68+17 column by column.")[1] == rl.encode_prompt("Add 68+17 column by column.")[1]
