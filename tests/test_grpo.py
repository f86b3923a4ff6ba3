"""GRPOModule: helpers by hand, a real step on a tiny model, every metric logged, resume."""

import glob
import math

import lightning.pytorch as pl
import pytest
import torch
from r1l_testing import read_scalars

from r1lightning.data import PromptDataModule
from r1lightning.modules import GRPOModule
from r1lightning.modules.grpo import build_sequences, micro_batches, minibatch_rows, overlong_penalty
from r1lightning.policy import PolicyConfig, TinyModelSettings
from r1lightning.rollout import SamplingSettings

SMALL = TinyModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def test_build_sequences_layout():
    ids, attn, cmask = build_sequences([[5, 6], [7]], [[1, 2, 3], []], pad_id=0, device=torch.device("cpu"))
    # prompts are left padded to 2, completions right padded to 3
    assert ids.tolist() == [[5, 6, 1, 2, 3], [0, 7, 0, 0, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert cmask.tolist() == [[1, 1, 1], [0, 0, 0]]  # an empty completion has no loss tokens


def test_micro_batches_respect_token_budget():
    # budget 10: [4,4] -> 2 rows x 4 = 8 fits; adding 5 -> 3 x 5 = 15 > 10, new group; [5,1] -> 2 x 5 = 10 fits
    assert micro_batches([4, 4, 5, 1], 10) == [[0, 1], [2, 3]]
    assert micro_batches([20, 3], 10) == [[0], [1]]  # a row longer than the budget stands alone
    assert micro_batches([], 10) == []


def test_overlong_penalty_by_hand():
    # max 100, buffer 20: no penalty up to 80; 90 -> -(10/20) * 0.5 = -0.25; 100 -> -0.5
    assert overlong_penalty([80, 90, 100], 100, 20, 0.5) == [0.0, -0.25, -0.5]
    assert overlong_penalty([100], 100, 0, 1.0) == [0.0]


def digit_reward(completions, **kw):
    """Share of digit characters: varies within a group, so advantages are non-zero."""
    return [sum(c.isdigit() for c in t) / max(1, len(t)) for t in completions]


torch.serialization.add_safe_globals([digit_reward])  # the checkpoint's hparams name this test reward


def make(tiny_tokenizer, beta=0.001, **kw):
    module = GRPOModule(
        policy=PolicyConfig(tiny=SMALL), rewards=[digit_reward, "format"],
        sampling=SamplingSettings(n=4, max_new_tokens=8, seed=kw.pop("seed", 1)), beta=beta, lr=1e-2,
        eval_sampling=SamplingSettings(n=2, max_new_tokens=8, temperature=1.0), export_dir="none", **kw,
    )
    module.policy.tokenizer = tiny_tokenizer
    dm = PromptDataModule(train_data="synthetic:arithmetic?n=64&split=train", val_data="synthetic:arithmetic?n=4&split=test",
                          batch_size=2, tokenizer=tiny_tokenizer)
    return module, dm


def trainer(tmp_path, max_steps, **kw):
    return pl.Trainer(accelerator="cpu", max_steps=max_steps, default_root_dir=tmp_path, log_every_n_steps=1,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, **kw)


EXPECTED = [
    "reward", "reward_std", "frac_reward_zero_std", "completion_length/mean", "completion_length/min",
    "completion_length/max", "truncated_ratio", "kl", "clip_ratio/low", "clip_ratio/high", "clip_ratio/region",
    "entropy", "policy_loss", "loss", "grad_norm", "lr", "tokens_per_s", "time/rollout", "time/reward",
    "time/train", "format_rate", "rewards/digit_reward/mean", "rewards/digit_reward/std", "rewards/format/mean",
    "rewards/digit_reward/failures", "rewards/digit_reward/timeouts", "ratio/mean", "ratio/max", "optimizer_steps",
    "policy_version", "skipped_steps", "nonfinite_rewards",
]


def test_grpo_step_updates_parameters_and_logs_everything(tiny_tokenizer, tmp_path):
    module, dm = make(tiny_tokenizer, num_minibatches=2, mu=2)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.policy.model.named_parameters()}
    ref_before = {n: p.detach().clone() for n, p in module.ref_model.named_parameters()}
    t = trainer(tmp_path, max_steps=4)  # 1 rollout step = mu * num_minibatches = 4 optimizer steps
    t.fit(module, dm)
    assert t.global_step == 4
    changed = [n for n, p in module.policy.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    for n, p in module.ref_model.named_parameters():  # the reference stays frozen
        assert torch.equal(p, ref_before[n])
    logged = set(t.logged_metrics)
    missing = [k for k in EXPECTED if f"train/{k}" not in logged]
    assert not missing, missing
    assert t.logged_metrics["train/kl"] > 0  # mu=2: the policy moved away from the reference
    scalars = read_scalars(tmp_path)
    # the held-out evaluation runs before the first optimizer step and again at the end
    assert [step for step, _ in scalars["val/pass@1"]] == [0, 4]
    assert all(k in scalars for k in ("val/cons@2", "val/format_rate", "val/completion_length"))


def test_vllm_engine_without_vllm_installed_names_the_fix(tiny_tokenizer, monkeypatch):
    import importlib.util

    from r1lightning.rollout import VLLMEngineSettings

    module, _ = make(tiny_tokenizer, rollout=VLLMEngineSettings())
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ModuleNotFoundError,
                       match=r"VLLMEngineSettings needs the vllm package.*rollout r1lightning.rollout.HFEngineSettings"):
        module.rollout_engine()


def test_beta_zero_builds_no_reference(tiny_tokenizer):
    module, _ = make(tiny_tokenizer, beta=0.0)
    module.configure_model()
    assert module.ref_model is None
    assert not any(n.startswith("ref_model") for n, _ in module.named_parameters())


def test_resume_continues_step_optimizer_reference_and_data(tiny_tokenizer, tmp_path):
    seen = {}

    class Record(pl.Callback):
        def __init__(self, key):
            self.key = key

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.setdefault(self.key, []).append(batch["prompt_text"])

    # uninterrupted: 4 steps
    full, dm = make(tiny_tokenizer, ref_refresh_steps=2)
    trainer(tmp_path / "full", 4, callbacks=[Record("full")], enable_checkpointing=False).fit(full, dm)

    # interrupted after 2 steps, resumed to 4
    part, dm = make(tiny_tokenizer, ref_refresh_steps=2)
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    trainer(tmp_path / "a", 2, callbacks=[Record("a"), ckpt_cb]).fit(part, dm)
    ckpt = sorted(glob.glob(str(tmp_path / "ckpt" / "*.ckpt")))[-1]
    resumed, dm = make(tiny_tokenizer, ref_refresh_steps=2)
    t = trainer(tmp_path / "b", 4, callbacks=[Record("b")], enable_checkpointing=False)
    t.fit(resumed, dm, ckpt_path=ckpt)

    assert t.global_step == 4
    assert seen["a"] + seen["b"] == seen["full"]  # data position restored: no batch repeated or skipped
    opt_state = t.optimizers[0].state_dict()["state"]
    assert all(int(s["step"]) == 4 for s in opt_state.values())  # AdamW moments continued, not restarted
    # seeded rollouts + restored optimizer, reference and data: the resumed run ends where the full run ends
    for (n, p), q in zip(full.policy.model.named_parameters(), resumed.policy.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=n)
    for p, q in zip(full.ref_model.parameters(), resumed.ref_model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0)


def half_constant_reward(completions, id, **kw):
    """Prompts with an odd index score a constant (zero-variance group); the others score a value that
    differs for any two different texts (a random policy's 4 samples are never identical)."""
    import zlib

    varied = [zlib.crc32(t.encode()) % 1000 / 1000 for t in completions]
    return [0.5 if int(i.rsplit("-", 1)[1]) % 2 else v for i, v in zip(id, varied)]


torch.serialization.add_safe_globals([half_constant_reward])


@pytest.mark.parametrize("mode", ["off", "filter", "resample"])
def test_dynamic_sampling_drops_zero_variance_groups(tiny_tokenizer, tmp_path, mode):
    module, dm = make(tiny_tokenizer, dynamic_sampling=mode, max_resample_rounds=1)
    module.reward = type(module.reward)([half_constant_reward])
    dm.train_data = "synthetic:arithmetic?n=2&split=train"  # one batch: prompt 0 (varies) and prompt 1 (constant)
    t = trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    t.fit(module, dm)
    m = t.logged_metrics
    assert float(m["train/frac_reward_zero_std"]) == pytest.approx(0.5)
    # "off" trains on both groups (the constant one has zero advantage); the others drop it from the loss
    assert float(m["train/kept_ratio"]) == pytest.approx(1.0 if mode == "off" else 0.5)
    if mode == "resample":
        assert float(m["train/resampled_groups"]) == 1.0  # the constant group was regenerated once


class FixedEngine:
    """A rollout engine with known completions: for each prompt, 2 cut at the limit and 2 that stopped."""

    holds_weights = False

    def __init__(self, tok, max_new_tokens):
        self.tok, self.max_new_tokens = tok, max_new_tokens

    def generate(self, prompt_ids, sampling):
        from r1lightning.rollout import RolloutBatch

        eos = self.tok.eos_token_id
        ids, trunc = [], []
        group = [[7] * self.max_new_tokens, [8] * self.max_new_tokens, [9, 9, eos], [9, 10, 11, 12, 13, eos]]
        for _ in prompt_ids:  # sampling.n of the 4 (the held-out evaluation samples 2 per prompt)
            ids += [group[i % 4] for i in range(sampling.n)]
            trunc += [i % 4 < 2 for i in range(sampling.n)]
        return RolloutBatch(prompt_ids=list(prompt_ids), completion_ids=ids, texts=self.tok.batch_decode(ids),
                            truncated=trunc, n=sampling.n, stats={"tokens_per_s": 1.0})

    def update_weights(self, policy):
        return {}


def test_mask_truncated_and_overlong_penalty(tiny_tokenizer, tmp_path):
    module, dm = make(tiny_tokenizer, mask_truncated=True, overlong_buffer=4, overlong_penalty_factor=1.0)
    module.engine = FixedEngine(tiny_tokenizer, 8)
    t = trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    t.fit(module, dm)
    m = t.logged_metrics
    assert float(m["train/truncated_ratio"]) == 0.5
    assert float(m["train/kept_ratio"]) == 0.5  # the truncated half never enters the loss
    # lengths 8, 8, 3, 6 with max 8 and buffer 4 (penalty from length 4): -1, -1, 0, -(6-4)/4 = -0.5
    assert float(m["train/overlong_penalty"]) == pytest.approx((-1 - 1 + 0 - 0.5) / 4)


def constant_reward(completions, **kw):
    return [1.0] * len(completions)


torch.serialization.add_safe_globals([constant_reward])


def test_no_reward_variance_ever_stops_with_a_clear_error(tiny_tokenizer, tmp_path):
    module, dm = make(tiny_tokenizer, dynamic_sampling="filter", max_empty_steps=3)
    module.reward = type(module.reward)([constant_reward])
    with pytest.raises(RuntimeError, match="3 consecutive rollout batches had no group with reward variance"):
        trainer(tmp_path, max_steps=2, enable_checkpointing=False).fit(module, dm)


def test_train_inference_logprob_mismatch_is_logged_and_small_for_hf(tiny_tokenizer, tmp_path):
    """The HF engine samples with the training weights, so its log-probs must equal the trainer's."""
    module, dm = make(tiny_tokenizer)
    module.sampling.logprobs = True
    t = trainer(tmp_path, max_steps=1, enable_checkpointing=False)
    t.fit(module, dm)
    assert float(t.logged_metrics["train/logprob_mismatch/max"]) < 1e-4


def test_reference_refresh_follows_global_step_with_several_minibatches(tiny_tokenizer, tmp_path):
    # 3 optimizer steps per rollout batch and a refresh every 4 steps: global_step goes 0, 3, 6, 9, so
    # `step % 4 == 0` would refresh only at 0 (never); period tracking refreshes at 6 (period 1) and 9 (period 2)
    module, dm = make(tiny_tokenizer, num_minibatches=3, ref_refresh_steps=4)
    dm.batch_size = 3
    refreshed = []
    original = module.refresh_reference
    module.refresh_reference = lambda: (refreshed.append(module.global_step), original())
    trainer(tmp_path, max_steps=12, enable_checkpointing=False).fit(module, dm)
    assert refreshed == [6, 9]
    for p, q in zip(module.ref_model.parameters(), module.policy.model.parameters()):
        assert not torch.equal(p, q)  # refreshed at 9, then trained 3 more steps


def hash_reward(completions, **kw):
    """Differs for any two different texts (a random policy's samples are never identical)."""
    import zlib

    return [zlib.crc32(t.encode()) % 1000 / 1000 for t in completions]


torch.serialization.add_safe_globals([hash_reward])


@pytest.mark.parametrize("num_minibatches", [2, 3, 4])
def test_pi_old_is_the_policy_before_the_first_update(tiny_tokenizer, tmp_path, num_minibatches):
    """R1 trains each rollout in 16 mini-batches: mini-batch j's pi_old must be the sampling policy, not the
    policy after j optimizer steps (then every ratio would be 1 at its only update and clipping never fires)."""
    import copy

    module, dm = make(tiny_tokenizer, num_minibatches=num_minibatches, beta=0.0)
    module.reward = type(module.reward)([hash_reward])  # every group has reward variance
    module.hparams.lr = 0.05  # large steps: the policy moves far between mini-batches
    dm.batch_size = 4  # 4 groups of 4: at least one whole group per mini-batch
    found = {}

    class Check(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            found["before"] = copy.deepcopy(pl_module.policy)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            before, temp = found["before"], pl_module.sampling.temperature
            gaps, moved = [], []
            with torch.no_grad():
                for mb in outputs["minibatches"]:
                    for m in mb.micro:
                        assert not m.padding  # one rank: nothing to pad
                        mask = m.cmask.bool()
                        ref = before.token_logprobs(m.ids, m.attn, m.cmask.shape[1], temp, loss_mask=m.cmask)[0]
                        now = pl_module.policy.token_logprobs(m.ids, m.attn, m.cmask.shape[1], temp, loss_mask=m.cmask)[0]
                        gaps.append(float((m.old_logp - ref)[mask].abs().max()))
                        moved.append(float((now - ref)[mask].abs().max()))
            found["gaps"], found["moved"] = gaps, moved

    t = trainer(tmp_path, max_steps=num_minibatches, callbacks=[Check()], enable_checkpointing=False)
    t.fit(module, dm)
    assert t.global_step == num_minibatches  # one rollout, one optimizer step per mini-batch
    assert len(found["gaps"]) >= num_minibatches
    assert max(found["gaps"]) < 1e-6  # pi_old of EVERY mini-batch = the policy before the first update
    assert min(found["moved"]) > 1e-2  # ... and the updates were large enough for a lazy pi_old to differ
    # later mini-batches see ratios != 1, so the PPO clip (epsilon 0.2) fires on some tokens
    assert float(t.logged_metrics["train/clip_ratio/region"]) > 0
    assert float(t.logged_metrics["train/ratio/max"]) > 1.2
    assert float(t.logged_metrics["train/optimizer_steps"]) == num_minibatches


def test_minibatch_rows_split_whole_groups_into_exactly_num_minibatches():
    # 5 groups of 2 into 2 mini-batches: bounds 0, 5//2 = 2, 5 -> groups [0, 1] and [2, 3, 4]
    assert minibatch_rows(5, 2, 2) == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]
    # fewer groups than mini-batches: some are empty, but there are always num_minibatches of them
    assert minibatch_rows(1, 3, 2) == [[], [0, 1, 2]]
    assert [len(r) for r in minibatch_rows(16, 16, 16)] == [16] * 16  # R1: one question's group each
    rows = [r for mb in minibatch_rows(7, 3, 3) for r in mb]
    assert rows == list(range(21))  # every row exactly once, in order


def test_no_sync_dist_advice_beside_a_world_size_one_process_group(tiny_tokenizer, tmp_path):
    """The in-process vLLM engine initialises a world-size-1 torch.distributed group; on one device Lightning
    must not then advise sync_dist=True for the val/* values (the main job printed it at every evaluation)."""
    import warnings

    import torch.distributed as dist

    module, dm = make(tiny_tokenizer)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = pl.Trainer(accelerator="cpu", max_steps=2, default_root_dir=tmp_path, log_every_n_steps=1,
                           enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                           val_check_interval=1, check_val_every_n_epoch=None, limit_val_batches=1,
                           enable_checkpointing=False)
            t.fit(module, dm)
    finally:
        dist.destroy_process_group()
    assert "val/pass@1" in t.callback_metrics  # the Lightning validation loop ran and logged
    advice = [str(w.message) for w in caught if "sync_dist=True" in str(w.message)]
    assert not advice, advice[:2]


# ---------------------------------------------------------------- guards: nothing non-finite is applied or saved
def huge_first_reward(completions, **kw):
    """1e308 for the first completion of the batch (finite in float64, inf in float32); the rest vary."""
    import zlib

    return [1e308 if i == 0 else zlib.crc32(t.encode()) % 1000 / 1000 for i, t in enumerate(completions)]


torch.serialization.add_safe_globals([huge_first_reward])


def all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def test_a_reward_beyond_float32_scores_zero_and_the_run_stays_finite(tiny_tokenizer, tmp_path):
    """The probe: one reward of 1e308 made the float32 reward inf, every advantage of its group NaN, the weights NaN
    and last.ckpt garbage. It now scores 0.0 like a failed reward, is counted, and the rest of the batch trains."""
    module, dm = make(tiny_tokenizer)
    module.reward = type(module.reward)([huge_first_reward])
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.policy.model.named_parameters()}
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    t = trainer(tmp_path, max_steps=2, callbacks=[ckpt])
    t.fit(module, dm)
    assert t.global_step == 2  # both updates applied, none skipped
    m = t.logged_metrics
    assert float(m["train/nonfinite_rewards"]) == 2.0  # one completion per rollout, two rollouts (a run total)
    assert float(m["train/skipped_steps"]) == 0.0
    assert math.isfinite(float(m["train/rewards/huge_first_reward/mean"]))
    params = dict(module.policy.model.named_parameters())
    assert all_finite(params.values())
    assert all(not torch.equal(p, before[n]) for n, p in params.items())  # the other 7 completions still taught
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2 and all_finite(saved["state_dict"].values())
    assert saved["r1lightning_grpo"]["nonfinite_rewards"] == 2  # resumes keep counting from here


def _poison_loss(monkeypatch, when):
    """grpo_loss returns NaN while ``when()`` is true (a NaN value with a finite gradient: the loss check alone
    must catch it)."""
    import r1lightning.modules.grpo as grpo_mod

    real = grpo_mod.grpo_loss

    def loss(*args, **kw):
        value, stats = real(*args, **kw)
        return (value + float("nan"), stats) if when() else (value, stats)

    monkeypatch.setattr(grpo_mod, "grpo_loss", loss)


@pytest.mark.parametrize("poison", ["loss", "grad_norm"])
def test_a_nonfinite_step_is_skipped_without_touching_weights_optimizer_or_schedule(tiny_tokenizer, tmp_path,
                                                                                     monkeypatch, poison):
    """Rollout batch 1 (after one applied step) has a NaN loss, or a finite loss but an inf gradient norm: that
    optimizer step is skipped on every rank (here one), the next batch steps normally."""
    module, dm = make(tiny_tokenizer, warmup_steps=4)  # the LR moves every applied step
    state = {"batch": -1}
    if poison == "loss":
        _poison_loss(monkeypatch, lambda: state["batch"] == 1)
    else:
        real_norm = module.grad_norm
        monkeypatch.setattr(module, "grad_norm", lambda: float("inf") if state["batch"] == 1 else real_norm())
    seen = {}

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            state["batch"] = batch_idx
            if batch_idx == 1:
                opt, sched = trainer.optimizers[0], trainer.lr_scheduler_configs[0].scheduler
                seen["params"] = {n: p.detach().clone() for n, p in pl_module.policy.model.named_parameters()}
                seen["adam_steps"] = sorted({int(s["step"]) for s in opt.state.values()})
                seen["sched"], seen["lr"] = sched.last_epoch, opt.param_groups[0]["lr"]
                seen["step"], seen["version"] = trainer.global_step, pl_module._policy_version

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                opt, sched = trainer.optimizers[0], trainer.lr_scheduler_configs[0].scheduler
                params = dict(pl_module.policy.model.named_parameters())
                seen["unchanged"] = all(torch.equal(p, seen["params"][n]) for n, p in params.items())
                seen["no_grads"] = all(p.grad is None or not p.grad.any() for p in params.values())
                seen["adam_steps_after"] = sorted({int(s["step"]) for s in opt.state.values()})
                seen["sched_after"], seen["lr_after"] = sched.last_epoch, opt.param_groups[0]["lr"]
                seen["step_after"], seen["version_after"] = trainer.global_step, pl_module._policy_version
                seen["logged"] = float(trainer.logged_metrics["train/skipped_steps"])
                seen["optimizer_steps"] = float(trainer.logged_metrics["train/optimizer_steps"])

    t = trainer(tmp_path, max_steps=2, callbacks=[Watch()], enable_checkpointing=False)
    t.fit(module, dm)
    assert seen["unchanged"]  # bit for bit
    assert seen["no_grads"]  # the skipped step's gradients were dropped
    assert seen["adam_steps"] == seen["adam_steps_after"] == [1]  # AdamW's step count did not advance
    assert seen["sched"] == seen["sched_after"] == 1 and seen["lr"] == seen["lr_after"]  # nor the LR schedule
    assert seen["step"] == seen["step_after"] == 1  # global_step counts applied steps only
    assert seen["version"] == seen["version_after"] == 1  # so no engine push for an unchanged policy
    assert seen["logged"] == 1.0 and seen["optimizer_steps"] == 0.0
    assert t.global_step == 2 and module._policy_version == 2  # batch 2 stepped normally
    assert float(t.logged_metrics["train/skipped_steps"]) == 1.0  # a run total
    assert all_finite(module.policy.model.parameters())
    assert module._nonfinite_streak == 0  # an applied step ends the streak


def test_consecutive_nonfinite_steps_stop_the_run_naming_the_count(tiny_tokenizer, tmp_path, monkeypatch):
    module, dm = make(tiny_tokenizer, max_nonfinite_steps=2)
    _poison_loss(monkeypatch, lambda: True)
    t = trainer(tmp_path, max_steps=5, enable_checkpointing=False)
    with pytest.raises(RuntimeError,
                       match=r"2 consecutive optimizer steps had a non-finite loss.*max_nonfinite_steps=2"):
        t.fit(module, dm)
    assert t.global_step == 0  # nothing was applied
    assert all_finite(module.policy.model.parameters())
    with pytest.raises(ValueError, match="max_nonfinite_steps must be >= 1"):
        make(tiny_tokenizer, max_nonfinite_steps=0)


def test_a_checkpoint_of_nonfinite_weights_is_refused_and_last_ckpt_kept(tiny_tokenizer, tmp_path):
    module, dm = make(tiny_tokenizer)
    ckpt_dir = tmp_path / "ckpt"
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_last=True)
    kept = {}

    class Corrupt(pl.Callback):  # runs before ModelCheckpoint (Lightning orders checkpoint callbacks last)
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:  # step 2: last.ckpt of step 1 is on disk
                kept["files"] = {p.name: p.read_bytes() for p in ckpt_dir.iterdir()}
                with torch.no_grad():
                    next(pl_module.policy.model.parameters()).view(-1)[0] = float("nan")  # the (tied) embedding

    t = trainer(tmp_path, max_steps=3, callbacks=[Corrupt(), ckpt])
    with pytest.raises(RuntimeError, match=r"refusing to save a checkpoint at step 2: \d tensor\(s\) on this rank "
                                           r"hold NaN or inf \(state_dict\.policy\.model\.model\.embed_tokens"):
        t.fit(module, dm)
    assert "last.ckpt" in kept["files"]
    assert {p.name: p.read_bytes() for p in ckpt_dir.iterdir()} == kept["files"]  # untouched, nothing added
    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 1 and all_finite(saved["state_dict"].values())


def test_training_temperature_zero_is_refused_but_greedy_evaluation_is_not(tiny_tokenizer):
    # the loss's log-probs are log_softmax(logits / T) at the sampling temperature: T = 0 gave NaN weights at step 0
    with pytest.raises(ValueError, match=r"sampling\.temperature must be > 0 for GRPO's training rollouts, got 0\.0"):
        GRPOModule(policy=PolicyConfig(tiny=SMALL), sampling=SamplingSettings(n=4, temperature=0.0))
    module = GRPOModule(policy=PolicyConfig(tiny=SMALL), sampling=SamplingSettings(n=4),
                        eval_sampling=SamplingSettings(n=1, temperature=0.0))
    assert module.eval_sampling.temperature == 0.0


def test_max_new_tokens_zero_is_refused_when_the_settings_are_built():
    # before: accepted, and the first rollout failed inside transformers' generate
    with pytest.raises(ValueError, match=r"sampling max_new_tokens must be an int >= 1, got 0"):
        GRPOModule(policy=PolicyConfig(tiny=SMALL), sampling=SamplingSettings(n=4, max_new_tokens=0))
