"""The shared policy backbone: one Hugging Face causal LM + tokenizer used by SFT, GRPO and distillation.

``PolicyConfig`` is the typed argument group every LightningModule takes (its attribute docstrings are
the ``--help`` text). ``Policy`` loads the model offline from a local folder (or builds a tiny one
from scratch), applies dtype / attention implementation / gradient checkpointing / LoRA, computes
per-token log-probs and entropies of completion tokens, and exports with ``save_pretrained``.

Log-probs are computed from the decoder's final hidden states with the LM head applied in chunks
of ``logprob_chunk_tokens`` tokens under activation checkpointing, and only at the positions asked
for: the full ``(B, T, V)`` fp32 logits tensor is never built (with a 150k vocabulary it would be the
largest tensor of the step).

Packed rows (:class:`PackedRows`): several sequences share one row, their position ids restart at 0 and
no attention mask is passed; transformers' masking utilities then build a block-diagonal causal mask
(sdpa / eager / flex) or run varlen flash attention, so no compute is spent on padding. Whether a model
keeps packed sequences apart is checked once with a probe (:func:`supports_packed_rows`); callers fall
back to padded rows when it does not.

FSDP2 (``ModelParallelStrategy``; ``Policy.build(device_mesh=...)``): the model is built on the meta device on
every rank, sharded with ``fully_shard`` per decoder layer and then at the root (:func:`shard_causal_lm`: fp32
master weights, compute in the trainer's precision, fp32 gradient reduction), and filled from rank 0's loaded
copy by broadcast. The root's own parameters (embeddings, final norm, LM head) exist only inside its forward, so
the log-prob functions run the decoder and the chunked head inside a registered FSDP forward method
(:func:`in_root_forward`); unsharded they are the same plain calls as before. Sampling with ``generate`` on the
sharded model runs with the weights gathered (:func:`gathered_for_inference`); exports and weight pushes gather
one tensor at a time (:meth:`Policy.merged_weights`).

Train / eval mode: the built model follows the ``Policy`` module's own mode (train unless ``.eval()`` was
called), not the eval mode ``from_pretrained`` leaves it in -- otherwise dropout and gradient
checkpointing (which transformers applies only in train mode) would silently be off during training.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PACKAGE_ROOT = Path(__file__).resolve().parent


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft)."""

    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or 'all-linear'."""


@dataclass
class TinyModelSettings:
    """Build a randomly initialised tiny Llama (for tests and from-scratch demos) instead of loading one."""

    vocab_size: int = 512
    """BPE vocabulary size of the offline tokenizer (used only when no tokenizer path is given)."""
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    seed: int = 0
    """Seed of the weight initialisation."""


@dataclass
class FSDPSettings:
    """FSDP2 sharding of the policy (and of the reference / teacher), used when the trainer's strategy is
    ``lightning.pytorch.strategies.ModelParallelStrategy``; ignored otherwise."""

    reshard_after_forward: bool = True
    """Free each decoder layer's gathered weights after its forward and gather them again for backward
    (ZeRO-3-like, the least memory). False keeps them from forward to backward (one all-gather less per
    layer and step, more memory)."""
    cpu_offload: bool = False
    """Keep the sharded parameters, gradients and optimizer state in CPU memory (FSDP2 ``CPUOffloadPolicy``;
    the optimizer step then runs on the CPU)."""


@dataclass
class PolicyConfig:
    """Which causal LM to train and how to run it."""

    model_name_or_path: Optional[str] = None
    """Local folder of a Hugging Face causal LM (config + weights + tokenizer). Relative paths that do not
    exist under the working directory are also looked up in the installed package (e.g. the shipped
    ``r1lightning/assets/tiny_base``)."""
    tokenizer_name_or_path: Optional[str] = None
    """Tokenizer folder if different from the model folder."""
    tiny: Optional[TinyModelSettings] = None
    """Build a tiny random Llama from scratch (ignored when model_name_or_path is set)."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Parameter dtype. bf16 on GPUs; float32 on CPU."""
    attn_implementation: Optional[str] = "sdpa"
    """'sdpa', 'eager', 'flash_attention_2', ... (None = transformers' default)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    trust_remote_code: bool = False
    """Allow model code shipped in the model folder to run. Off unless you trust the folder."""
    local_files_only: bool = True
    """Never reach a model hub (the default: runs must be reproducible offline)."""
    lora: Optional[LoraSettings] = None
    """Train a LoRA adapter instead of all weights (the reference policy is then the base, adapter off)."""
    pad_token: Optional[str] = None
    """Pad token to set when the tokenizer has none (e.g. its eos token)."""
    logprob_chunk_tokens: int = 1024
    """Tokens per chunk when applying the LM head for log-probs (bounds the fp32 logits memory)."""
    fsdp: FSDPSettings = field(default_factory=FSDPSettings)
    """How the policy is sharded under FSDP2 (ModelParallelStrategy); the defaults suit most runs."""


def resolve_path(path: str | os.PathLike) -> Path:
    """A local path, falling back to the installed package for the shipped assets."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    if p.parts and p.parts[0] == "r1lightning":
        candidate = PACKAGE_ROOT.joinpath(*p.parts[1:])
        if candidate.exists():
            return candidate
    return p


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, exactly as HF ``generate`` computes them.  # (B, T)"""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)


@dataclass
class PackedRows:
    """Sequences laid end to end in rows of ``width`` tokens (the rest of a row is fill).

    Made by :func:`pack_sequences`; read by :func:`packed_token_logprobs`."""

    input_ids: Tensor
    """(R, W) token ids; fill is the pad id."""
    position_ids: Tensor
    """(R, W) positions restarting at 0 for each sequence (and for the fill, a sequence of its own)."""
    targets: Tensor
    """(N,) flat index into ``input_ids.view(-1)`` of every scored token, sequence by sequence in the
    order the sequences were given, each sequence's tokens in order."""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows holding at most ``width`` tokens (first-fit decreasing;
    a longer sequence gets a row of its own). Rows are returned in the order they were opened."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(width - n)
    return rows


def pack_sequences(sequences: list[list[int]], score_from: list[int], rows: list[list[int]], pad_id: int,
                   device: torch.device | str = "cpu") -> PackedRows:
    """Lay ``sequences`` out in the given ``rows`` (lists of sequence indices, e.g. from :func:`pack_rows`),
    each row as wide as the widest. Tokens ``score_from[i]:`` of sequence i are scored (``score_from[i] >= 1``:
    a token needs one before it)."""
    width = max(sum(len(sequences[i]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    start = {}
    for r, row in enumerate(rows):
        col = 0
        for i in row:
            n = len(sequences[i])
            ids[r, col : col + n] = torch.tensor(sequences[i], dtype=torch.long)
            pos[r, col : col + n] = torch.arange(n)
            start[i] = r * width + col
            col += n
        pos[r, col:] = torch.arange(width - col)  # the fill attends only to itself
    targets = []
    for i, seq in enumerate(sequences):
        if score_from[i] < len(seq):
            if score_from[i] < 1:
                raise ValueError(f"sequence {i}: the first scored token needs a token before it (score_from >= 1)")
            if i not in start:
                raise ValueError(f"sequence {i} has tokens to score but is in no row")
            targets.append(torch.arange(start[i] + score_from[i], start[i] + len(seq)))
    flat = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long)
    return PackedRows(ids.to(device), pos.to(device), flat.to(device))


def _head_logprobs(hidden: Tensor, targets: Tensor, weight: Tensor, bias: Optional[Tensor], temperature: float,
                   softcap: Optional[float], logit_scale: Optional[float]) -> tuple[Tensor, Tensor]:
    """Log-prob of ``targets`` and entropy for a chunk of hidden states.  hidden (N, H), targets (N,)"""
    logits = F.linear(hidden, weight, bias).float()  # (N, V)
    if logit_scale is not None:
        logits = logits * logit_scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits / temperature
    logz = torch.logsumexp(logits, dim=-1)  # (N,)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz  # (N,)
    with torch.no_grad():
        probs = torch.softmax(logits, dim=-1)
        entropy = logz - (probs * logits).sum(-1)  # (N,)
    return logp, entropy


def in_root_forward(lm: nn.Module, fn, *args, **kwargs):
    """``fn(lm, *args, **kwargs)``, run inside ``lm``'s FSDP2 forward when ``lm`` is sharded with ``fully_shard``.

    A sharded root module's own parameters (the embeddings, the final norm, the LM head) are gathered only
    around its forward: read outside one (calling the decoder submodule, reading ``lm_head.weight``) they are
    this rank's shard (a DTensor). :func:`shard_causal_lm` registers ``r1l_run`` as an FSDP forward method
    (``register_fsdp_forward_method``), so ``fn`` sees the gathered parameters and the backward reduce-scatters
    its gradients. Unsharded: a plain call (the same operations, bit for bit)."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(lm, FSDPModule):
        return fn(lm, *args, **kwargs)
    run = getattr(lm, "r1l_run", None)
    if run is None:
        raise RuntimeError(f"{type(lm).__name__} is sharded with fully_shard but has no registered root forward: "
                           "shard it with r1lightning.policy.shard_causal_lm (or call register_root_forward on it)")
    return run(fn, *args, **kwargs)


def _run_fn(self, fn, *args, **kwargs):
    return fn(self, *args, **kwargs)


def register_root_forward(lm: nn.Module) -> None:
    """Give a ``fully_shard``-ed causal LM the ``r1l_run(fn, ...)`` forward method :func:`in_root_forward` uses."""
    import types

    from torch.distributed.fsdp import register_fsdp_forward_method

    lm.r1l_run = types.MethodType(_run_fn, lm)
    register_fsdp_forward_method(lm, "r1l_run")


def causal_lm_token_logprobs(
    lm: nn.Module,
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    logits_to_keep: Optional[int] = None,
    temperature: float = 1.0,
    position_ids: Optional[Tensor] = None,
    loss_mask: Optional[Tensor] = None,
    chunk_tokens: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Log-probs and entropies of the last ``logits_to_keep`` tokens given everything before them.

    ``lm`` is a transformers ``*ForCausalLM`` (the policy's, or a frozen reference copy).
    input_ids (B, T); attention_mask (B, T) (left and/or right padding, 1 = real token);
    returns logp (B, K) and entropy (B, K) with K = logits_to_keep (default T - 1), where
    logp[b, k] = log pi(input_ids[b, T-K+k] | input_ids[b, :T-K+k]) at ``temperature``.
    Positions where ``loss_mask`` (B, K) is 0 are not computed (0 is returned there).
    With packed rows pass ``position_ids`` that restart at 0 per sequence and no attention_mask.
    The LM head is applied ``chunk_tokens`` tokens at a time under activation checkpointing, so the
    fp32 logits of the whole batch never exist at once. A ``fully_shard``-ed ``lm`` computes it all inside its
    root forward (:func:`in_root_forward`).
    """
    return in_root_forward(lm, _causal_lm_token_logprobs, input_ids, attention_mask, logits_to_keep, temperature,
                           position_ids, loss_mask, chunk_tokens)


def _causal_lm_token_logprobs(lm: nn.Module, input_ids: Tensor, attention_mask: Optional[Tensor],
                              logits_to_keep: Optional[int], temperature: float, position_ids: Optional[Tensor],
                              loss_mask: Optional[Tensor], chunk_tokens: int) -> tuple[Tensor, Tensor]:
    bsz, seqlen = input_ids.shape
    k = seqlen - 1 if logits_to_keep is None else int(logits_to_keep)
    if not 0 < k < seqlen:
        raise ValueError(f"logits_to_keep must be in [1, {seqlen - 1}], got {k}")
    if position_ids is None and attention_mask is not None:
        position_ids = position_ids_from_mask(attention_mask)
    out = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state[:, seqlen - k - 1 : seqlen - 1]  # (B, K, H) predicts tokens T-K..T-1
    targets = input_ids[:, seqlen - k :]  # (B, K)
    if loss_mask is not None:
        keep = loss_mask.bool()
    elif attention_mask is not None:
        keep = attention_mask[:, seqlen - k :].bool()
    else:
        keep = torch.ones_like(targets, dtype=torch.bool)
    lp, ent = _chunked_head_logprobs(lm, hidden[keep], targets[keep], temperature, chunk_tokens)  # (N,)
    logp = hidden.new_zeros(bsz, k, dtype=torch.float32).masked_scatter(keep, lp)
    entropy = torch.zeros_like(logp).masked_scatter(keep, ent)
    return logp, entropy


def _chunked_head_logprobs(lm: nn.Module, flat_h: Tensor, flat_t: Tensor, temperature: float,
                           chunk_tokens: int) -> tuple[Tensor, Tensor]:
    """The LM head on ``chunk_tokens`` hidden states at a time (checkpointed when it needs a gradient).
    flat_h (N, H), flat_t (N,) -> logp (N,) fp32, entropy (N,) detached."""
    head = lm.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    scale = getattr(lm.config, "logit_scale", None)
    chunk = max(1, int(chunk_tokens))
    lps, ents = [], []
    for start in range(0, flat_h.shape[0], chunk):
        h, t = flat_h[start : start + chunk], flat_t[start : start + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            lp, ent = checkpoint(_head_logprobs, h, t, weight, bias, temperature, softcap, scale, use_reentrant=False)
        else:
            lp, ent = _head_logprobs(h, t, weight, bias, temperature, softcap, scale)
        lps.append(lp)
        ents.append(ent)
    if not lps:
        empty = flat_h.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(lps), torch.cat(ents).detach()


def packed_token_logprobs(lm: nn.Module, packed: PackedRows, loss_mask: Tensor, temperature: float = 1.0,
                          chunk_tokens: int = 1024) -> tuple[Tensor, Tensor]:
    """Log-probs and entropies of the scored tokens of packed rows, in the padded layout of ``loss_mask``.

    ``loss_mask`` (B, K) has, row b, as many ones as sequence b has scored tokens (e.g. a completion mask
    whose ones are the completion's tokens in order); returns logp (B, K) and entropy (B, K), 0 where the
    mask is 0 -- the same values :func:`causal_lm_token_logprobs` gives on the padded batch (inside the root
    forward of a ``fully_shard``-ed ``lm``, as there)."""
    return in_root_forward(lm, _packed_token_logprobs, packed, loss_mask, temperature, chunk_tokens)


def _packed_token_logprobs(lm: nn.Module, packed: PackedRows, loss_mask: Tensor, temperature: float,
                           chunk_tokens: int) -> tuple[Tensor, Tensor]:
    keep = loss_mask.bool()
    if int(keep.sum()) != packed.targets.numel():
        raise ValueError(f"loss_mask has {int(keep.sum())} scored tokens, the packed rows {packed.targets.numel()}")
    out = lm.get_decoder()(input_ids=packed.input_ids, attention_mask=None, position_ids=packed.position_ids,
                           use_cache=False)
    hidden = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])  # (R*W, H)
    # the hidden state one position earlier (same sequence: a scored token is never a sequence's first) predicts it
    lp, ent = _chunked_head_logprobs(lm, hidden[packed.targets - 1], packed.input_ids.reshape(-1)[packed.targets],
                                     temperature, chunk_tokens)
    logp = hidden.new_zeros(keep.shape, dtype=torch.float32).masked_scatter(keep, lp)
    entropy = torch.zeros_like(logp).masked_scatter(keep, ent)
    return logp, entropy


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Every submodule in eval mode inside the block, each restored to its own mode after it."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


@torch.no_grad()
def supports_packed_rows(lm: nn.Module) -> bool:
    """Whether ``lm`` keeps sequences packed in one row apart when given restarting position ids and no
    attention mask: the second of two packed sequences must get the hidden states it gets alone. (False for
    attention implementations or remote-code models that ignore position-id packing and attend across.)
    A ``fully_shard``-ed ``lm`` runs it in its root forward: every rank must call it."""
    return in_root_forward(lm, _supports_packed_rows)


def _supports_packed_rows(lm: nn.Module) -> bool:
    decoder = lm.get_decoder()
    device = next(lm.parameters()).device
    vocab = int(lm.config.vocab_size)
    first, second = [(7 * i + 3) % vocab for i in range(6)], [(11 * i + 5) % vocab for i in range(5)]
    with eval_mode(lm):
        ids = torch.tensor([first + second], device=device)
        pos = torch.tensor([list(range(len(first))) + list(range(len(second)))], device=device)
        packed = decoder(input_ids=ids, position_ids=pos, attention_mask=None, use_cache=False).last_hidden_state
        alone = decoder(input_ids=ids[:, len(first):], position_ids=pos[:, len(first):], attention_mask=None,
                        use_cache=False).last_hidden_state
    packed, alone = packed[0, len(first):].float(), alone[0].float()
    # fp32 agrees to rounding; half precision to its ~3 digits; attending across the boundary is off by O(1)
    tol = 1e-4 if packed.dtype == torch.float32 and next(lm.parameters()).dtype == torch.float32 else 3e-2
    return bool(((packed - alone).abs().max() <= tol * alone.abs().max().clamp(min=1.0)).item())


def _export_tensor(tensor: Tensor, dtype: Optional[torch.dtype]) -> Tensor:
    """A detached, unsharded (``full_tensor()``: a collective for DTensors), optionally cast tensor."""
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()
    tensor = tensor.detach()
    return tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)


def _storage_key(tensor: Tensor) -> Optional[tuple]:
    """Identifies the memory a (local shard of a) tensor views; None for empty tensors."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    if local.numel() == 0:
        return None
    return local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape)


def _merged_name(key: str, adapter: str) -> Optional[str]:
    """A peft model's state_dict key (below ``base_model.model.``) -> the merged checkpoint's, or None to drop it.

    ``q_proj.base_layer.weight`` -> ``q_proj.weight``; adapter tensors (``lora_A``, ``lora_B``,
    ``lora_embedding_*``, ``lora_magnitude_vector``) are dropped; a ``modules_to_save`` copy replaces the
    original module, as ``merge_and_unload`` does."""
    parts = key.split(".")
    if any(p.startswith("lora_") for p in parts) or "original_module" in parts:
        return None
    if "modules_to_save" in parts:
        i = parts.index("modules_to_save")
        if parts[i + 1] != adapter:
            return None
        parts = parts[:i] + parts[i + 2 :]
    return ".".join(p for p in parts if p != "base_layer")


def _lora_merged(layer, kind: str, tensor: Tensor) -> Tensor:
    """``tensor`` (an adapted layer's base weight or bias) plus the deltas of its active, unmerged adapters,
    computed out of place in the order and dtype peft's ``merge`` adds them in place."""
    out = tensor
    for adapter in layer.active_adapters:
        if adapter in layer.merged_adapters:  # already inside the base weight
            continue
        if adapter not in layer.lora_A.keys() and adapter not in getattr(layer, "lora_embedding_A", {}).keys():
            continue
        if adapter in getattr(layer, "lora_variant", {}):
            variant = type(layer.lora_variant[adapter]).__name__
            raise NotImplementedError(f"streaming the merged weights of a LoRA variant ({variant}) is not supported; "
                                      "use plain LoRA")
        if kind == "weight":
            delta = layer.get_delta_weight(adapter)
        elif kind == "bias" and layer.lora_bias.get(adapter, False):
            delta = layer.lora_B[adapter].bias * layer.scaling[adapter]
        else:
            continue
        if hasattr(out, "full_tensor"):
            out = out.full_tensor()
        if hasattr(delta, "full_tensor"):
            delta = delta.full_tensor()
        out = out + delta.to(out.dtype)
    return out


def shard_causal_lm(lm: nn.Module, mesh, settings: Optional[FSDPSettings] = None,
                    param_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """FSDP2 ``fully_shard`` of a transformers causal LM: each decoder layer, then the root (embeddings, final
    norm, LM head), over ``mesh`` (1-D, data parallel), in place. Mixed precision keeps the sharded weights
    (the optimizer's master weights) in their own dtype, gathers them in ``param_dtype`` for compute, and
    reduce-scatters gradients in float32. The root gets ``r1l_run`` as an FSDP forward method
    (:func:`in_root_forward`), which the log-prob functions go through."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    settings = settings or FSDPSettings()
    kwargs = dict(mesh=mesh, reshard_after_forward=settings.reshard_after_forward,
                  mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32),
                  offload_policy=CPUOffloadPolicy() if settings.cpu_offload else OffloadPolicy())
    layers = getattr(lm.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(f"{type(lm).__name__}: no decoder .layers to shard one by one")
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(lm, **kwargs)
    register_root_forward(lm)
    return lm


def _fsdp_mesh_of(module: nn.Module):
    """The device mesh a ``fully_shard``-ed module's parameters are sharded over."""
    return next(p for p in module.parameters() if hasattr(p, "device_mesh")).device_mesh


def is_sharded(module: Optional[nn.Module]) -> bool:
    """Whether ``module`` (or, for a peft model, its base model) is ``fully_shard``-ed."""
    from torch.distributed.fsdp import FSDPModule

    if module is None:
        return False
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    return isinstance(base, FSDPModule)


@contextlib.contextmanager
def gathered_for_inference(lm: nn.Module):
    """Inside the block every FSDP2 module of ``lm`` holds its full (gathered) weights and forwards run without
    collectives, so ranks may run different numbers of forwards (``generate``: each rank stops at its own
    longest completion, or has no prompt at all). Entering gathers (a collective: every rank enters); leaving
    frees the gathered weights again. No-op for an unsharded ``lm`` and inside another such block."""
    from torch.distributed.fsdp import FSDPModule

    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    mods = [m for m in base.modules() if isinstance(m, FSDPModule)]
    if not mods or getattr(base, "_r1l_gathered", False):
        yield lm
        return
    groups = [g for m in mods for g in m._get_fsdp_state()._fsdp_param_groups]
    saved = [g.post_forward_mesh_info for g in groups]
    base._r1l_gathered = True
    try:
        for m in mods:
            m.unshard()
        for g in groups:
            # no resharding after each forward while inside (what set_reshard_after_forward(False) sets, restored
            # exactly on the way out: the root's own setting is special)
            g.post_forward_mesh_info = None
        yield lm
    finally:
        for g, info in zip(groups, saved):
            g.post_forward_mesh_info = info
        for m in mods:
            m.reshard()
        base._r1l_gathered = False


class Policy(nn.Module):
    """HF causal LM + tokenizer. Call :meth:`build` (idempotent) before use; modules do it in
    ``configure_model`` so FSDP/DeepSpeed can wrap the model after it exists."""

    def __init__(self, config: PolicyConfig | None = None, tokenizer=None):
        super().__init__()
        self.config = config or PolicyConfig()
        self.tokenizer = tokenizer if tokenizer is not None else self._load_tokenizer()
        self.model: Optional[nn.Module] = None
        self._packing_ok: Optional[bool] = None

    # ------------------------------------------------------------------ loading
    def _source(self) -> Optional[Path]:
        cfg = self.config
        if cfg.model_name_or_path is None:
            if cfg.tiny is None:
                raise ValueError("policy: set model_name_or_path (a local model folder) or tiny (build from scratch)")
            return None
        path = resolve_path(cfg.model_name_or_path)
        if not path.exists() and cfg.local_files_only:
            raise FileNotFoundError(
                f"policy.model_name_or_path={cfg.model_name_or_path!r} is not a local folder. r1lightning loads "
                "models offline: download the model first (e.g. `hf download ORG/NAME --local-dir DIR`) and point "
                "model_name_or_path at DIR, or set policy.local_files_only=false to allow hub access."
            )
        return path

    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        cfg = self.config
        src = cfg.tokenizer_name_or_path or cfg.model_name_or_path
        if src is None:
            from r1lightning.tiny import build_tiny_tokenizer

            tok = build_tiny_tokenizer(vocab_size=(cfg.tiny or TinyModelSettings()).vocab_size)
        else:
            if cfg.tokenizer_name_or_path is None:
                path = self._source()  # names model_name_or_path in its error
            else:
                path = resolve_path(src)
                if not path.exists() and cfg.local_files_only:
                    raise FileNotFoundError(f"policy.tokenizer_name_or_path={src!r} is not a local folder")
            tok = AutoTokenizer.from_pretrained(
                str(path), trust_remote_code=cfg.trust_remote_code, local_files_only=cfg.local_files_only
            )
        if tok.pad_token is None:
            if cfg.pad_token is None:
                raise ValueError(
                    f"the tokenizer of {src!r} has no pad token; set policy.pad_token "
                    f"(for example to its eos token {tok.eos_token!r})"
                )
            tok.pad_token = cfg.pad_token
        if tok.eos_token is None:
            raise ValueError(f"the tokenizer of {src!r} has no eos token; generation could never stop")
        return tok

    def build(self, device_mesh=None, param_dtype: Optional[torch.dtype] = None) -> nn.Module:
        """Create (load) the model once; later calls return it.

        With ``device_mesh`` (a 1-D data-parallel mesh: FSDP2 under ``ModelParallelStrategy``) the model is
        built sharded by :meth:`_build_sharded` (``param_dtype``: the dtype FSDP2 gathers the weights in for
        compute, None = their own)."""
        if self.model is not None:
            return self.model
        if device_mesh is not None:
            self.model = self._build_sharded(device_mesh, param_dtype)
        else:
            self.model = self._create()
        return self.model

    def _create(self, meta: bool = False, dtype: Optional[torch.dtype] = None) -> nn.Module:
        """The model as configured (loaded, LoRA applied, in this module's train/eval mode). ``meta``: only its
        structure, on the meta device, in ``dtype`` (no file is read, nothing is allocated)."""
        from transformers import AutoModelForCausalLM

        cfg = self.config
        kwargs = {}
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        path = self._source()
        if path is None:
            from r1lightning.tiny import tiny_llama_config

            t = cfg.tiny
            hf_config = tiny_llama_config(
                self.tokenizer, t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size,
                t.max_position_embeddings,
            )
            with torch.random.fork_rng(devices=[]), torch.device("meta") if meta else contextlib.nullcontext():
                torch.manual_seed(t.seed)
                model = AutoModelForCausalLM.from_config(hf_config, **kwargs)
            if meta:
                model = model.to(dtype)
            elif cfg.dtype in _DTYPES:
                model = model.to(_DTYPES[cfg.dtype])
        elif meta:
            from transformers import AutoConfig

            hf_config = AutoConfig.from_pretrained(str(path), trust_remote_code=cfg.trust_remote_code,
                                                   local_files_only=cfg.local_files_only)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                                                         **kwargs)
        else:
            dtype = "auto" if cfg.dtype == "auto" else _DTYPES[cfg.dtype]
            model = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                local_files_only=cfg.local_files_only, **kwargs,
            )
        if model.get_output_embeddings() is None:
            raise ValueError(f"{cfg.model_name_or_path!r} is not a causal LM with an output head")
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if cfg.lora is not None:
            from peft import LoraConfig, get_peft_model

            l = cfg.lora
            with torch.device("meta") if meta else contextlib.nullcontext():
                model = get_peft_model(
                    model,
                    LoraConfig(r=l.r, lora_alpha=l.alpha, lora_dropout=l.dropout, target_modules=l.target_modules,
                               task_type="CAUSAL_LM"),
                )
            if cfg.gradient_checkpointing:
                model.enable_input_require_grads()
        # from_pretrained returns the model in eval mode; a trainer needs it in the mode of this module (train
        # unless set otherwise), or dropout and transformers' gradient checkpointing stay off in training
        model.train(self.training)
        return model

    def _build_sharded(self, mesh, param_dtype: Optional[torch.dtype]) -> nn.Module:
        """FSDP2: rank 0 loads the model (CPU) as :meth:`_create` does; every rank builds the same structure on
        the meta device and shards it (:func:`shard_causal_lm`: each decoder layer, then the root), allocates
        only its own shards, and receives them from rank 0 with ``set_model_state_dict(full_state_dict=True,
        broadcast_from_rank0=True)`` one tensor at a time. Only rank 0 ever holds a full copy, and only until
        the broadcast ends; the other ranks never do. Non-persistent buffers (rotary ``inv_freq``) are not in
        a state dict: rank 0 broadcasts them too. LoRA adapters are initialised on rank 0 (so every rank and
        a 1-process run start from the same adapter)."""
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        group = mesh.get_group()
        src = dist.get_global_rank(group, 0)
        source = self._create() if dist.get_rank() == src else None
        # the meta copies must be built in the loaded dtype ("auto" is read from the checkpoint on rank 0)
        dtype = [str(next(source.parameters()).dtype).removeprefix("torch.") if source is not None else None]
        dist.broadcast_object_list(dtype, src=src, group=group)
        model = self._create(meta=True, dtype=getattr(torch, dtype[0]))
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        shard_causal_lm(lm, mesh, self.config.fsdp, param_dtype)
        if mesh.device_type == "cpu" or self.config.fsdp.cpu_offload:  # offloaded shards live in CPU memory
            device = torch.device("cpu")
        else:
            device = torch.device(mesh.device_type, torch.accelerator.current_device_index())
        lm.to_empty(device=device)
        src_lm = None
        if source is not None:
            src_lm = source.get_base_model() if hasattr(source, "get_base_model") else source
        full = src_lm.state_dict() if src_lm is not None else {}
        set_model_state_dict(lm, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        del full
        with torch.no_grad():
            theirs = dict(src_lm.named_buffers()) if src_lm is not None else {}
            for name, buf in lm.named_buffers():
                if src_lm is not None:
                    buf.copy_(theirs[name])
                dist.broadcast(buf, src=src, group=group)
        del source, src_lm, theirs
        model.train(self.training)
        return model

    def sharded_frozen_copy(self) -> nn.Module:
        """A frozen, eval-mode copy of the sharded base causal LM (the GRPO reference): built on the meta device,
        sharded the same way, and filled shard by shard from this rank's own shards (a local copy, no
        collective, never a full tensor). Not for LoRA policies (their reference is the base, adapter off)."""
        from transformers import AutoModelForCausalLM

        lm = self.base_causal_lm()
        mesh = _fsdp_mesh_of(lm)
        with torch.device("meta"):
            ref = AutoModelForCausalLM.from_config(lm.config, dtype=next(lm.parameters()).dtype,
                                                   trust_remote_code=self.config.trust_remote_code)
        mp = lm._get_fsdp_state()._mp_policy
        shard_causal_lm(ref, mesh, self.config.fsdp, mp.param_dtype)
        ref.to_empty(device=next(lm.parameters()).device)
        with torch.no_grad():
            ref.load_state_dict(lm.state_dict())  # DTensor into DTensor of the same layout: shard by shard
            mine = dict(lm.named_buffers())
            for name, buf in ref.named_buffers():
                buf.copy_(mine[name])
        ref.requires_grad_(False)
        ref.eval()
        return ref

    # ------------------------------------------------------------------ helpers
    @property
    def is_lora(self) -> bool:
        return self.config.lora is not None

    def base_causal_lm(self) -> nn.Module:
        """The transformers ``*ForCausalLM`` (inside the peft wrapper when LoRA is on)."""
        model = self.build()
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, **kwargs):
        return self.build()(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def token_logprobs(
        self,
        input_ids: Tensor,
        attention_mask: Optional[Tensor] = None,
        logits_to_keep: Optional[int] = None,
        temperature: float = 1.0,
        position_ids: Optional[Tensor] = None,
        loss_mask: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-token log-probs and entropies of this policy; see :func:`causal_lm_token_logprobs`."""
        return causal_lm_token_logprobs(
            self.base_causal_lm(), input_ids, attention_mask, logits_to_keep, temperature, position_ids, loss_mask,
            self.config.logprob_chunk_tokens,
        )

    def packed_token_logprobs(self, packed: PackedRows, loss_mask: Tensor,
                              temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """Per-token log-probs and entropies of packed rows; see :func:`packed_token_logprobs`."""
        return packed_token_logprobs(self.base_causal_lm(), packed, loss_mask, temperature,
                                     self.config.logprob_chunk_tokens)

    def supports_packing(self) -> bool:
        """Whether this model keeps packed sequences apart (probed once, see :func:`supports_packed_rows`)."""
        if self._packing_ok is None:
            self._packing_ok = supports_packed_rows(self.base_causal_lm())
        return self._packing_ok

    # ------------------------------------------------------------------ export
    @property
    def sharded(self) -> bool:
        """Whether the built model is sharded with FSDP2 (``fully_shard``)."""
        return is_sharded(self.model)

    def merged_model(self) -> nn.Module:
        """The model with any LoRA adapter merged in (a copy when LoRA is on; the model otherwise). A sharded
        policy has no such model on any rank: see :meth:`plain_copy`, :meth:`save_pretrained`."""
        model = self.build()
        if self.sharded:
            raise RuntimeError("the policy is sharded (FSDP2): use plain_copy() (a collective) for a full model")
        if self.is_lora:
            return copy.deepcopy(model).merge_and_unload()
        return model

    @torch.no_grad()
    def merged_weights(self, dtype: Optional[torch.dtype] = None) -> Iterator[tuple[str, Tensor]]:
        """(checkpoint name, tensor) pairs of the model with any LoRA adapter merged, one tensor at a time.

        Names and values are those of ``merged_model().state_dict()`` (the names ``save_pretrained`` writes,
        plus every alias of a tied weight: ``lm_head.weight`` beside ``model.embed_tokens.weight``), but
        nothing is copied up front: each tensor is produced when the consumer asks for the next one, so a
        weight push holds at most one gathered / cast / merged tensor at a time.

        * LoRA: the merged weight of an adapted layer is computed out of place, ``W + delta`` with peft's own
          ``get_delta_weight`` (what ``merge_adapter`` adds in place), so the trainer's model, its adapter and
          its outputs are never modified -- not even transiently, and nothing is left half-merged if the
          consumer fails midway. (peft's ``merge_adapter()`` / ``unmerge_adapter()`` round trip is not exact:
          ``(W + d) - d`` rounds.) The values equal ``merge_and_unload``'s bit for bit. LoRA variants with
          their own merge rule (DoRA, ...) are refused.
        * Sharded (DTensor) parameters are gathered with ``full_tensor()``, a collective: every rank must
          consume the whole iterator, in the same order (the ``state_dict`` order, which is the same on
          every rank). FSDP2 + LoRA is tested on 2 CPU ranks (tests/test_fsdp.py).
        * ``dtype``: cast each tensor (e.g. fp32 master weights -> the engine's bf16) as it is produced.
        """
        model = self.build()
        if not self.is_lora:
            for name, tensor in model.state_dict().items():  # references, not copies
                yield name, _export_tensor(tensor, dtype)
            return
        from peft.tuners.lora import LoraLayer

        base = model.get_base_model()
        layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
        # a tied alias of an adapted weight (e.g. lm_head of a LoRA'd embedding) is merged too, as merge_and_unload's is
        adapted = {}
        for name, layer in layers.items():
            w = layer.get_base_layer().weight
            if _storage_key(w) is not None:
                adapted[_storage_key(w)] = (layer, "weight")
        for key, tensor in base.state_dict().items():
            name = _merged_name(key, model.active_adapter)
            if name is None:
                continue
            layer, kind = None, key.rsplit(".", 1)[-1]
            prefix = key.split(".base_layer.")[0] if ".base_layer." in key else None
            if prefix in layers:
                layer = layers[prefix]
            elif _storage_key(tensor) in adapted:
                layer, kind = adapted[_storage_key(tensor)]
            if layer is not None:
                tensor = _lora_merged(layer, kind, tensor)
            yield name, _export_tensor(tensor, dtype)

    def _plain_model(self, state_dict: dict[str, Tensor]) -> nn.Module:
        """An unsharded causal LM of this policy's architecture holding ``state_dict`` (merged names; the tensors
        are used, not copied), tied weights tied again, non-persistent buffers copied from this rank's model."""
        from transformers import AutoModelForCausalLM

        lm = self.base_causal_lm()
        kwargs = {"attn_implementation": self.config.attn_implementation} if self.config.attn_implementation else {}
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(lm.config, dtype=next(iter(state_dict.values())).dtype,
                                                     trust_remote_code=self.config.trust_remote_code, **kwargs)
        plain.load_state_dict(state_dict, assign=True)
        plain.tie_weights()
        with torch.no_grad():
            persistent = set(plain.state_dict())
            for name, buf in lm.named_buffers():
                if name not in persistent:
                    owner, _, leaf = name.rpartition(".")
                    plain.get_submodule(owner).register_buffer(leaf, buf.detach().clone(), persistent=False)
        return plain.train(False)

    @torch.no_grad()
    def plain_copy(self, dtype: Optional[torch.dtype] = None) -> nn.Module:
        """An unsharded copy of the model with any LoRA adapter merged, on this rank (eval mode). For a sharded
        policy it is gathered one tensor at a time (:meth:`merged_weights`): a collective, every rank calls it."""
        if not self.sharded:
            model = self.merged_model()
            return copy.deepcopy(model) if model is self.build() else model
        return self._plain_model({name: tensor.clone() for name, tensor in self.merged_weights(dtype)})

    def save_pretrained(self, path: str | os.PathLike, merge_lora: bool = True, every_rank: bool = False) -> Path:
        """Write a folder that ``AutoModelForCausalLM.from_pretrained`` and vLLM load (LoRA merged).

        A sharded (FSDP2) policy: a collective, every rank calls it; the full tensors are gathered one at a time
        (:meth:`merged_weights`) and kept on CPU by the writing rank only -- rank 0, or every rank with
        ``every_rank`` (each its own folder, e.g. for a per-rank rollout engine) -- which writes one ordinary
        ``save_pretrained`` folder. LoRA is always merged then."""
        out = Path(path)
        if self.sharded:
            import torch.distributed as dist

            writes = every_rank or dist.get_rank() == 0
            state = {}
            for name, tensor in self.merged_weights():
                if writes:
                    state[name] = tensor.to("cpu", copy=True)
                del tensor
            if writes:
                out.mkdir(parents=True, exist_ok=True)
                _save_model(self._plain_model(state), out, every_rank)
                self.tokenizer.save_pretrained(str(out))
            return out
        out.mkdir(parents=True, exist_ok=True)
        model = self.merged_model() if merge_lora else self.build()
        _save_model(model, out, every_rank)
        self.tokenizer.save_pretrained(str(out))
        return out


def _save_model(model: nn.Module, out: Path, every_rank: bool) -> None:
    """``model.save_pretrained(out)``. transformers 5 writes nothing on a rank other than 0 once torch.distributed is
    initialised (``should_save_on_this_rank``); with ``every_rank`` this rank writes its own folder anyway (each
    training rank's rollout engine loads its own copy)."""
    if every_rank:
        model.should_save_on_this_rank = lambda is_main_process: is_main_process
    try:
        model.save_pretrained(str(out), safe_serialization=True)
    finally:
        if every_rank:
            del model.should_save_on_this_rank
