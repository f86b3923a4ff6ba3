"""Weight refresh into the vLLM engine: it really changes the engine, and a broken one is caught."""

import copy
from types import SimpleNamespace

import pytest
import torch
from vllm_testing import SKIP_REASON, perturb

from r1lightning.callbacks import VLLMRolloutRefresh
from r1lightning.rollout.base import SamplingSettings
from r1lightning.rollout.vllm import policy_weights

pytest.importorskip("vllm", reason=SKIP_REASON)
pytestmark = pytest.mark.slow

ATOL = 1e-4  # engine vs trainer probe on CPU fp32: about 1e-6 measured


class Module(SimpleNamespace):
    """What the callback reads from a GRPOModule: engine, policy, and a recording ``log`` that Lightning would
    accept (inside training_step)."""

    def __init__(self, engine, policy):
        super().__init__(engine=engine, policy=policy, logged={}, _current_fx_name="training_step", _trainer=object())

    def log(self, name, value, **kwargs):
        self.logged[name] = value


class Versions:
    """Stands in for the module's side of the contract: push, then call the hook with the push's info."""

    def __init__(self):
        self.version = 0

    def sync(self, cb, module, step, reason="rollout", trainer=None):
        self.version += 1
        info = module.engine.update_weights(module.policy)
        info.update(step=step, policy_version=self.version, reason=reason)
        cb.on_engine_sync(trainer, module, info)
        return info


def probe_diff(engine, policy, ids):
    ours = VLLMRolloutRefresh.policy_probe(policy, ids)
    return (torch.tensor(engine.probe_logprobs(ids)) - ours).abs().max().item()


def test_update_weights_moves_engine_to_the_new_policy(synced):
    engine, policy = synced.engine, synced.policy
    ids = VLLMRolloutRefresh().probe_ids(policy.tokenizer)
    s = SamplingSettings(n=4, max_new_tokens=16, seed=5)
    before = engine.generate(synced.prompts, s).completion_ids
    old = copy.deepcopy(policy)
    assert probe_diff(engine, policy, ids) < ATOL

    perturb(policy)  # one "optimizer step"
    assert probe_diff(engine, policy, ids) > 0.05  # engine now stale: the probe sees it
    stats = engine.update_weights(policy)

    assert probe_diff(engine, policy, ids) < ATOL  # engine == new policy
    assert probe_diff(engine, old, ids) > 0.05  # != old policy
    assert engine.generate(synced.prompts, s).completion_ids != before  # same seed, new weights, new samples
    weights = list(policy_weights(policy))
    assert stats["tensors"] == len(weights) == len(policy.build().state_dict())  # tied lm_head sent too
    assert stats["bytes"] == sum(t.numel() * t.element_size() for _, t in weights)
    assert stats["seconds"] > 0 and stats["dtype"] == "float32" and engine.dtype == torch.float32


def test_a_push_is_quiet_but_other_load_failures_still_warn(synced):
    import logging

    from r1lightning.rollout.vllm import _RefreshLogFilter

    class Recorder(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    rec, vllm_logger = Recorder(), logging.getLogger("vllm")  # vLLM's modules log through children of "vllm"
    vllm_logger.addHandler(rec)
    try:
        synced.engine.update_weights(synced.policy)
    finally:
        vllm_logger.removeHandler(rec)
    # vLLM says these on every reload; a run refreshing every step would print them thousands of times
    for chatter in ("RotaryEmbedding: Failed to load weights", "Reloading and processing weights took",
                    "Successfully reset prefix cache"):
        assert not any(chatter in line for line in rec.lines), (chatter, rec.lines)

    def record(msg, *args):
        return logging.LogRecord("vllm", logging.WARNING, __file__, 1, msg, args, None)

    f = _RefreshLogFilter()
    assert not f.filter(record("%s: Failed to load weights", "RotaryEmbedding"))
    assert f.filter(record("%s: Failed to load weights", "QKVParallelLinear"))  # a real failure is kept
    assert f.filter(record("something else"))


def test_checksum_covers_readable_parameters(synced):
    res = synced.engine.engine_param_checksum(synced.policy)
    # the CPU build repacks linear layers (not readable); embeddings and norms are compared
    assert res["compared"] >= 1 and res["max_rel_diff"] < 1e-9
    perturb(synced.policy)
    assert synced.engine.engine_param_checksum(synced.policy)["max_rel_diff"] > 1e-6


def test_callback_verifies_each_push_and_logs(synced):
    module, cb, v = Module(synced.engine, synced.policy), VLLMRolloutRefresh(), Versions()
    v.sync(cb, module, 0)
    assert cb.pushes == 1 and cb.last_pushed_step == 0
    assert module.logged["vllm/probe_max_abs_diff"] < ATOL
    assert module.logged["vllm/refresh_bytes"] > 0 and module.logged["vllm/refresh_s"] > 0
    assert module.logged["vllm/policy_version"] == 1
    assert "vllm/probe_engine_delta" not in module.logged  # first push: nothing to compare the engine with
    perturb(synced.policy)
    v.sync(cb, module, 1)
    assert cb.pushes == 2 and cb.last_pushed_step == 1 and cb.last_info["reason"] == "rollout"
    assert module.logged["vllm/probe_engine_delta"] > 0.05  # the push moved the engine
    assert probe_diff(synced.engine, synced.policy, cb.probe_ids(synced.policy.tokenizer)) < ATOL


def test_pushes_outside_training_step_go_to_the_logger(synced):
    # Lightning refuses per-step self.log in on_train_start / on_train_end: the callback writes to the logger
    logged = []
    trainer = SimpleNamespace(global_step=5, logger=SimpleNamespace(log_metrics=lambda m, step: logged.append((m, step))))
    module = Module(synced.engine, synced.policy)
    module._current_fx_name = "on_train_start"  # GRPOModule's step-0 evaluation syncs the engine there
    Versions().sync(VLLMRolloutRefresh(), module, 5, reason="eval", trainer=trainer)
    assert module.logged == {}
    ((metrics, step),) = logged
    assert step == 5 and metrics["vllm/probe_max_abs_diff"] < ATOL


def test_a_new_fit_does_not_compare_with_the_previous_fits_engine(synced, monkeypatch):
    module, cb, v = Module(synced.engine, synced.policy), VLLMRolloutRefresh(atol=1e-2), Versions()
    v.sync(cb, module, 0)
    monkeypatch.setattr(synced.engine, "update_weights", lambda policy: {"tensors": 0})
    perturb(synced.policy, scale=1e-5)  # below atol: only "the engine moved" could see a no-op
    cb.on_train_start(None, module)  # a new fit (e.g. a resume): the stored probes no longer apply
    v.sync(cb, module, 0)  # ... so no false alarm
    assert "vllm/probe_engine_delta" not in cb.last_stats
    perturb(synced.policy, scale=1e-5, seed=4)
    with pytest.raises(RuntimeError, match="no-op"):  # within one fit the check is back
        v.sync(cb, module, 1)


def test_noop_refresh_is_detected(synced, monkeypatch):
    module, cb, v = Module(synced.engine, synced.policy), VLLMRolloutRefresh(), Versions()
    v.sync(cb, module, 0)
    monkeypatch.setattr(synced.engine, "update_weights", lambda policy: {"seconds": 0.0, "bytes": 0, "tensors": 0})
    perturb(synced.policy, scale=0.02)
    with pytest.raises(RuntimeError, match=r"weight sync failed.*did not change"):
        v.sync(cb, module, 1)


def test_tiny_step_with_noop_refresh_is_still_detected(synced, monkeypatch):
    # a policy change below atol: the probe comparison alone would pass, "the engine moved" does not
    module, cb, v = Module(synced.engine, synced.policy), VLLMRolloutRefresh(atol=1e-2), Versions()
    v.sync(cb, module, 0)
    monkeypatch.setattr(synced.engine, "update_weights", lambda policy: {"tensors": 0})
    perturb(synced.policy, scale=1e-5)
    with pytest.raises(RuntimeError, match="no-op"):
        v.sync(cb, module, 1)


def test_policy_changed_after_push_is_detected(synced, monkeypatch):
    # push, then the policy moves again before the rollout (e.g. a push from the wrong point of the step)
    module, cb, v = Module(synced.engine, synced.policy), VLLMRolloutRefresh(), Versions()
    v.sync(cb, module, 0)
    real = synced.engine.update_weights

    def push_then_perturb(policy):
        stats = real(policy)
        perturb(policy, seed=2)
        return stats

    monkeypatch.setattr(synced.engine, "update_weights", push_then_perturb)
    perturb(synced.policy)
    with pytest.raises(RuntimeError, match=r"weight sync failed.*max \|dlogp\|"):
        v.sync(cb, module, 1)


def test_partial_push_is_detected(synced, monkeypatch):
    # the classic tied-weights / LoRA-name bug: one tensor silently not pushed (here the tied lm_head)
    module, cb, v = Module(synced.engine, synced.policy), VLLMRolloutRefresh(), Versions()
    v.sync(cb, module, 0)
    import r1lightning.rollout.vllm as vllm_engine

    real = vllm_engine.policy_weights
    monkeypatch.setattr(vllm_engine, "policy_weights",
                        lambda p, dtype=None: ((n, t) for n, t in real(p, dtype) if n != "lm_head.weight"))
    perturb(synced.policy)
    with pytest.raises(RuntimeError, match="corrupted or incomplete"):
        v.sync(cb, module, 1)


def test_checksum_mode_catches_a_corrupted_embedding(synced, monkeypatch):
    module, cb, v = Module(synced.engine, synced.policy), VLLMRolloutRefresh(verify="checksum"), Versions()
    v.sync(cb, module, 0)
    assert module.logged["vllm/checksum_max_rel_diff"] < 1e-6
    real = synced.engine.update_weights

    def push_then_corrupt(policy):
        stats = real(policy)
        with torch.no_grad():
            policy.build().get_input_embeddings().weight[7] += 1.0
        return stats

    monkeypatch.setattr(synced.engine, "update_weights", push_then_corrupt)
    with pytest.raises(RuntimeError, match="embed_tokens"):
        v.sync(cb, module, 1)


def test_verify_every_n_skips_pushes_and_restarts_the_comparison(synced):
    module, cb, v = Module(synced.engine, synced.policy), VLLMRolloutRefresh(verify_every_n=2), Versions()
    v.sync(cb, module, 0)
    assert "vllm/probe_max_abs_diff" in cb.last_stats
    perturb(synced.policy)
    v.sync(cb, module, 1)
    assert "vllm/probe_max_abs_diff" not in cb.last_stats and cb.last_stats["vllm/refresh_tensors"] > 0
    perturb(synced.policy, seed=5)
    v.sync(cb, module, 2)
    assert cb.last_stats["vllm/probe_max_abs_diff"] < ATOL
    assert "vllm/probe_engine_delta" not in cb.last_stats  # the push before was not verified: no stored probe


def test_state_dict_round_trip(synced):
    module, cb, v = Module(synced.engine, synced.policy), VLLMRolloutRefresh(verify="off"), Versions()
    v.sync(cb, module, 0)
    v.sync(cb, module, 4)
    state = cb.state_dict()
    assert state == {"last_pushed_step": 4, "pushes": 2}
    resumed = VLLMRolloutRefresh(verify="off")
    resumed.load_state_dict(state)
    v.sync(resumed, module, 6)
    assert resumed.pushes == 3 and resumed.last_pushed_step == 6
