"""Data: sources, templates, DataModules, synthetic tasks and benchmark loaders."""

from r1lightning.data.datamodule import PromptDataModule, SFTDataModule

__all__ = ["PromptDataModule", "SFTDataModule"]
