"""fp32 master weights: an lr-3e-6 AdamW update survives them and rounds away in bf16; the check that
refuses bf16/fp16 trainable weights; bf16-mixed trains on CPU (GRPO through a real fit, SFT)."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from r1lightning.data import PromptDataModule, SFTDataModule
from r1lightning.modules import GRPOModule, SFTModule
from r1lightning.policy import LoraSettings, Policy, PolicyConfig, TinyModelSettings
from r1lightning.precision import check_master_weights
from r1lightning.rollout import SamplingSettings

SMALL = TinyModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
LR = 3e-6  # R1's learning rate
BETAS = (0.9, 0.95)  # PolicyModule's AdamW betas


def changed_share_and_mean_dw(model: nn.Module, initial: nn.Module) -> tuple[float, float]:
    """Share of weights that differ from ``initial`` (in the model's dtype) and mean |w - w0| (in fp32)."""
    w0 = dict(initial.named_parameters())
    total = changed = 0
    dw = 0.0
    for name, p in model.named_parameters():
        before = w0[name].detach().to(p.dtype)
        total += p.numel()
        changed += int((p.detach() != before).sum())
        dw += float((p.detach().float() - before.float()).abs().sum())
    return changed / total, dw / total


def adamw_steps(initial: nn.Module, grads: list[dict[str, torch.Tensor]], dtype: torch.dtype) -> nn.Module:
    """``initial`` cast to ``dtype`` after one AdamW step per gradient dict (moments in ``dtype`` too,
    as with Lightning's bf16-true, which converts the module before configure_optimizers)."""
    model = copy.deepcopy(initial).to(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=0.0)
    for g in grads:
        for name, p in model.named_parameters():
            p.grad = g[name].to(dtype)
        opt.step()
    return model


# ---------------------------------------------------------------- the arithmetic


def test_one_step_by_hand():
    # bf16 keeps 8 significant bits: 0.02 lies in [2**-6, 2**-5), where bf16 numbers are
    # 2**-6 * 2**-7 = 2**-13 = 1.22e-4 apart; 0.02 + 3e-6 is 2.5% of the way to the next one -> rounds back
    w = torch.tensor(0.02, dtype=torch.bfloat16)
    assert float(torch.nextafter(w, torch.tensor(1.0, dtype=torch.bfloat16)) - w) == 2**-13
    assert torch.equal(w + LR, w)
    # fp16 (11 bits): spacing 2**-6 * 2**-10 = 1.5e-5, half of it 7.6e-6 > 3e-6 -> also rounds back
    assert torch.equal(torch.tensor(0.02, dtype=torch.float16) + LR, torch.tensor(0.02, dtype=torch.float16))
    # fp32 (24 bits): spacing 2**-6 * 2**-23 = 1.9e-9, so the step is kept to 3 significant digits
    w32 = torch.tensor(0.02)
    assert float((w32 + LR) - w32) == pytest.approx(LR, rel=1e-3)


def test_constant_gradient_20_steps(tiny_policy):
    # one real gradient (next-token loss on a worked solution), applied 20 times with lr 3e-6
    model = tiny_policy.build()
    ids = tiny_policy.tokenizer(["<|user|>Compute 12+30+7.<|end|><|assistant|><think>12+30=42, 42+7=49</think>"
                                 "<answer>49</answer>"], return_tensors="pt").input_ids
    model(input_ids=ids, labels=ids).loss.backward()
    grad = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    assert all(bool((g != 0).all()) for g in grad.values())  # every weight has a gradient (tied embeddings)

    share32, dw32 = changed_share_and_mean_dw(adamw_steps(model, [grad] * 20, torch.float32), model)
    share16, dw16 = changed_share_and_mean_dw(adamw_steps(model, [grad] * 20, torch.bfloat16), model)
    # With a constant gradient Adam's bias-corrected m / sqrt(v) is g / |g| = +-1, so each step moves
    # every fp32 weight by exactly lr: mean |dw| = 20 * 3e-6 = 6e-5 (measured 5.9985e-05), all changed.
    assert share32 == 1.0
    assert dw32 == pytest.approx(20 * LR, rel=1e-3)
    # The same 20 steps on bf16 weights: measured 4.06% of the weights changed, mean |dw| 2.84e-06.
    # Bounds that fail if the masters were bf16 on the fp32 side, or fp32 on the bf16 side.
    assert share16 < 0.1
    assert dw16 < dw32 / 10


# ---------------------------------------------------------------- a real bf16-mixed fit, replayed on bf16 weights


def digit_reward(completions, **kw):
    """Share of digit characters: varies within a group, so advantages are non-zero."""
    return [sum(c.isdigit() for c in t) / max(1, len(t)) for t in completions]


class RecordGradients(pl.Callback):
    """The policy's gradients as each optimizer step sees them (after clipping)."""

    def __init__(self):
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.policy.model.named_parameters()})


def grpo(tiny_tokenizer, **kw) -> tuple[GRPOModule, PromptDataModule]:
    module = GRPOModule(policy=kw.pop("policy", PolicyConfig(tiny=SMALL)), rewards=[digit_reward, "format"],
                        sampling=SamplingSettings(n=4, max_new_tokens=8, seed=1), lr=LR, eval_sampling=None,
                        export_dir="none", **kw)
    module.policy.tokenizer = tiny_tokenizer
    dm = PromptDataModule(train_data="synthetic:arithmetic?n=64&split=train", batch_size=2, tokenizer=tiny_tokenizer)
    return module, dm


def trainer(tmp_path, precision: str, max_steps: int, callbacks=()) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", precision=precision, max_steps=max_steps, default_root_dir=tmp_path,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks))


def test_lr_3e6_survives_fp32_masters_and_rounds_away_in_bf16(tiny_tokenizer, tmp_path):
    module, dm = grpo(tiny_tokenizer, mu=4)  # 4 optimizer steps per rollout: 20 steps = 5 rollouts
    module.configure_model()
    initial = copy.deepcopy(module.policy.model)
    compute_dtypes = set()
    module.policy.model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda mod, args, out: compute_dtypes.add(out.dtype))
    rec = RecordGradients()
    t = trainer(tmp_path, "bf16-mixed", max_steps=20, callbacks=[rec])
    t.fit(module, dm)
    assert t.global_step == len(rec.grads) == 20

    # bf16-mixed: fp32 weights and AdamW moments, bf16 compute (autocast on CPU)
    assert {p.dtype for p in module.policy.model.parameters()} == {torch.float32}
    state = t.optimizers[0].state.values()
    assert {v.dtype for s in state for k, v in s.items() if k != "step"} == {torch.float32}
    assert compute_dtypes == {torch.bfloat16}

    # replaying the fit's own gradients with AdamW in fp32 reproduces the fit: the replay is faithful ...
    fp32 = adamw_steps(initial, rec.grads, torch.float32)
    for a, b in zip(fp32.parameters(), module.policy.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    # ... so the bf16 replay is what bf16 weights (Lightning's bf16-true) would have done with these gradients
    bf16 = adamw_steps(initial, rec.grads, torch.bfloat16)

    share_fit, dw_fit = changed_share_and_mean_dw(module.policy.model, initial)
    share16, dw16 = changed_share_and_mean_dw(bf16, initial)
    # measured: fit (fp32 masters) 99.995% changed, mean |dw| 2.47e-05; bf16 weights 3.99%, 1.08e-06
    assert share_fit > 0.9
    assert share16 < 0.5 and share_fit > 5 * share16
    assert dw_fit > 5 * dw16


def test_sft_trains_with_bf16_mixed_on_cpu(tiny_tokenizer, tmp_path):
    module = SFTModule(PolicyConfig(tiny=SMALL), lr=LR, export_dir="none")
    module.policy.tokenizer = tiny_tokenizer
    dm = SFTDataModule(train_data="synthetic:arithmetic?n=16&split=train", batch_size=4, tokenizer=tiny_tokenizer)
    module.configure_model()
    initial = copy.deepcopy(module.policy.model)
    trainer(tmp_path, "bf16-mixed", max_steps=2).fit(module, dm)
    share, _ = changed_share_and_mean_dw(module.policy.model, initial)
    assert {p.dtype for p in module.policy.model.parameters()} == {torch.float32}
    assert share > 0.9  # measured 1.0 after 2 steps at lr 3e-6


# ---------------------------------------------------------------- the check


def params(*specs: tuple[str, torch.dtype, bool]) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs from ``(name, dtype, trainable)``."""
    return [(name, nn.Parameter(torch.zeros(2, dtype=dtype), requires_grad=trainable))
            for name, dtype, trainable in specs]


@pytest.mark.parametrize("precision, dtype", [("bf16-true", "bfloat16"), ("16-true", "float16")])
def test_check_refuses_half_weight_trainer_precision(precision, dtype):
    # Lightning converts the module for these, so the weights are (or will be) half precision whatever they are now
    for weights in (params(("w", torch.float32, True)), params(("w", getattr(torch, dtype), True))):
        with pytest.raises(ValueError) as err:
            check_master_weights(weights, precision)
        msg = str(err.value)
        assert f"trainer.precision={precision!r} converts the model, trainable weights included, to {dtype}" in msg
        assert "trainer.precision: bf16-mixed with policy.dtype: float32" in msg
        assert "--trainer.precision bf16-mixed --model.init_args.policy.dtype float32" in msg


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", None])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_check_refuses_half_precision_trainable_weights(precision, dtype):
    weights = params(("a.weight", dtype, True), ("b.weight", dtype, True), ("c.bias", torch.float32, True),
                     ("d.weight", dtype, True), ("e.weight", dtype, True), ("frozen", dtype, False))
    with pytest.raises(ValueError) as err:
        check_master_weights(weights, precision)
    msg = str(err.value)
    name = str(dtype).removeprefix("torch.")
    # counts and names the trainable half-precision ones only (not c.bias, not the frozen one)
    assert f"4 trainable parameters are {name} (a.weight, b.weight, d.weight and 1 more)" in msg
    assert "policy.dtype: bfloat16 / float16" in msg and "round away" in msg
    assert "trainer.precision: bf16-mixed with policy.dtype: float32" in msg
    assert (f"trainer.precision={precision!r}" in msg) == (precision is not None)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "32-true", "64-true", None])
def test_check_accepts_fp32_masters(precision):
    check_master_weights(params(("w", torch.float32, True), ("v", torch.float64, True)), precision)
    check_master_weights([], precision)  # nothing trainable: nothing to refuse


def test_check_ignores_frozen_bf16_weights(tiny_tokenizer):
    # LoRA over a bf16 base: peft keeps the adapters in float32, the frozen base may stay bf16
    cfg = PolicyConfig(tiny=SMALL, dtype="bfloat16", lora=LoraSettings(r=4, alpha=8))
    policy = Policy(cfg, tokenizer=tiny_tokenizer)
    model = policy.build()
    assert {(p.requires_grad, p.dtype) for p in model.parameters()} == {(True, torch.float32), (False, torch.bfloat16)}
    check_master_weights(model.named_parameters(), "bf16-mixed")


def test_fit_refuses_bf16_true(tiny_tokenizer, tmp_path):
    module, dm = grpo(tiny_tokenizer)
    with pytest.raises(ValueError, match="trainer.precision='bf16-true' converts the model"):
        trainer(tmp_path, "bf16-true", max_steps=1).fit(module, dm)


def test_fit_refuses_bf16_policy_weights(tiny_tokenizer, tmp_path):
    # SFT: the check is in PolicyModule.configure_optimizers, shared by every module
    module = SFTModule(PolicyConfig(tiny=SMALL, dtype="bfloat16"), export_dir="none")
    module.policy.tokenizer = tiny_tokenizer
    dm = SFTDataModule(train_data="synthetic:arithmetic?n=8&split=train", batch_size=4, tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match=r"trainable parameters are bfloat16 .* with trainer.precision='32-true'"):
        trainer(tmp_path, "32-true", max_steps=1).fit(module, dm)
