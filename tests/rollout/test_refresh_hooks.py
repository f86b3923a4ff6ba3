"""VLLMRolloutRefresh's bookkeeping, without vLLM: the tolerance follows the engine's dtype, metrics go where
Lightning allows them, and pushes that never reach ``on_engine_sync`` are reported instead of ignored."""

import logging
from types import SimpleNamespace

import pytest
import torch
from vllm_testing import ENGINE_MODEL

from r1lightning.callbacks import VLLMRolloutRefresh
from r1lightning.callbacks.vllm_refresh import _can_log_on_step
from r1lightning.policy import Policy, PolicyConfig


@pytest.fixture(scope="module")
def policy():
    return Policy(PolicyConfig(tiny=ENGINE_MODEL))


@pytest.mark.parametrize("engine_dtype, policy_dtype, expected", [
    (torch.float32, torch.float32, 1e-3),   # fp32 end to end
    (torch.bfloat16, torch.float32, 1.0),   # bf16 engine sampling fp32 master weights (configs/r1_gpu.yaml)
    (torch.float32, torch.bfloat16, 1.0),   # a bf16 policy's own forward is low precision
    (None, torch.float32, 1e-3),            # an engine without a dtype: the policy decides
])
def test_tolerance_follows_the_engine_dtype(policy, engine_dtype, policy_dtype, expected):
    model = policy.build().to(policy_dtype)
    try:
        engine = SimpleNamespace() if engine_dtype is None else SimpleNamespace(dtype=engine_dtype)
        assert VLLMRolloutRefresh().tolerance(engine, policy) == expected
        assert VLLMRolloutRefresh(atol=0.05).tolerance(engine, policy) == 0.05
    finally:
        model.to(torch.float32)


@pytest.mark.parametrize("fx, allowed", [("training_step", True), ("on_train_batch_start", True),
                                         ("on_train_start", False), ("on_train_end", False), (None, False)])
def test_per_step_logging_only_where_lightning_allows_it(fx, allowed):
    assert _can_log_on_step(SimpleNamespace(_current_fx_name=fx, _trainer=object())) is allowed


def test_unreported_pushes_are_warned_about_once(caplog):
    engine = SimpleNamespace(holds_weights=True, num_updates=2)  # alive before the fit, already pushed twice
    module = SimpleNamespace(engine=engine)
    cb = VLLMRolloutRefresh()
    cb.on_train_start(None, module)
    with caplog.at_level(logging.WARNING, logger="r1lightning.callbacks.vllm_refresh"):
        cb.on_train_batch_end(None, module, None, None, 0)
        assert not caplog.records  # pushes from before the fit are not this fit's
        engine.num_updates = 3  # the module pushed without calling on_engine_sync
        cb.on_train_batch_end(None, module, None, None, 1)
        engine.num_updates = 4
        cb.on_train_batch_end(None, module, None, None, 2)
    assert len(caplog.records) == 1 and "not verified" in caplog.records[0].getMessage()


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="verify_every_n"):
        VLLMRolloutRefresh(verify_every_n=0)
    with pytest.raises(ValueError, match="verify"):
        VLLMRolloutRefresh(verify="sometimes")
    with pytest.raises(ValueError, match="atol"):
        VLLMRolloutRefresh(atol=0)
    with pytest.raises(TypeError):
        VLLMRolloutRefresh(every_n_steps=1)  # the module owns the push cadence now
