"""GRPO fit with the vLLM engine: refreshed and verified every step, resumable, and refused without the callback."""

import glob

import lightning.pytorch as pl
import pytest
import torch
from vllm_testing import ENGINE_MODEL, SKIP_REASON

from r1lightning.callbacks import VLLMRolloutRefresh
from r1lightning.data import PromptDataModule
from r1lightning.modules import GRPOModule
from r1lightning.modules.grpo import RolloutSettings
from r1lightning.policy import PolicyConfig
from r1lightning.rollout import SamplingSettings

pytest.importorskip("vllm", reason=SKIP_REASON)
pytestmark = pytest.mark.slow


def length_reward(completions, **kw):
    """Varies within every group of this random model (unlike accuracy), so each step changes the policy."""
    return [len(t) % 7 / 7 for t in completions]


torch.serialization.add_safe_globals([length_reward])  # the checkpoint's hparams name this test reward


def make(engine, tokenizer):
    # the session engine has this architecture; the callback's first push loads this module's weights into it
    module = GRPOModule(policy=PolicyConfig(tiny=ENGINE_MODEL), rewards=[length_reward], beta=0.0, lr=1e-2,
                        sampling=SamplingSettings(n=4, max_new_tokens=8, seed=1),
                        rollout=RolloutSettings(engine="vllm"), eval_sampling=None, export_dir="none")
    module.policy.tokenizer = tokenizer
    module.engine = engine  # instead of starting a second engine
    dm = PromptDataModule(train_data="synthetic:arithmetic?n=64&split=train", batch_size=2, tokenizer=tokenizer)
    return module, dm


def trainer(root, max_steps, callbacks):
    return pl.Trainer(accelerator="cpu", max_steps=max_steps, default_root_dir=root, log_every_n_steps=1,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, logger=False, callbacks=callbacks)


def test_fit_refreshes_every_step_and_resumes(vllm_session, tmp_path):
    tok = vllm_session.policy.tokenizer
    module, dm = make(vllm_session.engine, tok)
    cb = VLLMRolloutRefresh()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    t = trainer(tmp_path / "a", 2, [cb, ckpt])
    t.fit(module, dm)
    # step 0: the engine (holding other weights) is pushed before the first rollout; step 1: after the update
    assert (cb.pushes, cb.last_pushed_step) == (2, 1)
    assert float(t.callback_metrics["vllm/probe_max_abs_diff"]) < 1e-4
    assert float(t.callback_metrics["vllm/probe_engine_delta"]) > 0  # the optimizer step reached the engine
    assert float(t.callback_metrics["vllm/refresh_bytes"]) > 0

    path = sorted(glob.glob(str(tmp_path / "ckpt" / "*.ckpt")))[-1]
    resumed, dm = make(vllm_session.engine, tok)
    cb2 = VLLMRolloutRefresh()
    t2 = trainer(tmp_path / "b", 4, [cb2])
    t2.fit(resumed, dm, ckpt_path=path)
    assert t2.global_step == 4
    # state restored (2 pushes), then steps 2 (first engine of this fit) and 3 pushed and verified
    assert (cb2.pushes, cb2.last_pushed_step) == (4, 3)
    assert float(t2.callback_metrics["vllm/probe_max_abs_diff"]) < 1e-4


def test_fit_refuses_a_vllm_engine_without_the_refresh_callback(vllm_session, tmp_path):
    module, dm = make(vllm_session.engine, vllm_session.policy.tokenizer)
    with pytest.raises(RuntimeError, match="VLLMRolloutRefresh"):
        trainer(tmp_path, 1, []).fit(module, dm)


def test_fit_stops_on_a_failed_sync(vllm_session, tmp_path, monkeypatch):
    module, dm = make(vllm_session.engine, vllm_session.policy.tokenizer)
    vllm_session.engine.update_weights(vllm_session.policy)  # the engine holds another model's weights
    monkeypatch.setattr(vllm_session.engine, "update_weights", lambda policy: {"tensors": 0})
    with pytest.raises(RuntimeError, match="weight sync failed"):
        trainer(tmp_path, 2, [VLLMRolloutRefresh()]).fit(module, dm)
