"""Engine settings classes: picked by class_path, validated, built, and round-tripped through a checkpoint.

None of these needs vLLM: VLLMEngineSettings lives in a module that imports vLLM only when an engine starts.
"""

import subprocess
import sys
from typing import Optional

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.demos.boring_classes import BoringModel

from r1lightning.rollout import EngineSettings, HFEngineSettings, HFRolloutEngine, VLLMEngineSettings


def test_importing_the_settings_does_not_import_vllm():
    code = ("import sys, r1lightning.rollout, r1lightning.rollout.vllm; "
            "assert 'vllm' not in sys.modules, 'vllm imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_defaults_are_the_contract():
    v = VLLMEngineSettings()
    assert vars(v) == dict(dtype="auto", gpu_memory_utilization=0.3, kv_cache_space_gb=None, max_model_len=None,
                           max_num_batched_tokens=None, tensor_parallel_size=1, enforce_eager=False,
                           enable_sleep_mode=False, engine_kwargs=None, async_rollouts=False, max_staleness=1,
                           tis_cap=2.0, engine_process=False)
    # synchronous (exact on-policy) unless asked
    assert vars(HFEngineSettings()) == {"max_batch_size": 256, "async_rollouts": False, "max_staleness": 1,
                                        "tis_cap": 2.0, "engine_process": False}
    assert isinstance(v, EngineSettings) and isinstance(HFEngineSettings(), EngineSettings)


@pytest.mark.parametrize("kwargs, match", [
    ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization"),  # nothing left for the engine
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),  # more than the GPU has
    ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
    ({"max_model_len": 0}, "max_model_len"),
    ({"max_num_batched_tokens": -1}, "max_num_batched_tokens"),
])
def test_vllm_settings_refuse_nonsense(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VLLMEngineSettings(**kwargs)


def test_hf_settings_build_the_hf_engine():
    class FakePolicy:
        pass

    with pytest.raises(ValueError, match="max_batch_size"):
        HFEngineSettings(max_batch_size=0)
    engine = HFEngineSettings(max_batch_size=7).build(FakePolicy())
    assert isinstance(engine, HFRolloutEngine) and engine.max_batch_size == 7 and not engine.holds_weights


def test_vllm_build_without_vllm_names_the_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ModuleNotFoundError,
                       match=r"VLLMEngineSettings needs the vllm package.*rollout r1lightning.rollout.HFEngineSettings"):
        VLLMEngineSettings().build(object())


def test_equality_and_repr_follow_the_arguments():
    a = VLLMEngineSettings(dtype="bfloat16", engine_kwargs={"max_num_seqs": 64})
    assert a == VLLMEngineSettings(dtype="bfloat16", engine_kwargs={"max_num_seqs": 64})
    assert a != VLLMEngineSettings(dtype="float32")
    assert HFEngineSettings(4) != VLLMEngineSettings()
    assert repr(HFEngineSettings(4)) == \
        "HFEngineSettings(max_batch_size=4, async_rollouts=False, max_staleness=1, tis_cap=2.0, engine_process=False)"
    assert HFEngineSettings(async_rollouts=True) != HFEngineSettings()


class SettingsModel(BoringModel):
    def __init__(self, rollout: Optional[EngineSettings] = None):
        super().__init__()
        self.save_hyperparameters()


def test_a_checkpoint_holding_the_settings_round_trips(tmp_path):
    rollout = VLLMEngineSettings(dtype="bfloat16", max_model_len=67584, max_num_batched_tokens=16384,
                                 enable_sleep_mode=True, engine_kwargs={"max_num_seqs": 64})
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    trainer.fit(SettingsModel(rollout))
    path = tmp_path / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)  # what Lightning does: no arbitrary unpickling
    assert ckpt["hyper_parameters"]["rollout"] == rollout
    restored = SettingsModel.load_from_checkpoint(path)
    assert restored.hparams.rollout == rollout and isinstance(restored.hparams.rollout, VLLMEngineSettings)
    for settings in (HFEngineSettings(8), EngineSettings()):
        torch.save({"s": settings}, tmp_path / "s.pt")
        assert torch.load(tmp_path / "s.pt", weights_only=True)["s"] == settings


class Holder:
    def __init__(self, rollout: Optional[EngineSettings] = None):
        self.rollout = rollout


def parse(tmp_path, *args):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  rollout:\n    class_path: r1lightning.rollout.VLLMEngineSettings\n"
                      "    init_args:\n      enforce_eager: true\n      kv_cache_space_gb: 1\n")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(Holder, "model")
    return parser.instantiate(parser.parse_args(["--config", str(config), *args])).model.rollout


def test_class_path_selection_and_override(tmp_path):
    # the YAML form of configs/r1.yaml, and the command-line switch to transformers generate it documents
    # (through LightningCLI the key is --model.init_args.rollout)
    assert parse(tmp_path) == VLLMEngineSettings(enforce_eager=True, kv_cache_space_gb=1)
    assert parse(tmp_path, "--model.rollout", "r1lightning.rollout.HFEngineSettings") == HFEngineSettings()
    assert parse(tmp_path, "--model.rollout", "HFEngineSettings", "--model.rollout.max_batch_size", "4") \
        == HFEngineSettings(4)
    assert parse(tmp_path, "--model.rollout.init_args.gpu_memory_utilization", "0.5").gpu_memory_utilization == 0.5
