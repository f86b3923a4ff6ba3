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
    """What the callback reads from a GRPOModule: engine, policy and a recording ``log``."""

    def __init__(self, engine, policy):
        super().__init__(engine=engine, policy=policy, logged={})

    def log(self, name, value, **kwargs):
        self.logged[name] = value


def batch_start(cb, module, step):
    cb.on_train_batch_start(SimpleNamespace(global_step=step), module, None, 0)


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
    weights = policy_weights(policy)
    assert stats["tensors"] == len(weights) == len(policy.build().state_dict())  # tied lm_head sent too
    assert stats["bytes"] == sum(t.numel() * t.element_size() for _, t in weights)
    assert stats["seconds"] > 0


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


def test_callback_pushes_on_step_change_and_logs(synced):
    module = Module(synced.engine, synced.policy)
    cb = VLLMRolloutRefresh()
    batch_start(cb, module, 0)  # first engine seen in this fit: always pushed
    assert cb.pushes == 1 and cb.last_pushed_step == 0
    assert module.logged["vllm/probe_max_abs_diff"] < ATOL
    assert module.logged["vllm/refresh_bytes"] > 0 and module.logged["vllm/refresh_s"] > 0
    batch_start(cb, module, 0)  # same step (no optimizer step happened): nothing to push
    assert cb.pushes == 1
    perturb(synced.policy)
    batch_start(cb, module, 1)
    assert cb.pushes == 2 and cb.last_pushed_step == 1
    assert module.logged["vllm/probe_engine_delta"] > 0.05  # the push moved the engine
    assert probe_diff(synced.engine, synced.policy, cb.probe_ids(synced.policy.tokenizer)) < ATOL


def test_every_n_steps_follows_multiples_even_when_skipped_over(synced):
    module = Module(synced.engine, synced.policy)
    cb = VLLMRolloutRefresh(every_n_steps=4, verify="off")
    pushed = []
    for step in [0, 3, 6, 9, 12, 13, 15, 16]:  # e.g. 3 optimizer steps per rollout, then irregular
        before = cb.pushes
        batch_start(cb, module, step)
        if cb.pushes > before:
            pushed.append(step)
    assert pushed == [0, 6, 9, 12, 16]  # each time a multiple of 4 was reached or passed


def test_noop_refresh_is_detected(synced, monkeypatch):
    module = Module(synced.engine, synced.policy)
    cb = VLLMRolloutRefresh()
    batch_start(cb, module, 0)
    monkeypatch.setattr(synced.engine, "update_weights", lambda policy: {"seconds": 0.0, "bytes": 0, "tensors": 0})
    perturb(synced.policy, scale=0.02)
    with pytest.raises(RuntimeError, match=r"weight sync failed.*did not change"):
        batch_start(cb, module, 1)


def test_tiny_step_with_noop_refresh_is_still_detected(synced, monkeypatch):
    # a policy change below atol: the probe comparison alone would pass, "the engine moved" does not
    module = Module(synced.engine, synced.policy)
    cb = VLLMRolloutRefresh(atol=1e-2)
    batch_start(cb, module, 0)
    monkeypatch.setattr(synced.engine, "update_weights", lambda policy: {"tensors": 0})
    perturb(synced.policy, scale=1e-5)
    with pytest.raises(RuntimeError, match="no-op"):
        batch_start(cb, module, 1)


def test_policy_changed_after_push_is_detected(synced, monkeypatch):
    # push, then the policy moves again before the rollout (e.g. a push from the wrong point of the step)
    module = Module(synced.engine, synced.policy)
    cb = VLLMRolloutRefresh()
    batch_start(cb, module, 0)
    real = synced.engine.update_weights

    def push_then_perturb(policy):
        stats = real(policy)
        perturb(policy, seed=2)
        return stats

    monkeypatch.setattr(synced.engine, "update_weights", push_then_perturb)
    perturb(synced.policy)
    with pytest.raises(RuntimeError, match=r"weight sync failed.*max \|dlogp\|"):
        batch_start(cb, module, 1)


def test_partial_push_is_detected(synced, monkeypatch):
    # the classic tied-weights / LoRA-name bug: one tensor silently not pushed (here the tied lm_head)
    module = Module(synced.engine, synced.policy)
    cb = VLLMRolloutRefresh()
    batch_start(cb, module, 0)
    import r1lightning.rollout.vllm as vllm_engine

    real = vllm_engine.policy_weights
    monkeypatch.setattr(vllm_engine, "policy_weights", lambda p: [(n, t) for n, t in real(p) if n != "lm_head.weight"])
    perturb(synced.policy)
    with pytest.raises(RuntimeError, match="corrupted or incomplete"):
        batch_start(cb, module, 1)


def test_checksum_mode_catches_a_corrupted_embedding(synced, monkeypatch):
    module = Module(synced.engine, synced.policy)
    cb = VLLMRolloutRefresh(verify="checksum")
    batch_start(cb, module, 0)
    assert module.logged["vllm/checksum_max_rel_diff"] < 1e-6
    real = synced.engine.update_weights

    def push_then_corrupt(policy):
        stats = real(policy)
        with torch.no_grad():
            policy.build().get_input_embeddings().weight[7] += 1.0
        return stats

    monkeypatch.setattr(synced.engine, "update_weights", push_then_corrupt)
    with pytest.raises(RuntimeError, match="embed_tokens"):
        batch_start(cb, module, 1)


def test_state_dict_round_trip_keeps_the_cadence(synced):
    module = Module(synced.engine, synced.policy)
    cb = VLLMRolloutRefresh(every_n_steps=4, verify="off")
    batch_start(cb, module, 0)
    batch_start(cb, module, 4)
    state = cb.state_dict()
    assert state == {"last_pushed_step": 4, "pushes": 2}
    resumed = VLLMRolloutRefresh(every_n_steps=4, verify="off")
    resumed.load_state_dict(state)
    resumed._engine_id = id(synced.engine)  # the engine it last pushed to, as within one fit
    resumed._must_push = False
    batch_start(resumed, module, 6)
    assert resumed.pushes == 2  # 6 // 4 == 4 // 4: not due
    batch_start(resumed, module, 8)
    assert resumed.pushes == 3 and resumed.last_pushed_step == 8
