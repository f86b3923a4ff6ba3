"""The offline tiny world: a byte-level BPE tokenizer with a chat template and a tiny Llama model.

Everything here is built on the machine from code, with no model hub, so tests and the CPU demo
run anywhere. ``build_tiny_tokenizer`` and ``tiny_llama_config`` are also what
``PolicyConfig(tiny=...)`` uses to build a randomly initialised policy from scratch.
"""

from r1lightning.tiny.build import (
    CHAT_TEMPLATE,
    REASONING_TAGS,
    SPECIAL_TOKENS,
    build_tiny_tokenizer,
    tiny_llama_config,
)

__all__ = ["CHAT_TEMPLATE", "REASONING_TAGS", "SPECIAL_TOKENS", "build_tiny_tokenizer", "tiny_llama_config"]
