"""r1lightning: DeepSeek-R1 style reasoning RL on PyTorch Lightning."""

__version__ = "0.1.0"
