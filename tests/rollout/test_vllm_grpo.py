"""GRPO fit with the vLLM engine. The module owns the push: every rollout samples from the current policy with
or without the verifying callback; with it, every push is verified (and a failed one stops the run); resumable.

The module-owned sync: GRPOModule(rollout=VLLMEngineSettings(...)) pushes before a rollout whenever the policy
changed (and at the first rollout of a fit: an engine alive from before may hold other weights), then calls
on_engine_sync."""

import glob

import lightning.pytorch as pl
import pytest
import torch
from vllm_testing import ENGINE_MODEL, SKIP_REASON, length_reward

from r1lightning.callbacks import VLLMRolloutRefresh
from r1lightning.data import PromptDataModule
from r1lightning.modules import GRPOModule
from r1lightning.policy import PolicyConfig
from r1lightning.rollout import SamplingSettings, VLLMEngineSettings

pytest.importorskip("vllm", reason=SKIP_REASON)
pytestmark = pytest.mark.slow


def make(engine, tokenizer, **settings):
    # the session engine has this architecture; the fit's first push loads this module's weights into it
    module = GRPOModule(policy=PolicyConfig(tiny=ENGINE_MODEL), rewards=[length_reward], beta=0.0, lr=1e-2,
                        sampling=SamplingSettings(n=4, max_new_tokens=8, seed=1),
                        rollout=VLLMEngineSettings(enforce_eager=True, **settings), eval_sampling=None,
                        export_dir="none")
    module.policy.tokenizer = tokenizer
    module.engine = engine  # instead of starting a second engine
    dm = PromptDataModule(train_data="synthetic:arithmetic?n=64&split=train", batch_size=2, tokenizer=tokenizer)
    return module, dm


def trainer(root, max_steps, callbacks):
    return pl.Trainer(accelerator="cpu", max_steps=max_steps, default_root_dir=root, log_every_n_steps=1,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, logger=False, callbacks=callbacks)


class Recording(VLLMRolloutRefresh):
    def __init__(self):
        super().__init__()
        self.infos = []

    def on_engine_sync(self, trainer, pl_module, info):
        self.infos.append(dict(info))
        super().on_engine_sync(trainer, pl_module, info)


def probe_gap(engine, policy):
    ids = VLLMRolloutRefresh().probe_ids(policy.tokenizer)
    return float((torch.tensor(engine.probe_logprobs(ids)) - VLLMRolloutRefresh.policy_probe(policy, ids)).abs().max())


def test_every_rollout_samples_from_the_current_policy_without_the_callback(vllm_session, tmp_path, monkeypatch):
    engine = vllm_session.engine
    module, dm = make(engine, vllm_session.policy.tokenizer)
    gaps, real = [], engine.generate

    def checked(prompts, sampling):  # engine vs policy right before each rollout
        gaps.append(probe_gap(engine, module.policy))
        return real(prompts, sampling)

    monkeypatch.setattr(engine, "generate", checked)
    before = engine.num_updates
    trainer(tmp_path, 3, []).fit(module, dm)
    assert len(gaps) == 3 and max(gaps) < 1e-4, gaps  # the engine held this step's pi_old every time
    assert engine.num_updates - before == 3  # first rollout of the fit + after steps 0 and 1


def test_fit_verifies_every_push_and_resumes(vllm_session, tmp_path):
    tok = vllm_session.policy.tokenizer
    module, dm = make(vllm_session.engine, tok)
    cb = Recording()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    t = trainer(tmp_path / "a", 2, [cb, ckpt])
    t.fit(module, dm)
    # step 0: the engine (holding other weights) is pushed before the fit's first rollout; step 1: after the update
    assert [i["reason"] for i in cb.infos] == ["rollout", "rollout"]
    assert [i["step"] for i in cb.infos] == [0, 1]
    assert cb.infos[0]["policy_version"] < cb.infos[1]["policy_version"]
    assert {"seconds", "bytes", "tensors", "dtype"} <= set(cb.infos[1])
    assert (cb.pushes, cb.last_pushed_step) == (2, 1)
    assert float(t.callback_metrics["vllm/probe_max_abs_diff"]) < 1e-4
    assert float(t.callback_metrics["vllm/probe_engine_delta"]) > 0  # the optimizer step reached the engine
    assert float(t.callback_metrics["vllm/refresh_bytes"]) > 0

    path = sorted(glob.glob(str(tmp_path / "ckpt" / "*.ckpt")))[-1]
    resumed, dm = make(vllm_session.engine, tok)
    cb2 = Recording()
    t2 = trainer(tmp_path / "b", 4, [cb2])
    t2.fit(resumed, dm, ckpt_path=path)
    assert t2.global_step == 4
    # state restored (2 pushes), then the fit's first push at step 2 and the one after step 2's update, verified
    assert [i["reason"] for i in cb2.infos] == ["rollout", "rollout"] and [i["step"] for i in cb2.infos] == [2, 3]
    assert (cb2.pushes, cb2.last_pushed_step) == (4, 3)
    assert float(t2.callback_metrics["vllm/probe_max_abs_diff"]) < 1e-4


def test_fit_stops_on_a_failed_sync(vllm_session, tmp_path, monkeypatch):
    module, dm = make(vllm_session.engine, vllm_session.policy.tokenizer)
    vllm_session.engine.update_weights(vllm_session.policy)  # the engine holds another model's weights
    monkeypatch.setattr(vllm_session.engine, "update_weights", lambda policy: {"tensors": 0})
    with pytest.raises(RuntimeError, match="weight sync failed"):
        trainer(tmp_path, 2, [VLLMRolloutRefresh()]).fit(module, dm)


def test_async_rollouts_sample_in_a_thread_from_verified_pushes_at_most_one_version_old(vllm_session, tmp_path,
                                                                                        monkeypatch):
    import threading

    from r1lightning.rollout.async_worker import worker_threads_alive

    engine = vllm_session.engine
    module, dm = make(engine, vllm_session.policy.tokenizer, async_rollouts=True, max_staleness=1)
    cb = Recording()
    seen, real = [], engine.generate

    def recording(prompts, sampling):  # the version the engine holds when each batch is generated
        seen.append((threading.current_thread().name, cb.infos[-1]["policy_version"], sampling.logprobs))
        return real(prompts, sampling)

    monkeypatch.setattr(engine, "generate", recording)
    stale = []

    class Stale(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if outputs:
                stale.append(outputs["trajectory"].staleness)

    t = trainer(tmp_path, 3, [cb, Stale()])
    t.fit(module, dm)
    assert t.global_step == 3
    assert all(name.startswith("r1l-rollout") and lp for name, _, lp in seen)  # the worker thread, with log-probs
    # 4 batches generated (fill + 3); each from the weights of the push right before it, verified by the callback
    assert [v for _, v, _ in seen] == [0, 0, 1, 2]
    assert stale == [0, 1, 1]
    assert float(t.callback_metrics["vllm/probe_max_abs_diff"]) < 1e-4
    assert 0 < float(t.callback_metrics["train/async/tis_mean"]) <= 2.0
    assert worker_threads_alive() == []
