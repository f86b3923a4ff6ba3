"""Build the tiny tokenizer and model configuration fully offline.

The tokenizer is a byte-level BPE (like GPT-2/Llama 3/Qwen) trained on the synthetic task corpus
plus the R1 template text. Two departures from a stock BPE, both for arithmetic: digits are always
split into single tokens (as Llama/Qwen do), and the four reasoning tags are single added tokens
that survive decoding (they are *not* special tokens, so ``skip_special_tokens`` keeps them).

We use a Llama config on purpose: a Qwen2 ``model_type`` makes transformers replace a custom
tokenizer's pre-tokenizer when loading (DESIGN.md, measured).
"""

from __future__ import annotations

from typing import Iterable

from r1lightning.data.templates import R1_ZERO_TEMPLATE

SPECIAL_TOKENS = {
    "pad": "<|pad|>",
    "bos": "<|bos|>",
    "eos": "<|end|>",
    "system": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
}
REASONING_TAGS = ["<think>", "</think>", "<answer>", "</answer>"]

# Prefix-stable: rendering messages[:k] with add_generation_prompt is a prefix of rendering
# messages[:k+1]; the SFT collator relies on that to find assistant tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}<|end|>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_EXTRA_TEXT = [
    R1_ZERO_TEMPLATE,
    "Wait, let me verify this step. However, I made an error; let me check and recheck the mistake. "
    "Alternatively, retry the computation. The answer is correct.",
    "Please reason step by step, and put your final answer within \\boxed{}.",
]


def build_tiny_tokenizer(vocab_size: int = 512, corpus: Iterable[str] | None = None):
    """A ``PreTrainedTokenizerFast`` with pad/bos/eos, a chat template and single-token tags."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from r1lightning.data.tasks import iter_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(corpus) if corpus is not None else list(iter_corpus()) + _EXTRA_TEXT * 50
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        additional_special_tokens=[SPECIAL_TOKENS[k] for k in ("system", "user", "assistant")],
    )
    fast.add_tokens(REASONING_TAGS)  # normal added tokens: one id each, kept when decoding
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # prompts are left-padded for generation
    fast.model_max_length = 512
    return fast


def tiny_llama_config(
    tokenizer,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    intermediate_size: int = 512,
    max_position_embeddings: int = 512,
):
    """A LlamaConfig sized for 2 CPU cores (about 1M parameters with the default tokenizer)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
