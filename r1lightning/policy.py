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
    fp32 logits of the whole batch never exist at once.
    """
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
    mask is 0 -- the same values :func:`causal_lm_token_logprobs` gives on the padded batch."""
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
    attention implementations or remote-code models that ignore position-id packing and attend across.)"""
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

    def build(self) -> nn.Module:
        """Create (load) the model once; later calls return it."""
        if self.model is not None:
            return self.model
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
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(t.seed)
                model = AutoModelForCausalLM.from_config(hf_config, **kwargs)
            if cfg.dtype in _DTYPES:
                model = model.to(_DTYPES[cfg.dtype])
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
        self.model = model
        return model

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
    def merged_model(self) -> nn.Module:
        """The model with any LoRA adapter merged in (a copy when LoRA is on; the model otherwise)."""
        model = self.build()
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
          every rank). FSDP2 + LoRA is UNTESTED in this repository.
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

    def save_pretrained(self, path: str | os.PathLike, merge_lora: bool = True) -> Path:
        """Write a folder that ``AutoModelForCausalLM.from_pretrained`` and vLLM load (LoRA merged)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        model = self.merged_model() if merge_lora else self.build()
        model.save_pretrained(str(out), safe_serialization=True)
        self.tokenizer.save_pretrained(str(out))
        return out
