"""Data: sources, templates, DataModules, synthetic tasks and benchmark loaders."""

from r1lightning.data.datamodule import PromptDataModule, SFTDataModule
from r1lightning.data.evaluation import EvalDataModule, EvalSet
from r1lightning.data.preferences import PreferenceDataModule

__all__ = ["EvalDataModule", "EvalSet", "PreferenceDataModule", "PromptDataModule", "SFTDataModule"]
