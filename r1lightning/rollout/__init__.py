"""Rollout engines."""
from r1lightning.rollout.base import RolloutBatch, RolloutEngine, SamplingSettings
from r1lightning.rollout.hf import HFRolloutEngine

__all__ = ["HFRolloutEngine", "RolloutBatch", "RolloutEngine", "SamplingSettings"]
