"""The vLLM engine in a process of its own (``VLLMEngineSettings(async_rollouts, engine_process)``): it samples what
the in-process engine samples on the same weights, a push through shared memory reaches it (verified like any
push), a GRPO fit with it keeps the staleness bound, and nothing is left running afterwards."""

import multiprocessing
import os

import lightning.pytorch as pl
import pytest
import torch
from vllm_testing import ENGINE_MODEL, SKIP_REASON, length_reward, perturb

from r1lightning.callbacks import VLLMRolloutRefresh
from r1lightning.data import PromptDataModule
from r1lightning.modules import GRPOModule
from r1lightning.policy import Policy, PolicyConfig
from r1lightning.rollout import SamplingSettings, VLLMEngineSettings
from r1lightning.rollout.process import PROCESS_NAME

pytest.importorskip("vllm", reason=SKIP_REASON)
pytestmark = pytest.mark.slow


def engine_processes_alive() -> list:
    return [p for p in multiprocessing.active_children() if p.name == PROCESS_NAME]


def probe_gap(engine, policy) -> float:
    ids = VLLMRolloutRefresh().probe_ids(policy.tokenizer)
    return float((torch.tensor(engine.probe_logprobs(ids)) - VLLMRolloutRefresh.policy_probe(policy, ids)).abs().max())


def test_samples_like_the_in_process_engine_and_takes_pushes(synced):
    from r1lightning.rollout.vllm import VLLMProcessRolloutEngine

    policy = Policy(PolicyConfig(tiny=ENGINE_MODEL))
    policy.tokenizer = synced.policy.tokenizer
    policy.build().load_state_dict(synced.base)  # the session engine's weights
    proc = VLLMProcessRolloutEngine(policy, enforce_eager=True, threads=1)
    folder = proc._tmpdir.name
    try:
        assert proc.alive and proc.max_model_len == synced.engine.max_model_len and proc.dtype == torch.float32
        sampling = SamplingSettings(n=4, max_new_tokens=12, seed=7, logprobs=True)
        ours, theirs = proc.generate(synced.prompts, sampling), synced.engine.generate(synced.prompts, sampling)
        assert ours.completion_ids == theirs.completion_ids and ours.texts == theirs.texts
        assert ours.truncated == theirs.truncated
        assert max(abs(a - b) for x, y in zip(ours.logprobs, theirs.logprobs) for a, b in zip(x, y)) < 1e-5

        before = proc.probe_logprobs(VLLMRolloutRefresh().probe_ids(policy.tokenizer))
        perturb(policy, seed=3)  # the trainer's weights move; the process still holds the old ones
        assert probe_gap(proc, policy) > 1e-2
        info = proc.update_weights(policy)
        assert info["tensors"] == len(policy.build().state_dict()) and info["bytes"] > 0
        assert probe_gap(proc, policy) < 1e-4 and proc.num_updates == 1
        after = proc.probe_logprobs(VLLMRolloutRefresh().probe_ids(policy.tokenizer))
        assert max(abs(a - b) for a, b in zip(before, after)) > 1e-2
        sums = proc.engine_param_checksum(policy)
        assert sums["compared"] > 0 and sums["max_rel_diff"] < 1e-6
        # the same pushed weights in the in-process engine: the same samples again
        synced.engine.update_weights(policy)
        assert proc.generate(synced.prompts, sampling).completion_ids == \
            synced.engine.generate(synced.prompts, sampling).completion_ids
    finally:
        proc.close()
    assert not proc.alive and engine_processes_alive() == [] and not os.path.exists(folder)
    with pytest.raises(RuntimeError, match="closed"):
        proc.generate(synced.prompts, SamplingSettings(n=2, max_new_tokens=4))
    proc.close()  # idempotent


def test_grpo_fit_with_the_engine_process_verifies_pushes_and_leaves_nothing(vllm_session, tmp_path):
    from r1lightning.rollout.async_worker import worker_threads_alive

    module = GRPOModule(policy=PolicyConfig(tiny=ENGINE_MODEL), rewards=[length_reward], beta=0.0, lr=1e-2,
                        sampling=SamplingSettings(n=4, max_new_tokens=8, seed=1), eval_sampling=None,
                        rollout=VLLMEngineSettings(enforce_eager=True, async_rollouts=True, engine_process=True),
                        export_dir="none")
    module.policy.tokenizer = vllm_session.policy.tokenizer
    dm = PromptDataModule(train_data="synthetic:arithmetic?n=64&split=train", batch_size=2,
                          tokenizer=vllm_session.policy.tokenizer)
    infos, stale, engines = [], [], []

    class Record(VLLMRolloutRefresh):
        def on_engine_sync(self, trainer, pl_module, info):
            infos.append(dict(info))
            engines.append(pl_module.engine)
            super().on_engine_sync(trainer, pl_module, info)

    class Stale(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if outputs:
                stale.append(outputs["trajectory"].staleness)

    t = pl.Trainer(accelerator="cpu", max_steps=3, default_root_dir=tmp_path, log_every_n_steps=1,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   limit_val_batches=0, logger=False, callbacks=[Record(), Stale()])
    t.fit(module, dm)
    assert t.global_step == 3
    assert engines and all(type(e).__name__ == "VLLMProcessRolloutEngine" for e in engines)
    assert stale == [0, 1, 1]  # the fill batch, then one version behind
    assert float(t.callback_metrics["vllm/probe_max_abs_diff"]) < 1e-4
    assert float(t.callback_metrics["vllm/probe_engine_delta"]) > 0  # the updates reached the process
    assert 0 < float(t.callback_metrics["train/async/tis_mean"]) <= 2.0
    # the module closed the process at teardown; no worker thread either
    assert module.engine is None and not engines[0].alive
    assert engine_processes_alive() == [] and worker_threads_alive() == []


def test_settings_refuse_what_the_process_cannot_do():
    with pytest.raises(ValueError, match="engine_process needs async_rollouts"):
        VLLMEngineSettings(engine_process=True)
    with pytest.raises(ValueError, match="one-device engine"):
        VLLMEngineSettings(async_rollouts=True, engine_process=True, tensor_parallel_size=2)
    with pytest.raises(ValueError, match="engine_process must be"):
        VLLMEngineSettings(async_rollouts=True, engine_process=1)
    assert not VLLMEngineSettings().engine_process
