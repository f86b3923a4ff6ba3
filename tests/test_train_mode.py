"""Train / eval mode: the policy trains in train mode in every module (transformers' ``from_pretrained`` leaves
a model in eval mode, which silently turned dropout and gradient checkpointing off), while sampling, pi_old,
the reference and teachers run in eval mode; gradient checkpointing really trades compute for memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import lightning.pytorch as pl
import pytest
import torch

from r1lightning.data import PromptDataModule, SFTDataModule
from r1lightning.modules import DistillModule, GRPOModule, SFTModule
from r1lightning.policy import Policy, PolicyConfig
from r1lightning.rollout import SamplingSettings

BASE = "r1lightning/assets/tiny_base"  # loaded with from_pretrained: the case that trained in eval mode


def _trainer(tmp_path, steps=1, **kw):
    return pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, default_root_dir=tmp_path, **kw)


def _record_modes(policy: Policy) -> list[tuple[bool, bool]]:
    """(grad enabled, train mode) of every forward of the policy's decoder (the trunk every path runs)."""
    seen: list[tuple[bool, bool]] = []
    decoder = policy.base_causal_lm().get_decoder()
    decoder.register_forward_pre_hook(lambda mod, args: seen.append((torch.is_grad_enabled(), mod.training)))
    return seen


def test_a_loaded_model_builds_in_the_policy_mode():
    policy = Policy(PolicyConfig(model_name_or_path=BASE))
    model = policy.build()
    assert all(m.training for m in model.modules())  # not the eval mode from_pretrained returns
    evaluating = Policy(PolicyConfig(model_name_or_path=BASE)).eval()
    assert not any(m.training for m in evaluating.build().modules())


def test_grpo_optimises_in_train_mode_and_samples_and_scores_in_eval_mode(tmp_path):
    module = GRPOModule(policy=PolicyConfig(model_name_or_path=BASE), rewards=["format"],
                        sampling=SamplingSettings(n=2, max_new_tokens=8, seed=0), num_minibatches=2,
                        beta=0.001, export_dir="none")
    dm = PromptDataModule(train_data="synthetic:arithmetic?n=8&split=train", batch_size=2,
                          tokenizer=module.tokenizer)
    module.configure_model()
    seen = _record_modes(module.policy)
    ref_modes = []
    module.ref_model.get_decoder().register_forward_pre_hook(lambda mod, args: ref_modes.append(mod.training))
    _trainer(tmp_path, steps=2).fit(module, dm)
    with_grad = [train for grad, train in seen if grad]
    without = [train for grad, train in seen if not grad]
    assert with_grad and all(with_grad)  # every optimisation forward in train mode
    assert without and not any(without)  # generation and pi_old (num_minibatches 2) in eval mode
    assert ref_modes and not any(ref_modes)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("kd_weight", [None, 0.0, 0.5])  # SFT, distill as SFT, distill with a teacher
def test_sft_and_distill_train_in_train_mode(tmp_path, kd_weight):
    if kd_weight is None:
        module = SFTModule(policy=PolicyConfig(model_name_or_path=BASE), export_dir="none")
    else:
        module = DistillModule(policy=PolicyConfig(model_name_or_path=BASE),
                               teacher=PolicyConfig(model_name_or_path=BASE), kd_weight=kd_weight, export_dir="none")
    dm = SFTDataModule(train_data="synthetic:arithmetic?n=8&split=train", batch_size=4, tokenizer=module.tokenizer)
    module.configure_model()
    seen = _record_modes(module.policy)
    teacher_modes = []
    if getattr(module, "teacher", None) is not None:
        module.teacher.model.get_decoder().register_forward_pre_hook(
            lambda mod, args: teacher_modes.append((torch.is_grad_enabled(), mod.training)))
    _trainer(tmp_path, steps=2).fit(module, dm)
    assert len(seen) == 2 and all(grad and train for grad, train in seen)
    if kd_weight:
        assert len(teacher_modes) == 2 and not any(grad or train for grad, train in teacher_modes)


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory):
    """The tiny base saved with attention dropout 0.5: a folder loaded like any model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1lightning.policy import resolve_path

    path = tmp_path_factory.mktemp("dropout_model")
    model = AutoModelForCausalLM.from_pretrained(str(resolve_path(BASE)), attention_dropout=0.5)
    model.save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(resolve_path(BASE))).save_pretrained(str(path))
    assert json.loads((path / "config.json").read_text())["attention_dropout"] == 0.5
    return str(path)


def _sequences(policy: Policy):
    from r1lightning.modules.grpo import build_sequences

    tok = policy.tokenizer
    prompts = [tok("Compute 12+30.", add_special_tokens=False).input_ids, tok("Hi", add_special_tokens=False).input_ids]
    completions = [tok("<think>12+30=42</think><answer>42</answer>", add_special_tokens=False).input_ids,
                   tok("<answer>3</answer>", add_special_tokens=False).input_ids]
    return build_sequences(prompts, completions, tok.pad_token_id, torch.device("cpu"))


def test_dropout_follows_the_config_in_train_mode_only(dropout_model):
    policy = Policy(PolicyConfig(model_name_or_path=dropout_model))
    ids, attn, cmask = _sequences(policy)
    with torch.no_grad():
        a = policy.token_logprobs(ids, attn, cmask.shape[1], loss_mask=cmask)[0]
        b = policy.token_logprobs(ids, attn, cmask.shape[1], loss_mask=cmask)[0]
        assert (a - b).abs().max() > 1e-3  # dropout 0.5 is on: two calls differ
        policy.eval()
        c = policy.token_logprobs(ids, attn, cmask.shape[1], loss_mask=cmask)[0]
        d = policy.token_logprobs(ids, attn, cmask.shape[1], loss_mask=cmask)[0]
    assert torch.equal(c, d)


def test_sampling_pi_old_and_reference_are_deterministic_with_dropout(dropout_model):
    """With dropout in the config, the engine samples, and prepare scores pi_old and pi_ref, in eval mode:
    the same values on every call, equal to the eval-mode log-probs, while the policy itself stays in train mode."""
    module = GRPOModule(policy=PolicyConfig(model_name_or_path=dropout_model), rewards=["format"],
                        sampling=SamplingSettings(n=4, max_new_tokens=12, seed=3, logprobs=True), num_minibatches=2,
                        beta=0.001, export_dir="none")
    module.configure_model()
    tok = module.tokenizer
    prompts = [tok(q, add_special_tokens=False).input_ids for q in ("Compute 1+2.", "Compute 40+2.")]
    traj = module.rollout_and_score(prompts, {"answer": ["3", "42"]})
    assert module.policy.model.training  # the engine restored train mode
    first, second = module.prepare(traj), module.prepare(traj)
    assert module.policy.model.training
    micro = [m for mb in first for m in mb.micro]
    assert micro and all(m.old_logp is not None and m.ref_logp is not None for m in micro)
    for m1, m2 in zip(micro, [m for mb in second for m in mb.micro]):
        assert torch.equal(m1.old_logp, m2.old_logp) and torch.equal(m1.ref_logp, m2.ref_logp)
    with torch.no_grad():
        for m in micro:
            with_dropout = module.policy_logprobs(m)[0]
            module.policy.eval()
            plain = module.policy_logprobs(m)[0]
            module.policy.train()
            mask = m.cmask.bool()
            torch.testing.assert_close(m.old_logp[mask], plain[mask], atol=1e-5, rtol=0)
            torch.testing.assert_close(m.ref_logp[mask], plain[mask], atol=1e-5, rtol=0)  # the untrained ref = policy
            assert (with_dropout - plain)[mask].abs().max() > 1e-3
            # the engine's sampling log-probs are the eval-mode ones
            engine = m.engine_logp[mask]
            torch.testing.assert_close(engine, plain[mask], atol=1e-4, rtol=0)


_PEAK = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from r1lightning.modules import SFTModule
    from r1lightning.policy import PolicyConfig, TinyModelSettings
    gc = sys.argv[1] == "1"
    # activations dominate: 8 layers of a wide MLP over 4 x 512 tokens, a small vocabulary (checkpointing keeps one
    # layer's activations at a time, so the saving grows with depth)
    tiny = TinyModelSettings(hidden_size=128, num_hidden_layers=8, num_attention_heads=4, intermediate_size=2048,
                             max_position_embeddings=512)
    module = SFTModule(PolicyConfig(tiny=tiny, gradient_checkpointing=gc), export_dir="none")
    module.configure_model()  # the module's own set-up, no explicit .train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(module.tokenizer), (4, 512), generator=gen)
    def vm(key):  # kB, from the kernel's accounting of this process
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
    # reset the peak-RSS high-water mark (Linux >= 4.0), so imports and set-up do not hide the step's peak
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = vm("VmRSS")
    logp, _ = module.policy.token_logprobs(ids, torch.ones_like(ids))
    logp.mean().backward()
    peak = vm("VmHWM")
    torch.save({"peak_kib": peak - before, "grads": [p.grad for p in module.policy.model.parameters()]}, sys.argv[2])
""")


def test_gradient_checkpointing_lowers_peak_memory_with_equal_gradients(tmp_path):
    """Each configuration in a fresh process: its peak resident memory (VmHWM, reset just before the step, so the
    imports' own peak cannot hide it), which the other processes on a shared machine do not change. The growth of
    the peak over the resident memory before one forward/backward is the activation memory (plus the gradients,
    equal in both)."""
    out = {}
    for gc in ("0", "1"):
        path = tmp_path / f"gc{gc}.pt"
        # glibc keeps freed heap memory resident, so the peak would depend on the allocation history; with every
        # block over 64 KiB mmap'ed (and unmapped when freed) the resident memory follows the live tensors:
        # measured 660 MB vs 154 MB, the same to 0.1% over repeats (VmHWM without it varied 344-439 MB)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        subprocess.run([sys.executable, "-c", _PEAK, gc, str(path)], check=True, timeout=600, env=env)
        out[gc] = torch.load(path)
    plain, ckpt = out["0"], out["1"]
    # 8 layers x 2048 tokens x (3 x 2048 MLP + ~10 x 128) fp32 activations: ~480 MB without checkpointing
    assert plain["peak_kib"] > 100_000, plain["peak_kib"]
    assert ckpt["peak_kib"] < 0.6 * plain["peak_kib"], (ckpt["peak_kib"], plain["peak_kib"])
    for a, b in zip(plain["grads"], ckpt["grads"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
