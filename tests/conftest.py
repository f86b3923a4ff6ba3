import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# 2 shared cores: one intra-op thread keeps timings stable and avoids OpenMP oversubscription
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from r1lightning.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_policy(tiny_tokenizer):
    from r1lightning.policy import Policy, PolicyConfig, TinyModelSettings

    cfg = PolicyConfig(tiny=TinyModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                              intermediate_size=64))
    policy = Policy(cfg, tokenizer=tiny_tokenizer)
    policy.build()
    return policy

