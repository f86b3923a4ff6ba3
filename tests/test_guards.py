"""r1lightning.guards and SamplingSettings validation: pure functions, by hand."""

import dataclasses
import math

import pytest
import torch

from r1lightning.guards import finite_rewards, finite_scores, nonfinite_tensors
from r1lightning.rollout import SamplingSettings

F32_MAX = torch.finfo(torch.float32).max  # 3.4028e38


def test_finite_rewards_zero_what_float32_cannot_hold():
    rewards, replaced = finite_rewards([
        1.0,  # ordinary
        1e308,  # finite in Python's float64, inf in float32: the probe that NaN'd a run's weights
        -1e39,  # just beyond float32's range
        math.nan,
        math.inf,
        F32_MAX,  # the largest float32 is still finite
        -0.5,
    ])
    assert rewards.dtype == torch.float32
    assert rewards.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, F32_MAX, -0.5]
    assert replaced == 4
    t, n = finite_rewards([0.25, 2.0])
    assert t.tolist() == [0.25, 2.0] and n == 0  # nothing to do: unchanged, no count
    assert finite_rewards([1e308], torch.float64)[0].tolist() == [1e308]  # float64 holds it


def test_finite_scores_match_finite_rewards():
    assert finite_scores([0.5, 1e308, math.nan]) == [0.5, 0.0, 0.0]
    assert finite_scores([]) == []


def test_nonfinite_tensors_names_nested_floating_tensors():
    state = {
        "w": torch.tensor([1.0, math.nan]),  # NaN
        "ok": torch.ones(3),
        "step": torch.tensor(4),  # integer tensors are never non-finite
        "opt": [{"exp_avg": torch.tensor([math.inf])}, {"exp_avg": torch.zeros(2)}],  # inf in the first group
        "meta": "not a tensor",
        "half": torch.tensor([-math.inf], dtype=torch.bfloat16),
    }
    assert nonfinite_tensors(state) == ["w", "opt.0.exp_avg", "half"]
    assert nonfinite_tensors(state["opt"], "optimizer_states") == ["optimizer_states.0.exp_avg"]
    assert nonfinite_tensors({"a": torch.zeros(2, 2)}) == []
    assert nonfinite_tensors({}) == []


@pytest.mark.parametrize("field,value", [
    ("n", 0),  # no completions
    ("n", -2),
    ("temperature", -0.1),  # negative: no engine defines it (they sample greedily at <= 0)
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("max_new_tokens", 0),  # the probe: accepted, then the first rollout failed inside transformers
    ("max_new_tokens", -1),
    ("top_p", 0.0),  # an empty nucleus
    ("top_p", 1.5),
    ("top_k", -1),  # vLLM's old "off"; ours is 0
])
def test_sampling_settings_refuse_bad_values_naming_them(field, value):
    with pytest.raises(ValueError, match=rf"sampling {field} must be"):
        SamplingSettings(**{field: value})
    with pytest.raises(ValueError, match=rf"sampling {field} must be"):
        dataclasses.replace(SamplingSettings(), **{field: value})  # per-step copies are checked too


def test_sampling_settings_accept_the_edges():
    s = SamplingSettings(n=1, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=1)  # greedy evaluation is legal
    assert s.temperature == 0.0
    SamplingSettings(top_p=1e-3, top_k=50, temperature=0.6, n=16)


DDP_SCRIPT = '''
import os, sys
import lightning.pytorch as pl
import torch
import ddp_grpo_worker as w
import r1lightning.modules.grpo as grpo_mod
from r1lightning.modules import GRPOModule
from r1lightning.policy import PolicyConfig, TinyModelSettings
from r1lightning.rollout import SamplingSettings
from r1lightning.tiny import build_tiny_tokenizer

torch.set_num_threads(1)
pl.seed_everything(0)
module = GRPOModule(
    policy=PolicyConfig(tiny=TinyModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=64)),
    rewards=[w.crc_reward], sampling=SamplingSettings(n=4, max_new_tokens=24), lr=1e-2, eval_sampling=None,
    export_dir="none")
module.policy.tokenizer = build_tiny_tokenizer()
module.engine = w.ScriptedEngine()
real = grpo_mod.grpo_loss

def loss(*args, **kw):  # rank 1 only, first optimizer step: a NaN loss value, its gradient still finite
    value, stats = real(*args, **kw)
    first = module._policy_version == 0 and module._skipped_steps == 0
    return (value + float("nan"), stats) if module.global_rank == 1 and first else (value, stats)

grpo_mod.grpo_loss = loss
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=1, use_distributed_sampler=False,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=sys.argv[1])
trainer.fit(module, w.ScriptedData(3, single=False))
torch.save({"params": {k: v.detach().clone() for k, v in module.policy.model.state_dict().items()},
            "global_step": trainer.global_step, "skipped": module._skipped_steps, "version": module._policy_version},
           os.path.join(sys.argv[1], f"rank{trainer.global_rank}.pt"))
'''


@pytest.mark.slow
def test_ddp_ranks_skip_a_step_together_when_one_rank_has_a_nonfinite_loss(tmp_path):
    """Rank 1's loss is NaN in the first optimizer step (its gradient finite: a NaN gradient would reach rank 0
    through the all-reduce anyway), rank 0's is finite. The loss is local, so without reducing the decision rank 0
    would step and rank 1 would not: the ranks would disagree on global_step and hang."""
    import os
    import sys
    from pathlib import Path

    from r1l_testing import run_process_group

    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "skip_worker.py"
    script.write_text(DDP_SCRIPT)
    run_process_group([sys.executable, script, tmp_path], tmp_path, 300,
                      "the 2-rank fit did not finish in 300 s (the ranks disagreed on skipping?)",
                      pythonpath=f"{root}{os.pathsep}{root / 'tests'}")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for r in (r0, r1):
        assert r["skipped"] == 1 and r["global_step"] == 1 and r["version"] == 1  # rollout 0 skipped, rollout 1 applied
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name
        assert bool(torch.isfinite(p).all()), name
