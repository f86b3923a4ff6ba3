"""Per-GPU memory of GRPO / SFT training for 1.5B, 7B and 32B policies under DDP, FSDP2 and DeepSpeed ZeRO-3.

    python benchmarks/memory_table.py                              # markdown table, world size 8, 64k-token micro-batches
    python benchmarks/memory_table.py --world-size 16 --micro-batch-tokens 32768 --config /models/X/config.json

Computed from the architecture (a Hugging Face ``config.json``; the three Qwen2.5 configs this table is
about are shipped below as numbers, since there is no hub here). Bytes are decimal GB (1e9). N = number
of parameters, W = world size (ranks sharing the shards), L layers, h hidden, g = kv_heads x head_dim,
I intermediate, V vocab, T tokens of one micro-batch (``micro_batch_tokens``).

Training state, per GPU (the precision this project trains in: fp32 master weights, bf16 compute):

* DDP (``precision: bf16-mixed``, ``policy.dtype: float32``): fp32 weights 4N, fp32 grads 4N, AdamW m+v 8N;
  the fp32 weights *are* the master copy (0 extra). Transient: autocast keeps bf16 copies of the weights
  it casts for the duration of the forward, 2N.
* FSDP2 (``ModelParallelStrategy``, ``fully_shard`` per decoder layer + root, ``MixedPrecisionPolicy``
  param bf16 / reduce fp32): sharded fp32 weights 4N/W (the master), fp32 grads 4N/W, AdamW 8N/W.
  Transient: two decoder layers unsharded in bf16 (current + prefetched, 2 x 2P_layer), the root's
  embedding / head unsharded in bf16 (2P_root), one layer's unsharded fp32 gradient before its
  reduce-scatter (4P_layer).
* ZeRO-3 (DeepSpeed bf16): bf16 weights 2N/W, bf16 grads 2N/W, fp32 master 4N/W, AdamW 8N/W. Transient:
  two layers gathered in bf16 (2 x 2P_layer) and the externally registered LM head (2P_head, gathered for
  the whole forward / backward of the root, see r1lightning/zero.py). GRPO is refused under DeepSpeed
  (r1lightning/zero.py), so this column is for SFT / distillation: no reference, no engine.

GRPO extras (DDP and FSDP2 columns):

* Reference model (beta > 0, no LoRA): a frozen copy of the policy in the policy's dtype: 4N under DDP,
  4N/W sharded under FSDP2.
* vLLM engine (colocated, tensor-parallel 1): it reserves ``gpu_memory_utilization`` x GPU memory for its
  bf16 weights (2N) + KV cache while it generates; with ``enable_sleep_mode`` it gives both back during the
  training phase (weights to CPU), so the two phases' peaks do not add up. The table shows the rollout
  phase's reservation and the KV cache left: (share - 2N) / (2 x L x g x 2 bytes per token).

Activations of one micro-batch of T tokens (bf16 autocast, fp32 residual stream, SDPA / flash attention so
no T x T score matrix), bytes per token per decoder layer saved for backward:

    a = 4h (fp32 layer input) + 2h (attention-norm output) + 2h + 4g (q, k, v after RoPE) + 2h (attention
        output) + 4h + 2h (MLP residual input and norm output) + 4 x 2I (gate, up, SiLU(gate), product)
      = 16h + 4g + 8I

    without gradient checkpointing:  L x T x a
    with per-layer checkpointing:    L x T x 4h (each layer's fp32 input)  +  T x a (one layer recomputed)
    plus the chunked LM head (r1lightning.policy): chunk x V x 4 bytes x 3 (fp32 logits, softmax, grad).

These are estimates of the dominant terms (no allocator fragmentation, CUDA context ~0.5 GB, NCCL
buffers, or vLLM's CUDA graphs); measure with ``torch.cuda.max_memory_allocated`` before relying on a margin.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

GB = 1e9


@dataclass(frozen=True)
class Arch:
    """The config.json values the count needs (Qwen2 / Llama family: GQA attention, SwiGLU MLP, RMSNorm)."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = True  # Qwen2: q/k/v projections have biases, o_proj does not; Llama: none

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:  # g
        return self.num_key_value_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        h, g, i = self.hidden_size, self.kv_dim, self.intermediate_size
        bias = (h + 2 * g) if self.attention_bias else 0
        attention = h * h + 2 * h * g + h * h + bias  # q, k, v, o
        mlp = 3 * h * i  # gate, up, down
        norms = 2 * h
        return attention + mlp + norms

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """The LM head's own parameters (0 when tied to the embedding)."""
        return 0 if self.tie_word_embeddings else self.embedding_params

    @property
    def num_params(self) -> int:
        """Exactly ``sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())``."""
        return self.embedding_params + self.num_hidden_layers * self.layer_params + self.hidden_size \
            + self.head_params

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_hidden_layers * self.kv_dim * 2  # K and V, bf16

    @classmethod
    def from_hf_config(cls, path: str | Path, name: Optional[str] = None) -> "Arch":
        cfg = json.loads(Path(path).read_text())
        model_type = cfg.get("model_type", "")
        bias = cfg.get("attention_bias", model_type.startswith("qwen2"))
        return cls(name=name or Path(path).parent.name, hidden_size=cfg["hidden_size"],
                   num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
                   num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
                   intermediate_size=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), attention_bias=bool(bias))


# config.json values of the Hugging Face repositories Qwen/Qwen2.5-Math-1.5B, Qwen/Qwen2.5-7B, Qwen/Qwen2.5-32B
QWEN25 = {
    "1.5B": Arch("Qwen2.5-Math-1.5B", 1536, 28, 12, 2, 8960, 151936, True),
    "7B": Arch("Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, False),
    "32B": Arch("Qwen2.5-32B", 5120, 64, 40, 8, 27648, 152064, False),
}

STRATEGIES = ("DDP", "FSDP2", "ZeRO-3")


@dataclass
class Budget:
    """Per-GPU bytes of one set-up, by component."""

    weights: float
    grads: float
    optimizer: float
    master: float
    transient: float
    reference: float
    engine: float
    activations_ckpt: float
    activations_full: float

    def total(self, checkpointing: bool = True) -> float:
        acts = self.activations_ckpt if checkpointing else self.activations_full
        return self.weights + self.grads + self.optimizer + self.master + self.transient + self.reference + acts

    def rollout_peak(self) -> float:
        """During generation with sleep mode the trainer keeps weights, optimizer and reference; grads are freed."""
        return self.weights + self.optimizer + self.master + self.reference + self.engine


def activation_bytes_per_token_layer(a: Arch) -> int:
    """16h + 4g + 8I (see the module docstring)."""
    return 16 * a.hidden_size + 4 * a.kv_dim + 8 * a.intermediate_size


def activations(a: Arch, tokens: int, checkpointing: bool, head_chunk: int = 1024) -> float:
    per_layer = activation_bytes_per_token_layer(a)
    head = head_chunk * a.vocab_size * 4 * 3
    if checkpointing:
        return a.num_hidden_layers * tokens * 4 * a.hidden_size + tokens * per_layer + head
    return a.num_hidden_layers * tokens * per_layer + head


def budget(a: Arch, strategy: str, world_size: int = 8, tokens: int = 65536, gpu_gb: float = 80.0,
           gpu_memory_utilization: float = 0.35, grpo: bool = True) -> Budget:
    n, w, p_layer = a.num_params, world_size, a.layer_params
    engine = gpu_memory_utilization * gpu_gb * GB if grpo else 0.0
    act_ckpt, act_full = activations(a, tokens, True), activations(a, tokens, False)
    if strategy == "DDP":
        return Budget(4 * n, 4 * n, 8 * n, 0.0, 2 * n, 4 * n if grpo else 0.0, engine, act_ckpt, act_full)
    if strategy == "FSDP2":
        root = a.embedding_params + a.head_params + a.hidden_size
        transient = 2 * 2 * p_layer + 2 * root + 4 * p_layer
        return Budget(4 * n / w, 4 * n / w, 8 * n / w, 0.0, transient, 4 * n / w if grpo else 0.0, engine,
                      act_ckpt, act_full)
    if strategy == "ZeRO-3":
        head = a.head_params or a.embedding_params
        return Budget(2 * n / w, 2 * n / w, 8 * n / w, 4 * n / w, 2 * 2 * p_layer + 2 * head, 0.0, 0.0,
                      act_ckpt, act_full)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def kv_cache_tokens(a: Arch, gpu_gb: float, gpu_memory_utilization: float) -> int:
    """Tokens of KV cache the engine's share holds after its bf16 weights (0 if the weights do not fit)."""
    left = gpu_memory_utilization * gpu_gb * GB - 2 * a.num_params
    return max(0, int(left // a.kv_bytes_per_token))


def table(archs: dict[str, Arch], world_size: int, tokens: int, gpu_gb: float, utilization: float) -> str:
    g = lambda x: f"{x / GB:.1f}"  # noqa: E731
    head = ("| policy | strategy | weights | grads | AdamW m+v | fp32 master | transient | reference | "
            f"train total, ckpt on | train total, ckpt off | vLLM share (rollout) | rollout peak | fits {gpu_gb:.0f} GB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, a in archs.items():
        for s in STRATEGIES:
            b = budget(a, s, world_size, tokens, gpu_gb, utilization, grpo=(s != "ZeRO-3"))
            peak = max(b.total(True), b.rollout_peak())
            fits = "yes" if peak <= gpu_gb * GB else "no"
            if s != "ZeRO-3" and kv_cache_tokens(a, gpu_gb, utilization) == 0:
                fits = "no: engine weights exceed its share (vLLM tensor parallel > 1 needed)"
            engine = g(b.engine) if s != "ZeRO-3" else "n/a (SFT)"
            rollout = g(b.rollout_peak()) if s != "ZeRO-3" else "-"
            lines.append(f"| {label} ({a.num_params / 1e9:.2f}B) | {s} | {g(b.weights)} | {g(b.grads)} | "
                         f"{g(b.optimizer)} | {g(b.master)} | {g(b.transient)} | {g(b.reference)} | "
                         f"{g(b.total(True))} | {g(b.total(False))} | {engine} | {rollout} | {fits} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-size", type=int, default=8)
    ap.add_argument("--micro-batch-tokens", type=int, default=65536, help="configs/r1_gpu.yaml micro_batch_tokens")
    ap.add_argument("--gpu-gb", type=float, default=80.0, help="GPU memory in GB (H100: 80, H200: 141)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.35, help="the vLLM engine's share")
    ap.add_argument("--config", action="append", default=[], help="a Hugging Face config.json (repeatable); "
                    "default: the shipped Qwen2.5 1.5B / 7B / 32B values")
    args = ap.parse_args(argv)
    archs = {Path(c).parent.name: Arch.from_hf_config(c) for c in args.config} or QWEN25
    print(f"Per-GPU memory (GB = 1e9 bytes), world size {args.world_size}, micro-batch {args.micro_batch_tokens} "
          f"tokens, {args.gpu_gb:.0f} GB GPUs, vLLM gpu_memory_utilization {args.gpu_memory_utilization}\n")
    print(table(archs, args.world_size, args.micro_batch_tokens, args.gpu_gb, args.gpu_memory_utilization))
    print()
    for label, a in archs.items():
        kv = kv_cache_tokens(a, args.gpu_gb, args.gpu_memory_utilization)
        act = activation_bytes_per_token_layer(a)
        print(f"- {label}: N = {a.num_params:,} parameters; activations {act:,} B/token/layer; "
              f"KV cache {a.kv_bytes_per_token:,} B/token -> the engine's share holds {kv:,} tokens "
              f"after its {2 * a.num_params / GB:.1f} GB of bf16 weights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
