"""The ``reward_model`` reward: a trained Bradley-Terry reward model scores (prompt, completion) pairs
(DeepSeek-R1 §2.3.4, "RL for all scenarios": reward models for general data, rule-based rewards for
reasoning data, in one RL run).

Spec (the ``rewards`` of :class:`r1lightning.modules.GRPOModule`)::

    rewards:
      accuracy: 1.0
      format: 1.0
      reward_model: {path: outputs/reward_model, weight: 1.0, normalize: sigmoid, batch_size: 32}

* **What is scored.** Each completion together with its prompt, formatted as the model was trained
  (:func:`pair_text`; the template and max_length stored in the exported folder's
  ``r1lightning_reward.json``). The prompt comes from the ``prompt`` column: give the prompt
  DataModule ``reward_prompt_column: prompt`` so the unrendered question reaches the rewards.
  ``response: summary`` scores only the text after the last ``</think>`` (R1 judges helpfulness on the
  final summary only; harmlessness on the whole response, the default ``full``).
* **Mixed prompts.** With a ``reward_kind`` column, only rows whose kind is ``model`` (option ``kind``)
  are scored; every other row scores 0.0 and never reaches the model. Rule-based rewards in turn score
  0.0 on rows without a gold answer (``answer: null``). A reward that is constant within a prompt's group
  does not move GRPO's group-normalised advantages, so each prompt is trained by the rewards that apply
  to it, and each group's advantages are normalised by that group's own std whatever the scale.
* **Normalisation** (``normalize``): ``none`` -- the raw score ``r`` (a logit; the Bradley-Terry model
  says P(a preferred to b) = sigmoid(r_a - r_b)); ``sigmoid`` -- ``sigmoid((r - shift) / scale)`` in
  (0, 1), the range of the rule-based 0/1 rewards it is summed with (trained with reward centering the
  scores sit around 0, so 0.5 is "an average response"); ``scale`` / ``shift`` apply to both.
* **Device, batches, no gradients.** The model is loaded once per (path, device, dtype) and cached; it
  runs in eval mode under ``torch.no_grad`` in batches of ``batch_size`` sequences (right-padded; the
  score is read at each row's last real token, so a batched score equals the one-by-one score), on the
  trainer's device: GRPOModule sets it around its reward calls (:func:`reward_device`); elsewhere
  ``device: auto`` is the current CUDA device when CUDA is available, else the CPU.
* **Never raises on model output**: non-string completions are read as text, over-long sequences are
  truncated to max_length. A missing or unreadable model folder is a configuration error
  (:class:`RewardConfigError`, naming the path), raised when the spec is built, before training.

Like the rest of this package, the module imports no torch at import time.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from r1lightning.rewards.errors import RewardConfigError
from r1lightning.rewards.parsing import as_text

__all__ = ["FORMAT_FILE", "clear_cache", "encode_pair", "last_token_scores", "load_reward_model", "pair_text",
           "reward_device", "reward_model_reward", "score_pairs"]

#: Written next to the exported reward model: how its training formatted a (prompt, response) pair.
FORMAT_FILE = "r1lightning_reward.json"
NORMALIZATIONS = ("none", "sigmoid")
RESPONSES = ("full", "summary")

_DEVICE: contextvars.ContextVar[Optional[Any]] = contextvars.ContextVar("r1lightning_reward_device", default=None)
_CACHE: dict[tuple, tuple] = {}
_LOCK = threading.Lock()


@contextlib.contextmanager
def reward_device(device: Any):
    """Inside the block, ``device: auto`` reward models run on ``device`` (the trainer's). The value is a
    context variable, so WeightedReward's worker threads (which copy the context) see it too."""
    token = _DEVICE.set(device)
    try:
        yield
    finally:
        _DEVICE.reset(token)


# ------------------------------------------------------------------------------------------------ text


def pair_text(tokenizer: Any, prompt: Any, completion: str, template: str = "chat") -> str:
    """The text a reward model reads for one (prompt, response) pair.

    ``chat``: the tokenizer's chat template with the prompt as the user turn (or the given chat messages)
    and the response as the assistant turn; ``plain``: ``prompt + "\\n" + response``; otherwise a format
    string with ``{prompt}`` and ``{completion}``.
    """
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='chat' but the reward model's tokenizer has no chat_template; use 'plain' or a "
                             "format string with {prompt} and {completion}")
        messages = [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        messages.append({"role": "assistant", "content": completion})
        return tokenizer.apply_chat_template(messages, tokenize=False)
    if isinstance(prompt, list):
        prompt = "\n".join(str(m.get("content", "")) for m in prompt)
    if template == "plain":
        return f"{prompt}\n{completion}"
    if "{prompt}" not in template or "{completion}" not in template:
        raise ValueError(f"template={template!r}: expected 'chat', 'plain' or a format string with {{prompt}} and "
                         "{completion}")
    return template.replace("{prompt}", str(prompt)).replace("{completion}", completion)


def encode_pair(tokenizer: Any, prompt: Any, completion: str, template: str = "chat",
                max_length: int = 512) -> tuple[list[int], bool]:
    """(token ids, truncated?) of :func:`pair_text`; sequences over ``max_length`` keep their first tokens."""
    text = pair_text(tokenizer, prompt, completion, template)
    # a chat template writes its own special tokens (bos included); plain text gets the tokenizer's
    ids = tokenizer(text, add_special_tokens=template != "chat")["input_ids"]
    if len(ids) > max_length:
        return ids[:max_length], True
    return ids, False


# ------------------------------------------------------------------------------------------------ scoring


def last_token_scores(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """Scalar reward of each row, read at its last real token.  input_ids (B, T), attention_mask (B, T) -> (B,)

    Decoder sequence-classification models (``*ForSequenceClassification`` with a ``score`` head, e.g.
    Llama, Qwen, Mistral) run their backbone with position ids that skip left padding and are read at the
    last position where ``attention_mask`` is 1 -- not where transformers looks (the last token that is not
    the pad id, which is wrong when pad = eos ends a sequence). Other models (encoders: BERT, DeBERTa)
    are called as they are and pool themselves. Returns float32 scores (the model's first logit).
    """
    import torch

    from r1lightning.policy import position_ids_from_mask

    head = getattr(model, "score", None)
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if isinstance(head, torch.nn.Module) and isinstance(backbone, torch.nn.Module):
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
        arange = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        last = (attention_mask.long() * arange).argmax(-1)  # (B,) index of each row's last real token
        pooled = hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last]  # (B, H)
        return head(pooled)[:, 0].float()  # (B,)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()


def _pad(seqs: list[list[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, T), right padding
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
    return ids.to(device), attn.to(device)


def score_pairs(model: Any, tokenizer: Any, prompts: Sequence[Any], completions: Sequence[str],
                batch_size: int = 32, template: str = "chat", max_length: int = 512) -> list[float]:
    """Raw reward-model scores of (prompt, completion) pairs, ``batch_size`` sequences per forward pass, under
    ``torch.no_grad`` and in eval mode (each submodule's mode restored after), on the model's device."""
    import torch

    from r1lightning.policy import eval_mode

    if batch_size < 1:
        raise RewardConfigError(f"reward_model: batch_size must be >= 1, got {batch_size}")
    seqs = [encode_pair(tokenizer, p, c, template, max_length)[0] for p, c in zip(prompts, completions)]
    device = next(model.parameters()).device
    # longest first: rows of one batch have similar lengths, so little compute goes to padding
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    scores = [0.0] * len(seqs)
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, attn = _pad([seqs[i] for i in idx], tokenizer.pad_token_id, device)
            for i, s in zip(idx, last_token_scores(model, ids, attn).tolist()):
                scores[i] = s
    return scores


# ------------------------------------------------------------------------------------------------ loading


def _resolve(path: Any) -> Path:
    from r1lightning.policy import resolve_path

    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise RewardConfigError(f"reward_model: 'path' must be the folder of an exported reward model, got {path!r}")
    resolved = resolve_path(str(path))
    if not resolved.is_dir():
        raise RewardConfigError(
            f"reward_model: path {str(path)!r} is not a folder (resolved to {resolved}). Give the folder "
            "RewardModelModule exported (save_pretrained + tokenizer; by default <log_dir>/hf_model) or any Hugging "
            "Face sequence-classification model with num_labels=1")
    if not (resolved / "config.json").is_file():
        raise RewardConfigError(f"reward_model: {resolved} has no config.json; it is not a saved Hugging Face model")
    return resolved


def read_format(path: Any) -> dict:
    """The pair format stored with an exported reward model ({} when the folder has none)."""
    file = _resolve(path) / FORMAT_FILE
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RewardConfigError(f"reward_model: cannot read {file}: {e}") from None


def _pick_device(device: Any) -> Any:
    import torch

    if device is None or device == "auto":
        current = _DEVICE.get()
        if current is not None:
            return torch.device(current)
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    return torch.device(device)


def load_reward_model(path: Any, device: Any = "auto", dtype: str = "float32",
                      trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) of a reward-model folder, loaded once per (folder, device, dtype) and cached."""
    import torch

    resolved = _resolve(path)
    dev = _pick_device(device)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise RewardConfigError(f"reward_model: dtype must be float32, bfloat16 or float16, got {dtype!r}")
    key = (str(resolved.resolve()), str(dev), dtype)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(resolved), local_files_only=True,
                                                      trust_remote_code=trust_remote_code)
            model = AutoModelForSequenceClassification.from_pretrained(
                str(resolved), dtype=getattr(torch, dtype), local_files_only=True, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as e:
            raise RewardConfigError(f"reward_model: cannot load a sequence-classification model and its tokenizer "
                                    f"from {resolved}: {e}") from None
        archs = getattr(model.config, "architectures", None) or []
        if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
            raise RewardConfigError(
                f"reward_model: {resolved} holds a {archs[0]}, not a reward model (its scalar head would be random); "
                "train one with r1lightning.modules.RewardModelModule and give its exported folder")
        if model.config.num_labels != 1:
            raise RewardConfigError(f"reward_model: {resolved} has num_labels={model.config.num_labels}; a reward "
                                    "model has one output (num_labels=1)")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # only fills right padding, never read
        model.to(dev).eval().requires_grad_(False)
        _CACHE[key] = (model, tokenizer)
        return model, tokenizer


def clear_cache() -> None:
    """Forget every loaded reward model (frees their memory once nothing else holds them)."""
    with _LOCK:
        _CACHE.clear()


# ------------------------------------------------------------------------------------------------ the reward


def _summary(text: str) -> str:
    head, sep, tail = text.rpartition("</think>")
    return tail if sep else text


def reward_model_reward(
    completions: Sequence[Any],
    prompt: Optional[Sequence[Any]] = None,
    reward_kind: Optional[Sequence[Any]] = None,
    path: Optional[str] = None,
    batch_size: int = 32,
    normalize: str = "sigmoid",
    scale: float = 1.0,
    shift: float = 0.0,
    kind: str = "model",
    response: str = "full",
    device: Any = "auto",
    dtype: str = "float32",
    template: Optional[str] = None,
    max_length: Optional[int] = None,
    trust_remote_code: bool = False,
) -> list[float]:
    """Scores of a reward model for each (prompt, completion); see the module docstring.

    Args:
        completions: The sampled responses.
        prompt: Per-sample prompts (the ``prompt`` column; the DataModule's ``reward_prompt_column``).
        reward_kind: Optional per-sample column; only rows equal to ``kind`` are scored, others score 0.0.
        path: Folder of the reward model (RewardModelModule's export, or any HF sequence-classification model
            with num_labels=1).
        batch_size: Sequences per forward pass.
        normalize: 'sigmoid' -> sigmoid((r - shift) / scale) in (0, 1); 'none' -> (r - shift) / scale.
        scale, shift: Fixed affine map applied before the normalisation.
        kind: The reward_kind value this reward applies to.
        response: 'full' (the whole completion) or 'summary' (the text after the last </think>).
        device: 'auto' (the trainer's device, see :func:`reward_device`) or a torch device string.
        dtype: Weights' dtype: float32, bfloat16 or float16.
        template, max_length: Override the pair format stored with the model (defaults: 'chat', 512).
        trust_remote_code: Allow code shipped in the model folder to run.
    """
    _check(path, batch_size, normalize, scale, response)
    n = len(completions)
    if prompt is None:
        raise RewardConfigError(
            "reward_model needs the prompts: set the prompt DataModule's reward_prompt_column: prompt (the rewards "
            "then receive each row's prompt as the 'prompt' column)")
    if len(prompt) != n:
        raise RewardConfigError(f"reward_model: column 'prompt' has {len(prompt)} entries for {n} completions")
    if reward_kind is not None and len(reward_kind) != n:
        raise RewardConfigError(f"reward_model: column 'reward_kind' has {len(reward_kind)} entries for {n} completions")
    rows = [i for i in range(n) if reward_kind is None or reward_kind[i] == kind]
    scores = [0.0] * n
    if not rows:
        return scores
    fmt = read_format(path)
    model, tokenizer = load_reward_model(path, device, dtype, trust_remote_code)
    texts = [as_text(completions[i]) for i in rows]
    if response == "summary":
        texts = [_summary(t) for t in texts]
    raw = score_pairs(model, tokenizer, [prompt[i] if prompt[i] is not None else "" for i in rows], texts,
                      batch_size, template or fmt.get("template", "chat"), int(max_length or fmt.get("max_length", 512)))
    for i, r in zip(rows, raw):
        x = (r - shift) / scale
        if normalize == "sigmoid":
            x = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))  # no overflow
        scores[i] = x
    return scores


def _check(path: Any, batch_size: Any, normalize: Any, scale: Any, response: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RewardConfigError(f"reward_model: batch_size must be an int >= 1, got {batch_size!r}")
    if normalize not in NORMALIZATIONS:
        raise RewardConfigError(f"reward_model: normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0 or not math.isfinite(scale):
        raise RewardConfigError(f"reward_model: scale must be a positive number, got {scale!r}")
    if response not in RESPONSES:
        raise RewardConfigError(f"reward_model: response must be one of {RESPONSES}, got {response!r}")
    _resolve(path)


def check_options(path: Any = None, batch_size: int = 32, normalize: str = "sigmoid", scale: float = 1.0,
                  response: str = "full", **_: Any) -> None:
    """Validate a ``reward_model`` spec when it is built (WeightedReward), so a wrong path stops the run
    before the first rollout instead of after it."""
    _check(path, batch_size, normalize, scale, response)
    read_format(path)


reward_model_reward.check_options = check_options  # type: ignore[attr-defined]
