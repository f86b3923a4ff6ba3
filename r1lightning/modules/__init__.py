"""LightningModules. They share the policy backbone (:mod:`r1lightning.policy`) and stay thin."""

from r1lightning.modules.base import PolicyModule
from r1lightning.modules.distill import DistillModule
from r1lightning.modules.evaluate import EvalModule
from r1lightning.modules.grpo import GRPOModule, Trajectory
from r1lightning.modules.rejection import RejectionSamplingModule
from r1lightning.modules.reward_model import RewardModel, RewardModelModule
from r1lightning.modules.sft import SFTModule

__all__ = ["DistillModule", "EvalModule", "GRPOModule", "PolicyModule", "RejectionSamplingModule", "RewardModel",
           "RewardModelModule", "SFTModule", "Trajectory"]
