"""DeepSpeed ZeRO (stages 2 and 3) for the supervised modules, through Lightning's ``DeepSpeedStrategy``.

What Lightning 2.6's ``DeepSpeedStrategy`` does by itself, and what this module adds so that a run does
what its config says:

* **Where DeepSpeed reads clipping and accumulation.** Lightning writes ``trainer.accumulate_grad_batches``
  into the DeepSpeed config's ``gradient_accumulation_steps`` (and refuses the key in a user JSON), and
  ``trainer.gradient_clip_val`` into ``gradient_clipping`` -- but only when the JSON has no
  ``gradient_clipping`` of its own; otherwise the trainer's value is silently ignored. DeepSpeed clips
  inside ``engine.step()`` (Lightning's ``clip_gradients`` is a no-op under DeepSpeed), so the value in the
  config is the only one that acts. :func:`reconcile_config` refuses every such disagreement (clipping,
  precision, an optimizer or scheduler in the JSON that would replace ``configure_optimizers``, "auto"
  placeholders that only the HF Trainer resolves) before anything is built.
* **Accumulation is scaled once, not twice.** Lightning divides the loss a ``training_step`` returns by
  ``accumulate_grad_batches`` and its ``DeepSpeedPrecision.backward`` then calls ``engine.backward``,
  which divides by ``gradient_accumulation_steps`` again (``scale_wrt_gas=True``): gradients would be
  1/A^2 of the mean over the A micro-batches, so ``gradient_clipping`` would act on a norm A times too
  small (a clip of 1.0 behaving like A). :func:`accumulation_compensation` is the factor A the SFT module
  multiplies its returned loss by under DeepSpeed, so that the gradient is the mean (tests pin both
  divisions, so a Lightning fix shows up as a failing test, not as a silently wrong gradient).
* **Master weights.** With ``precision: bf16-mixed`` DeepSpeed enables its ``bf16`` mode: the module's
  parameters are bf16 and ZeRO's optimizer keeps float32 master partitions (and float32 AdamW moments).
  That is the fp32 master-weight training ``r1lightning.precision`` asks for, so its refusal of bf16
  trainable parameters does not apply under ZeRO stages 1-3 (:func:`keeps_fp32_master`); stage 0 (no ZeRO)
  with a half precision is refused instead.
* **ZeRO-3 loading and the LM head.** ``configure_model`` runs inside Lightning's ``deepspeed.zero.Init``
  context, so every parameter is partitioned as it is created. ``from_pretrained`` then has to load the
  checkpoint into partitions: transformers does it (gathering one module at a time, rank 0 loading) only
  while an ``HfDeepSpeedConfig`` object is alive (:func:`zero3_loading`). The log-prob path applies the LM
  head's weight outside the head's own ``forward`` (chunked, so the fp32 logits of a batch never exist at
  once); under ZeRO-3 the weight is an empty placeholder there, so it is registered as an *external
  parameter* of the root module (:func:`register_head_for_zero3`): DeepSpeed then gathers it for the
  duration of the root's forward and again for its backward.
* **GRPO is refused** (:func:`refuse_manual_optimization`), at every stage: see that function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from torch import nn

FSDP2_HINT = ("use FSDP2 instead: trainer.strategy: {class_path: lightning.pytorch.strategies.ModelParallelStrategy, "
              "init_args: {data_parallel_size: <world size>, tensor_parallel_size: 1}} (configs/r1_zero_7b_fsdp.yaml)")


def deepspeed_strategy(trainer) -> Optional[Any]:
    """The trainer's ``DeepSpeedStrategy``, or None (also when DeepSpeed or the trainer is absent)."""
    if trainer is None:
        return None
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = getattr(trainer, "strategy", None)
    return strategy if isinstance(strategy, DeepSpeedStrategy) else None


def zero_stage(config: Mapping) -> int:
    """ZeRO stage of a DeepSpeed config dict (0 when ``zero_optimization`` is absent or disabled)."""
    zero = config.get("zero_optimization")
    if not isinstance(zero, Mapping):
        return 0
    return int(zero.get("stage", 0))


def _half_mode(config: Mapping) -> Optional[str]:
    """'bf16', 'fp16' or None: the half precision a DeepSpeed config enables."""
    for key in ("bf16", "fp16"):
        section = config.get(key)
        if isinstance(section, Mapping) and section.get("enabled") is True:
            return key
    return None


def _wanted_half_mode(precision: str) -> Optional[str]:
    if precision.startswith("bf16"):
        return "bf16"
    if precision.startswith("16"):
        return "fp16"
    return None


def _auto_keys(config: Any, prefix: str = "") -> list[str]:
    if isinstance(config, Mapping):
        return [k for key, v in config.items() for k in _auto_keys(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if config == "auto" else []


def reconcile_config(
    config: Mapping,
    *,
    precision: str,
    gradient_clip_val: Optional[float],
    accumulate_grad_batches: int = 1,
) -> None:
    """Raise ``ValueError`` where a user's DeepSpeed config and the trainer's settings disagree.

    Meant for the config before Lightning completes it (``DeepSpeedStrategy.config`` in the ``setup``
    hook): Lightning then adds ``gradient_accumulation_steps``, ``gradient_clipping`` (only when absent)
    and ``bf16`` / ``fp16`` (only when absent) from the trainer. A config Lightning already completed
    (a second ``fit`` / ``test`` on the same trainer) agrees with the trainer and passes.

    Args:
        config: The DeepSpeed config dict (a user's JSON, or the one Lightning builds from ``stage=`` etc.).
        precision: ``trainer.precision`` (``"bf16-mixed"``, ``"32-true"``, ...).
        gradient_clip_val: ``trainer.gradient_clip_val`` (None = not set).
        accumulate_grad_batches: ``trainer.accumulate_grad_batches``.
    """
    auto = _auto_keys(config)
    if auto:
        raise ValueError(
            f"DeepSpeed config has 'auto' values ({', '.join(auto)}): only the Hugging Face Trainer resolves them. "
            "Under Lightning write numbers, and leave gradient_accumulation_steps, gradient_clipping and bf16 out: "
            "they come from trainer.accumulate_grad_batches, trainer.gradient_clip_val and trainer.precision")
    if "gradient_accumulation_steps" in config \
            and int(config["gradient_accumulation_steps"]) != int(accumulate_grad_batches):
        raise ValueError(
            f"DeepSpeed config sets gradient_accumulation_steps={config['gradient_accumulation_steps']}: remove it "
            f"and set trainer.accumulate_grad_batches (now {accumulate_grad_batches}); Lightning writes that value "
            "into the DeepSpeed config")
    if "gradient_clipping" in config and gradient_clip_val is not None \
            and float(config["gradient_clipping"]) != float(gradient_clip_val):
        raise ValueError(
            f"gradient clipping disagrees: the DeepSpeed config says gradient_clipping={config['gradient_clipping']}, "
            f"trainer.gradient_clip_val={gradient_clip_val}. DeepSpeed clips inside its step with the config's value "
            "and Lightning would silently ignore the trainer's; keep one of them (preferably "
            "trainer.gradient_clip_val, with gradient_clipping removed from the JSON)")
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise ValueError(
                f"DeepSpeed config defines a {key!r}: it would replace the module's configure_optimizers (AdamW "
                "without weight decay on norms and biases, warmup + cosine/linear/constant schedule) and make "
                "model.init_args.lr / betas / weight_decay / warmup_steps do nothing. Remove it from the JSON")
    have, want = _half_mode(config), _wanted_half_mode(precision)
    if have != want and (("bf16" in config) or ("fp16" in config)):
        raise ValueError(
            f"precision disagrees: the DeepSpeed config enables {have or 'neither bf16 nor fp16'}, trainer.precision="
            f"{precision!r} wants {want or 'float32'}. Remove the bf16 / fp16 sections from the JSON (Lightning "
            "fills them in from trainer.precision) or change trainer.precision")
    if want is not None and zero_stage(config) == 0:
        raise ValueError(
            f"trainer.precision={precision!r} under DeepSpeed without ZeRO (stage 0) is not supported here: the fp32 "
            "master weights this project requires are kept by ZeRO's optimizer (stages 1-3). Set a ZeRO stage, or "
            "use strategy: ddp")


def check_strategy(module) -> None:
    """Refusals and reconciliation for ``module``'s trainer (no-op unless the strategy is DeepSpeed)."""
    trainer = module._trainer
    strategy = deepspeed_strategy(trainer)
    if strategy is None:
        return
    if not module.automatic_optimization:
        refuse_manual_optimization(module, zero_stage(strategy.config or {}))
    policy = getattr(module, "policy", None)
    if policy is not None and policy.is_lora:
        raise ValueError(
            "LoRA under DeepSpeed is not supported here (the export merges adapters from full weights, and "
            "ZeRO partitions them); train LoRA with strategy: ddp, or without LoRA under DeepSpeed")
    if getattr(module, "eval_sampling", None) is not None and zero_stage(strategy.config or {}) == 3:
        raise ValueError(
            "eval_sampling under ZeRO-3 is not supported: every forward of a partitioned model is a collective, and "
            "sampling stops at different lengths on different ranks, so generation would hang. Set "
            "model.init_args.eval_sampling: null (validation loss is still computed), or use ZeRO-2")
    reconcile_config(strategy.config or {}, precision=str(trainer.precision),
                     gradient_clip_val=trainer.gradient_clip_val,
                     accumulate_grad_batches=trainer.accumulate_grad_batches)


def refuse_manual_optimization(module, stage: int) -> None:
    """GRPO (manual optimisation) under DeepSpeed is refused at every ZeRO stage.

    * Clipping would be a silent no-op: GRPO clips each optimizer step with ``self.clip_gradients``
      (``max_grad_norm``), which Lightning's ``DeepSpeedPrecision.clip_gradients`` ignores; only the
      config's ``gradient_clipping`` acts, inside ``engine.step()``.
    * Accumulation: one GRPO optimizer step accumulates a varying number of token-budget micro-batches
      (``micro_batch_tokens``) with gradients normalised by the step's token count; DeepSpeed expects a fixed
      ``gradient_accumulation_steps`` per ``step()`` and rescales every ``backward`` by it.
    * ZeRO-3 in addition: the reference model's and the policy's log-probs apply the LM head outside its
      forward, and the vLLM weight push reads parameters that are empty partitions outside a gathered
      context.
    """
    raise ValueError(
        f"{type(module).__name__} uses manual optimisation (several micro-batch backward passes and its own "
        f"gradient clipping per optimizer step), which DeepSpeed ZeRO (stage {stage}) would get silently wrong: "
        "Lightning's DeepSpeed plugin ignores self.clip_gradients, DeepSpeed rescales each backward by a fixed "
        "gradient_accumulation_steps, and under ZeRO-3 the log-prob path and the vLLM push would read empty "
        f"parameter partitions. DeepSpeed is supported for SFTModule and DistillModule; for GRPO {FSDP2_HINT}")


def keeps_fp32_master(trainer) -> bool:
    """True when DeepSpeed ZeRO (stage >= 1) owns the optimizer: it keeps fp32 master weights and moments
    for bf16/fp16 module parameters, so bf16 parameters are not the rounding hazard r1lightning.precision
    refuses."""
    strategy = deepspeed_strategy(trainer)
    return strategy is not None and zero_stage(strategy.config or {}) >= 1


def accumulation_compensation(trainer) -> int:
    """Factor the loss returned by ``training_step`` is multiplied by so that, under DeepSpeed, the gradient is
    the mean over the accumulated micro-batches (Lightning and ``engine.backward`` each divide by A); 1 otherwise."""
    if deepspeed_strategy(trainer) is None:
        return 1
    return int(trainer.accumulate_grad_batches)


def is_zero3(trainer) -> bool:
    strategy = deepspeed_strategy(trainer)
    return strategy is not None and zero_stage(strategy.config or {}) == 3


@contextlib.contextmanager
def zero3_loading(config: Mapping) -> Iterator[None]:
    """Keep an ``HfDeepSpeedConfig`` alive while models are built, so ``from_pretrained`` loads the
    checkpoint into ZeRO-3 partitions (one module gathered at a time, rank 0 copying) instead of into the
    empty placeholders ``deepspeed.zero.Init`` leaves."""
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    keep = HfDeepSpeedConfig(dict(config))  # transformers holds only a weak reference to it
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del keep


def register_head_for_zero3(root: nn.Module, causal_lm: nn.Module) -> None:
    """Make DeepSpeed ZeRO-3 gather the LM head's weight for every forward / backward of ``root``.

    ``r1lightning.policy`` applies the head's weight chunk by chunk outside the head's forward; ZeRO-3 only
    gathers a parameter inside a forward of the module that owns it (or one it is registered with)."""
    import deepspeed

    head = causal_lm.get_output_embeddings()
    deepspeed.zero.register_external_parameter(root, head.weight)
    if getattr(head, "bias", None) is not None:
        deepspeed.zero.register_external_parameter(root, head.bias)


def build_policy(module, policy, register_head: bool = True, **build_kwargs) -> nn.Module:
    """``policy.build(**build_kwargs)`` for ``module``'s strategy: under ZeRO-3 loaded into partitions and, with
    ``register_head``, its LM head registered with ``module`` (the root DeepSpeed wraps). A model only ever
    called through its own forward (the distillation teacher) needs no registration. ``build_kwargs`` (the FSDP2
    mesh and compute dtype) apply outside ZeRO-3. Idempotent like ``Policy.build``."""
    trainer = module._trainer
    if policy.model is not None or not is_zero3(trainer):
        return policy.build(**build_kwargs)
    with zero3_loading(deepspeed_strategy(trainer).config):
        model = policy.build()
    if register_head:
        register_head_for_zero3(module, policy.base_causal_lm())
    return model


def full_state_dict(module, policy) -> Optional[dict]:
    """The trained policy's full weights for ``save_pretrained``, or None when the strategy is not DeepSpeed.

    Under DeepSpeed every rank must call it (each tensor is gathered with a collective, in the same
    ``state_dict`` order everywhere); rank 0 receives ``{name: float32 CPU tensor}``, the other ranks an
    empty dict. Trainable parameters come from ZeRO's fp32 master partitions (``safe_get_full_fp32_param``),
    not from the module's bf16 copies, so the export holds the weights the optimizer trained; frozen ones
    (not in the optimizer) are gathered from the module. One full tensor exists at a time besides rank 0's
    growing dict."""
    if deepspeed_strategy(module._trainer) is None:
        return None
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    rank0 = module._trainer.global_rank == 0
    out: dict = {}
    done: dict = {}
    for name, tensor in policy.build().state_dict(keep_vars=True).items():
        if not isinstance(tensor, nn.Parameter):
            out[name] = tensor.detach().cpu()  # buffers are never partitioned
            continue
        if id(tensor) not in done:  # a tied weight appears under two names: gather it once
            full = safe_get_full_fp32_param(tensor) if tensor.requires_grad else None
            if full is None:
                gather = deepspeed.zero.GatheredParameters([tensor]) if hasattr(tensor, "ds_id") \
                    else contextlib.nullcontext()
                with gather:
                    full = tensor.detach().float().clone()
            done[id(tensor)] = full.cpu() if rank0 else None
        if rank0:
            out[name] = done[id(tensor)]
    return out
