"""GenerationLengthScheduler: schedule values, validation, application to the module, state round trip."""

from __future__ import annotations

import logging

import pytest
from cb_fakes import FakeModule, fake_trainer

from r1lightning.callbacks import GenerationLengthScheduler
from r1lightning.rollout.base import SamplingSettings


@pytest.mark.parametrize("step, expected", [
    (0, 32768), (8199, 32768),      # R1: 32,768 tokens ...
    (8200, 65536), (10400, 65536),  # ... raised to 65,536 at step 8,200, kept to the end (10,400)
])
def test_r1_default(step, expected):
    assert GenerationLengthScheduler().max_new_tokens_at(step) == expected


@pytest.mark.parametrize("step, expected", [
    (0, 1000),   # exactly start
    (1, 1088),   # 1000 + 1000 * 1/10 = 1100; 1100 / 64 = 17.19 -> 17 * 64 = 1088
    (3, 1280),   # 1300 / 64 = 20.31 -> 20 * 64
    (5, 1472),   # 1500 / 64 = 23.44 -> 23 * 64
    (9, 1920),   # 1900 / 64 = 29.69 -> 30 * 64
    (10, 2000),  # exactly end (not a multiple of 64), and from then on
    (11, 2000),
])
def test_linear_rounds_to_multiple_of_64(step, expected):
    sched = GenerationLengthScheduler(schedule="linear", start=1000, end=2000, ramp_steps=10)
    assert sched.max_new_tokens_at(step) == expected


def test_linear_exact_clamped_and_decreasing():
    exact = GenerationLengthScheduler(schedule="linear", start=1000, end=2000, ramp_steps=10, multiple_of=1)
    assert [exact.max_new_tokens_at(s) for s in (0, 3, 7, 10)] == [1000, 1300, 1700, 2000]
    # start=100, end=120: step 5 -> 110 -> 110/64 = 1.72 -> 128, clamped into [100, 120] -> 120
    clamped = GenerationLengthScheduler(schedule="linear", start=100, end=120, ramp_steps=10)
    assert clamped.max_new_tokens_at(5) == 120
    # shrinking works too: 4096 -> 2048 over 4 steps; step 1 -> 3584 = 56 * 64 exactly
    down = GenerationLengthScheduler(schedule="linear", start=4096, end=2048, ramp_steps=4)
    assert [down.max_new_tokens_at(s) for s in range(6)] == [4096, 3584, 3072, 2560, 2048, 2048]


def test_steps_schedule():
    sched = GenerationLengthScheduler(schedule="steps", milestones=[(100, 4096), (500, 8192)], start=2048)
    got = [sched.max_new_tokens_at(s) for s in (0, 99, 100, 499, 500, 10**6)]
    assert got == [2048, 2048, 4096, 4096, 8192, 8192]  # start before the first milestone
    from_zero = GenerationLengthScheduler(schedule="steps", milestones=[[0, 512], [2, 1024]])  # YAML gives lists
    assert [from_zero.max_new_tokens_at(s) for s in range(4)] == [512, 512, 1024, 1024]


@pytest.mark.parametrize("kwargs, match", [
    ({"schedule": "cosine"}, "schedule must be"),
    ({"start": -1}, "start must be a positive integer"),
    ({"end": 0}, "end must be a positive integer"),
    ({"start": 1.5}, "start must be a positive integer"),
    ({"start": True}, "start must be a positive integer"),
    ({"at_step": -5}, "at_step must be a non-negative"),
    ({"milestones": [(0, 10)]}, "only used by schedule='steps'"),
    ({"schedule": "steps"}, "needs milestones"),
    ({"schedule": "steps", "milestones": []}, "needs milestones"),
    ({"schedule": "steps", "milestones": [(10, 64), (5, 128)]}, "strictly increasing"),
    ({"schedule": "steps", "milestones": [(10, 64), (10, 128)]}, "strictly increasing"),
    ({"schedule": "steps", "milestones": [(0, -64)]}, r"milestones\[0\] length"),
    ({"schedule": "steps", "milestones": [(-1, 64)]}, r"milestones\[0\] step"),
    ({"schedule": "steps", "milestones": [(0, 64, 1)]}, r"milestones\[0\] must be a \(step, length\) pair"),
    ({"schedule": "linear"}, "ramp_steps >= 1"),
    ({"multiple_of": 0}, "multiple_of"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationLengthScheduler(**kwargs)


class GeneratingEngine:
    """Builds its sampling parameters from the SamplingSettings of each call, as every engine does."""

    def __init__(self):
        self.max_tokens_seen = []

    def generate(self, prompt_ids, sampling):
        self.max_tokens_seen.append(sampling.max_new_tokens)


def test_batch_start_applies_logs_and_the_next_rollout_uses_it():
    sched = GenerationLengthScheduler(schedule="steps", milestones=[(0, 64), (3, 128)])
    engine = GeneratingEngine()
    module = FakeModule(sampling=SamplingSettings(max_new_tokens=512), engine=engine)
    for step in range(5):
        sched.on_train_batch_start(fake_trainer(step), module, None, step)
        assert module.sampling.max_new_tokens == (64 if step < 3 else 128)
        assert module.logged["gen/max_new_tokens"] == module.sampling.max_new_tokens
        engine.generate([[1]], module.sampling)  # what GRPOModule.generate_and_score passes
    assert engine.max_tokens_seen == [64, 64, 64, 128, 128]
    assert sched.state_dict() == {"last_length": 128, "last_step": 4}


def test_the_engine_is_not_called_and_may_be_absent():
    sched = GenerationLengthScheduler(start=100, at_step=1, end=200)

    class Untouchable:  # any attribute access other than max_model_len would be an engine call
        def __getattr__(self, name):
            if name == "max_model_len":
                raise AttributeError(name)
            raise AssertionError(f"the scheduler touched engine.{name}")

    module = FakeModule(engine=Untouchable())
    sched.on_train_batch_start(fake_trainer(1), module, None, 0)
    assert module.sampling.max_new_tokens == 200
    lazy = FakeModule(engine=None)  # the engine is built at the first rollout, from sampling
    sched.on_train_batch_start(fake_trainer(0), lazy, None, 0)
    assert lazy.sampling.max_new_tokens == 100


def test_module_without_sampling_is_a_clear_error():
    sched = GenerationLengthScheduler()
    with pytest.raises(TypeError, match="sampling.max_new_tokens"):
        sched.setup(fake_trainer(), object(), "fit")
    with pytest.raises(TypeError, match="sampling.max_new_tokens"):
        sched.on_train_batch_start(fake_trainer(), FakeModule(sampling=None), None, 0)


def test_warns_once_when_engine_max_model_len_is_too_small(caplog):
    class Engine:
        max_model_len = 40000

    sched, module = GenerationLengthScheduler(), FakeModule(engine=Engine())
    with caplog.at_level(logging.WARNING):
        sched.apply(module, 8199)  # 32,768 <= 40,000: fine
        assert not caplog.records
        for step in range(8200, 8205):  # 65,536 > 40,000
            sched.apply(module, step)
    assert len(caplog.records) == 1  # once, not every step
    msg = caplog.records[0].getMessage()
    assert "max_new_tokens=65536 exceeds the engine's max_model_len=40000" in msg
    assert "VLLMEngineSettings" in msg and "model.init_args.rollout.init_args.max_model_len" in msg
    assert "vllm_max_model_len" not in msg  # the old RolloutSettings field


def test_state_round_trip_gives_the_same_next_length():
    kwargs = {"schedule": "linear", "start": 1024, "end": 4096, "ramp_steps": 100}
    first = GenerationLengthScheduler(**kwargs)
    module = FakeModule()
    for step in range(40):
        first.on_train_batch_start(fake_trainer(step), module, None, step)
    state = first.state_dict()
    assert state == {"last_length": 2240, "last_step": 39}  # 1024 + 3072 * 0.39 = 2222.08 -> 34.72 -> 35 * 64
    second = GenerationLengthScheduler(**kwargs)
    second.load_state_dict(state)
    assert second.state_dict() == state
    resumed = FakeModule()  # a fresh module starts at the SamplingSettings default
    assert resumed.sampling.max_new_tokens == 512
    second.on_train_start(fake_trainer(40), resumed)  # restored step: applied before the first batch
    first.on_train_batch_start(fake_trainer(40), module, None, 40)
    assert resumed.sampling.max_new_tokens == module.sampling.max_new_tokens == 2240  # 2252.8 -> 35.2 -> 35 * 64


def test_resume_with_changed_schedule_warns_and_uses_the_config(caplog):
    sched = GenerationLengthScheduler(start=1000, end=2000, at_step=10)
    sched.load_state_dict({"last_length": 4096, "last_step": 12})
    module = FakeModule()
    with caplog.at_level(logging.WARNING):
        sched.on_train_start(fake_trainer(13), module)
    assert module.sampling.max_new_tokens == 2000
    assert "checkpoint used max_new_tokens=4096" in caplog.text
