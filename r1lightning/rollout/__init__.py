"""Rollout engines, and the settings classes that pick one (``GRPOModule(rollout=...)``, ``class_path`` in YAML)."""
import torch

from r1lightning.rollout.base import EngineSettings, RolloutBatch, RolloutEngine, SamplingSettings
from r1lightning.rollout.hf import HFEngineSettings, HFProcessRolloutEngine, HFRolloutEngine
from r1lightning.rollout.vllm import VLLMEngineSettings, VLLMProcessRolloutEngine  # the module imports vLLM only when an engine starts

# checkpoints store hyperparameters (the module's ``rollout`` settings among them) and Lightning loads them with
# torch.load(weights_only=True): allow these plain classes to be rebuilt
torch.serialization.add_safe_globals([EngineSettings, HFEngineSettings, VLLMEngineSettings])

__all__ = ["EngineSettings", "HFEngineSettings", "HFProcessRolloutEngine", "HFRolloutEngine", "RolloutBatch", "RolloutEngine", "SamplingSettings",
           "VLLMEngineSettings", "VLLMProcessRolloutEngine"]
