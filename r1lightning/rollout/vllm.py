"""Rollouts with a vLLM engine colocated in the training process (the fast path for GRPO sampling).

The engine keeps its own copy of the weights, so after every optimizer step it must be refreshed
from the policy, or GRPO silently samples from a stale pi_old (the peers' most reported failure).
:class:`~r1lightning.callbacks.VLLMRolloutRefresh` does that before each rollout and *verifies* it;
``GRPOModule`` refuses to train with this engine unless that callback is present.

How this maps onto vLLM (0.32, CPU build tested here; GPU paths written to vLLM's API but NOT
exercised by this repository's tests, which run on CPU only):

* start-up: the policy (LoRA merged) is written with ``policy.save_pretrained`` to a temporary
  folder and ``vllm.LLM`` loads it. ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` by default (as TRL's
  colocate mode does) so the engine core runs in this process and weights are handed over as
  tensors, without serialisation.
* sampling: ``SamplingSettings`` -> ``vllm.SamplingParams`` one to one, built per call (so a
  ``GenerationLengthScheduler`` change of ``max_new_tokens`` takes effect at the next rollout; no
  ``set_max_new_tokens`` is needed). Prompts are token ids (``TokensPrompt``). Log-probs are
  vLLM's ``processed_logprobs`` (after temperature / top-k / top-p), the same quantity the HF engine
  returns and, for top-p = 1 and top-k = 0, what the trainer computes with ``policy.token_logprobs``
  at the sampling temperature.
* weight refresh, CPU build: the CPU build repacks linear weights at load time, so per-parameter
  ``model.load_weights`` fails there; vLLM's ``worker.reload_weights(weights_iterator=...,
  is_checkpoint_format=True)`` re-runs the loading pipeline (repacking included) and works. It is
  reached through a small worker extension (:class:`WeightSyncExtension`) via ``collective_rpc``;
  with multiprocessing off the tensors are passed by reference, with it on they travel as one
  safetensors blob. The prefix cache is reset afterwards (cached KV blocks belong to old weights).
* weight refresh, GPU (UNTESTED in this repo): per-parameter ``model_runner.model.load_weights``
  (TRL's colocate path), with sleep mode woken for weights first when enabled.

Differences from the HF engine that a user may notice: vLLM also stops on every eos id of the
model's ``generation_config.json`` (HF generate here stops on the tokenizer's eos only); the
completion token ids, truncation flags and decoded texts are otherwise built the same way (eos
kept in ``completion_ids``, texts decoded with ``skip_special_tokens=True`` from those ids).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import random
import tempfile
import time
from typing import Any, Optional

import torch

from r1lightning.rollout.base import RolloutBatch, RolloutEngine, SamplingSettings

log = logging.getLogger(__name__)

__all__ = ["VLLMRolloutEngine", "WeightSyncExtension", "configure_vllm_env", "policy_weights"]

_EXTENSION = "r1lightning.rollout.vllm.WeightSyncExtension"


def configure_vllm_env(cpu: bool, kv_cache_space_gb: Optional[float] = None) -> dict[str, str]:
    """Process-wide vLLM settings for a colocated engine; values the user already exported win, except
    an explicit ``kv_cache_space_gb``.

    * ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: engine core in this process (weights passed by reference).
    * CPU: ``VLLM_CPU_OMP_THREADS_BIND=nobind``, so vLLM does not pin the OpenMP threads of the process
      it shares with the trainer, and ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB: vLLM reads an integer) from
      ``kv_cache_space_gb``, else 1 GiB (vLLM's automatic size would claim most of the free RAM).

    vLLM caches its environment once an engine has started: set these before the first engine.
    Returns the variables it set.
    """
    wanted = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if cpu:
        wanted["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        set_now = {}
        if kv_cache_space_gb is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = set_now["VLLM_CPU_KVCACHE_SPACE"] = \
                str(max(1, math.ceil(kv_cache_space_gb)))
        else:
            wanted["VLLM_CPU_KVCACHE_SPACE"] = "1"
    else:
        set_now = {}
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = value
            set_now[key] = value
    return set_now


class _RefreshLogFilter(logging.Filter):
    """Drops vLLM's per-refresh chatter while a push runs (refresh time and size are logged as vllm/* metrics):
    the reload timing and prefix-cache INFO lines, and the reload's warning that ``RotaryEmbedding`` "failed to
    load weights" -- its cos/sin cache is computed from the config, is in no checkpoint, and vLLM keeps the one
    it has. Any other layer that fails to load is still reported (and the probe check catches it)."""

    LOGGERS = ("vllm.model_executor.model_loader.reload.layerwise", "vllm.model_executor.model_loader.reload.inplace",
               "vllm.v1.core.block_pool")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("Reloading and processing weights took") or msg == "Successfully reset prefix cache":
            return False
        return not (msg == "%s: Failed to load weights" and record.args == ("RotaryEmbedding",))


@contextlib.contextmanager
def _quiet_refresh_logs():
    quiet = _RefreshLogFilter()
    loggers = [logging.getLogger(name) for name in _RefreshLogFilter.LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def check_cpu_head_dim(config) -> None:
    """vLLM's CPU attention kernels exist for a fixed list of head sizes; any other fails deep inside the
    first ``generate``. Check the model's before the engine starts and name the way out."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    except ImportError:  # another vLLM layout: let vLLM decide
        return
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim is not None and head_dim not in supported:
        raise ValueError(
            f"vLLM's CPU build has no attention kernel for head_dim={head_dim} (hidden_size "
            f"{getattr(config, 'hidden_size', '?')} / {heads} heads); it supports {supported}. Use a model with one of "
            "those head sizes (tiny models: policy.tiny.hidden_size / num_attention_heads) or rollout.engine: hf")


def _numpy_state(state=None):
    """Get (no argument) or restore numpy's global random state; None when numpy is absent."""
    try:
        import numpy as np
    except ImportError:
        return None
    if state is None:
        return np.random.get_state()
    np.random.set_state(state)
    return state


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def policy_weights(policy) -> list[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) pairs of the policy, exactly the entries ``save_pretrained`` writes.

    LoRA is merged (``policy.merged_model()``, a temporary copy); sharded (DTensor) parameters are
    gathered with ``full_tensor()``. Tied weights are sent under both names: vLLM's layer-wise
    ``reload_weights`` leaves a tied ``lm_head`` stale when only ``embed_tokens`` arrives (measured:
    probe log-probs off by 0.26 nats on the tiny Llama), so nothing is deduplicated.
    """
    out = []
    for name, tensor in policy.merged_model().state_dict().items():
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        out.append((name, tensor.detach()))
    return out


class WeightSyncExtension:
    """Methods added to vLLM's worker (``worker_extension_cls``); called through ``LLM.collective_rpc``.

    Runs inside the worker: ``self`` is the vLLM worker, ``self.model_runner.model`` the engine model.
    """

    def r1l_update_weights(self, weights: Optional[list] = None, blob: Optional[bytes] = None,
                           method: str = "reload") -> int:
        """Load ``weights`` ((name, tensor) pairs) or a safetensors ``blob``; returns the tensor count.

        method 'reload': ``reload_weights`` (checkpoint format; re-runs repacking; needed on CPU).
        method 'load_weights': per-parameter ``model.load_weights`` (GPU; untested in this repo).
        """
        if blob is not None:
            from safetensors.torch import load

            weights = list(load(blob).items())
        weights = list(weights or [])
        if method == "reload":
            self.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        elif method == "load_weights":
            model = self.model_runner.model
            for name, tensor in weights:
                model.load_weights(weights=[(name, tensor)])
        else:
            raise ValueError(f"unknown weight update method {method!r}")
        return len(weights)

    def r1l_param_sums(self) -> dict[str, Any]:
        """{engine parameter name: (numel, float64 sum)} plus the model's fused-module mapping."""
        model = self.model_runner.model
        sums = {n: (p.numel(), float(p.detach().double().sum()) if p.numel() else 0.0)
                for n, p in model.named_parameters()}
        return {"sums": sums, "packed": dict(getattr(type(model), "packed_modules_mapping", {}) or {})}


class VLLMRolloutEngine(RolloutEngine):
    """Colocated vLLM engine: same interface and ``RolloutBatch`` as :class:`HFRolloutEngine`."""

    holds_weights = True

    def __init__(
        self,
        model_dir: str,
        tokenizer,
        *,
        dtype: str = "auto",
        max_model_len: Optional[int] = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        gpu_memory_utilization: float = 0.3,
        kv_cache_space_gb: Optional[float] = None,
        enable_sleep_mode: bool = False,
        seed: int = 0,
        update_method: str = "auto",
        engine_kwargs: Optional[dict] = None,
        _tmpdir: Optional[tempfile.TemporaryDirectory] = None,
    ):
        """
        Args:
            model_dir: Folder written by ``policy.save_pretrained`` (config, safetensors, tokenizer).
            tokenizer: The policy's tokenizer (decodes texts exactly as the HF engine does).
            dtype: Engine weight dtype ('auto' = the checkpoint's, see :meth:`from_settings`).
            max_model_len: Longest prompt + completion (None = the model's).
            tensor_parallel_size: Tensor-parallel degree.
            enforce_eager: No CUDA graphs / torch.compile (faster start, slower decode).
            gpu_memory_utilization: GPU only: memory fraction for weights + KV cache.
            kv_cache_space_gb: CPU only: KV cache GiB (``VLLM_CPU_KVCACHE_SPACE``, rounded up).
            enable_sleep_mode: GPU only: free engine memory between rollouts (untested here).
            seed: Engine seed.
            update_method: 'reload' (vLLM reload_weights; the CPU build needs it), 'load_weights'
                (per parameter; GPU) or 'auto' (reload on CPU, load_weights on GPU).
            engine_kwargs: Extra ``vllm.LLM`` keyword arguments (override the ones above).
        """
        self.cpu = _on_cpu()
        configure_vllm_env(self.cpu, kv_cache_space_gb)
        from vllm import LLM

        self.tokenizer = tokenizer
        self.model_dir = str(model_dir)
        self._tmpdir = _tmpdir
        self.sleep_mode = bool(enable_sleep_mode) and not self.cpu
        if enable_sleep_mode and self.cpu:
            log.warning("vLLM: sleep mode is GPU only; ignored on CPU")
        if update_method == "auto":
            update_method = "reload" if self.cpu else "load_weights"
        if update_method not in ("reload", "load_weights"):
            raise ValueError(f"update_method must be 'auto', 'reload' or 'load_weights', got {update_method!r}")
        self.update_method = update_method
        kwargs: dict[str, Any] = dict(
            model=self.model_dir, tokenizer=self.model_dir, dtype=dtype, max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager, seed=seed,
            # the sampled token's log-prob after temperature/top-k/top-p, as the HF engine returns it
            logprobs_mode="processed_logprobs",
            worker_extension_cls=_EXTENSION,
        )
        if not self.cpu:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.sleep_mode)
        self.shares_process_group = torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1
        if self.shares_process_group:
            # one engine per training rank inside the trainer's process group, TRL's colocate recipe: the
            # ranks of one tensor-parallel group share a seed (UNTESTED in this repo: no multi-GPU here)
            kwargs["distributed_executor_backend"] = "external_launcher"
            kwargs["seed"] = seed + torch.distributed.get_rank() // max(1, tensor_parallel_size)
        kwargs.update(engine_kwargs or {})
        set_threads = torch.set_num_threads
        t0 = time.perf_counter()
        # in-process, vLLM seeds the global torch / numpy / random generators with its seed: keep the
        # trainer's random streams as they were (Lightning's seed_everything, resumable runs)
        py_state, np_state = random.getstate(), _numpy_state()
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []):
            self.llm = LLM(**kwargs)
        random.setstate(py_state)
        _numpy_state(np_state)
        # the CPU worker replaces torch.set_num_threads with a no-op for the whole process (it protects
        # its thread binding); with VLLM_CPU_OMP_THREADS_BIND=nobind there is none, so give it back
        if os.environ.get("VLLM_CPU_OMP_THREADS_BIND") == "nobind":
            torch.set_num_threads = set_threads
        self.startup_s = time.perf_counter() - t0
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        self._asleep = False
        self.num_updates = 0

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_policy(cls, policy, **kwargs) -> "VLLMRolloutEngine":
        """Write the policy (LoRA merged) to a temporary folder and start an engine on it."""
        if _on_cpu():
            check_cpu_head_dim(policy.build().config)
        tmp = tempfile.TemporaryDirectory(prefix="r1l_vllm_")
        policy.save_pretrained(tmp.name)
        if kwargs.get("dtype", "auto") == "auto":
            # the trainer's dtype, not vLLM's 'auto' (which turns an fp32 checkpoint into fp16/bf16 on GPU):
            # sampling and training then see the same numbers (GPU configs train in bf16 anyway)
            kwargs["dtype"] = str(next(policy.build().parameters()).dtype).removeprefix("torch.")
        return cls(tmp.name, policy.tokenizer, _tmpdir=tmp, **kwargs)

    @classmethod
    def from_settings(cls, policy, settings, sampling: Optional[SamplingSettings] = None) -> "VLLMRolloutEngine":
        """Engine from ``GRPOModule``'s ``RolloutSettings`` (``vllm_*`` fields).

        ``vllm_dtype='auto'`` means the policy's parameter dtype. ``sampling`` is not needed (sampling
        parameters are built from the ``SamplingSettings`` of each ``generate`` call); it is accepted so
        every engine factory has the same signature.
        """
        return cls.from_policy(
            policy, dtype=settings.vllm_dtype, max_model_len=settings.vllm_max_model_len,
            tensor_parallel_size=settings.vllm_tensor_parallel_size, enforce_eager=settings.vllm_enforce_eager,
            gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
            kv_cache_space_gb=settings.vllm_kv_cache_space_gb, enable_sleep_mode=settings.vllm_enable_sleep_mode,
        )

    def close(self) -> None:
        """Shut the engine down and remove the temporary model folder."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self.llm = None
            del llm
            gc.collect()
            if self.in_process and not self.shares_process_group:
                # in-process vLLM created its own (world size 1) torch.distributed group: release it, or a
                # later engine or a DDP trainer in this process finds one already initialised
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                cleanup_dist_env_and_memory()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    # ---------------------------------------------------------------- sampling
    def sampling_params(self, sampling: SamplingSettings, max_tokens: Optional[int] = None):
        """``SamplingSettings`` -> ``vllm.SamplingParams`` (one to one)."""
        from vllm import SamplingParams

        greedy = sampling.temperature <= 0
        return SamplingParams(
            n=1 if greedy else sampling.n,  # vLLM refuses greedy n > 1; generate() repeats the one sample
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            top_k=0 if greedy else int(sampling.top_k or 0),  # vLLM >= 0.11: 0 = off (older: -1)
            max_tokens=max_tokens if max_tokens is not None else sampling.max_new_tokens,
            stop=list(sampling.stop) if sampling.stop else None,
            include_stop_str_in_output=True,  # HF's stop_strings keep the stop text too
            seed=sampling.seed,
            logprobs=0 if sampling.logprobs else None,  # 0 = only the sampled token's log-prob
            detokenize=bool(sampling.stop),  # texts are decoded from the ids below; vLLM needs text for stop strings
            skip_special_tokens=True,
        )

    def _wake(self, tags: Optional[list[str]] = None) -> None:
        if self.sleep_mode and self._asleep:
            self.llm.wake_up(tags=tags)
            if tags is None or "kv_cache" in tags:
                self._asleep = False

    def _sleep(self) -> None:
        # after each rollout, so training has the memory; level 1 keeps a host copy of the weights (level 2
        # would be cheaper but leaves garbage weights whenever a refresh is skipped, every_n_steps > 1)
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> RolloutBatch:
        from vllm.inputs import TokensPrompt

        too_long = [len(p) for p in prompt_ids if len(p) >= self.max_model_len]
        if too_long:
            raise ValueError(f"vLLM: a prompt of {max(too_long)} tokens does not fit max_model_len="
                             f"{self.max_model_len}; "
                             "raise rollout.vllm_max_model_len or shorten the prompts")
        params = []
        for p in prompt_ids:
            # the engine refuses prompt + max_tokens > max_model_len; cut max_tokens instead (-> truncated)
            room = self.max_model_len - len(p)
            params.append(self.sampling_params(sampling, min(sampling.max_new_tokens, room)))
        self._wake()
        t0 = time.perf_counter()
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        self._sleep()
        completions: list[list[int]] = []
        truncated: list[bool] = []
        logprobs: Optional[list[list[float]]] = [] if sampling.logprobs else None
        for req in outs:  # outputs come back in prompt order; samples of one prompt are its group
            samples = sorted(req.outputs, key=lambda c: c.index)
            if sampling.temperature <= 0:
                samples = samples * sampling.n  # greedy: n identical samples, as HF generate gives
            if len(samples) != sampling.n:
                raise RuntimeError(f"vLLM returned {len(samples)} samples for a prompt, expected n={sampling.n}")
            for c in samples:
                ids = list(c.token_ids)  # ends with the eos id when it stopped on eos (as HF)
                completions.append(ids)
                truncated.append(c.finish_reason == "length")
                if logprobs is not None:
                    logprobs.append([step[t].logprob for step, t in zip(c.logprobs, ids)])
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        ntok = sum(len(c) for c in completions)
        return RolloutBatch(
            prompt_ids=list(prompt_ids), completion_ids=completions, texts=texts, truncated=truncated,
            n=sampling.n, logprobs=logprobs,
            stats={"generate_s": elapsed, "tokens": ntok, "tokens_per_s": ntok / max(elapsed, 1e-9)},
        )

    # ---------------------------------------------------------------- weights
    @torch.no_grad()
    def update_weights(self, policy) -> dict:
        """Push the policy's current weights (LoRA merged) into the engine; returns
        ``{"seconds", "bytes", "tensors"}``.

        CPU: vLLM ``reload_weights`` (checkpoint format). GPU: per-parameter ``load_weights``
        (UNTESTED on GPU in this repo). Multiprocessing on: one safetensors blob through the RPC.
        The prefix cache is reset afterwards.
        """
        t0 = time.perf_counter()
        weights = policy_weights(policy)
        nbytes = sum(t.numel() * t.element_size() for _, t in weights)
        if self.sleep_mode and self._asleep:
            self.llm.wake_up(tags=["weights"])  # KV cache stays released until the next generate
        if self.in_process:
            kwargs = {"weights": weights, "method": self.update_method}
        else:
            from safetensors.torch import save

            tensors, seen = {}, set()
            for name, t in weights:
                t = t.contiguous().cpu()
                if t.data_ptr() in seen:  # safetensors refuses shared storage (tied weights): copy the alias
                    t = t.clone()
                seen.add(t.data_ptr())
                tensors[name] = t
            blob = save(tensors)
            kwargs = {"blob": blob, "method": self.update_method}
        with _quiet_refresh_logs():
            counts = self.llm.collective_rpc("r1l_update_weights", kwargs=kwargs)
            self.llm.reset_prefix_cache()
        self.num_updates += 1
        return {"seconds": time.perf_counter() - t0, "bytes": nbytes, "tensors": int(counts[0]) if counts else 0}

    # ---------------------------------------------------------------- verification helpers
    @torch.no_grad()
    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        """The engine's log-prob of each token of ``token_ids`` given the ones before it (temperature 1).

        Compare with ``policy.token_logprobs(torch.tensor([token_ids]))[0][0]`` (same length, len - 1).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(token_ids) < 2:
            raise ValueError("a probe needs at least 2 tokens")
        self._wake()  # stays awake: a probe precedes a rollout, which puts the engine to sleep after it
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False, seed=0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=list(token_ids))], params, use_tqdm=False)[0]
        # prompt_logprobs[0] is None (no context); entry j holds token j's log-prob (and maybe the top-1)
        return [step[t].logprob for step, t in zip(out.prompt_logprobs[1:], token_ids[1:])]

    def engine_param_checksum(self, policy=None) -> dict[str, Any]:
        """Float64 sums of the engine's parameters, compared with the policy's when ``policy`` is given.

        Fused engine modules (``qkv_proj`` = q + k + v, ``gate_up_proj`` = gate + up) are compared
        with the sum of their parts. Parameters the engine holds in a repacked kernel format (the
        CPU build's linear layers report ``numel() == 0``) cannot be read back and are skipped, so on
        CPU this covers embeddings and norms only: prefer :meth:`probe_logprobs` there.
        Returns ``{"compared", "skipped", "max_rel_diff", "worst"}``, the difference of each sum taken
        relative to ``max(1, |policy sum|)`` (or the raw engine sums when ``policy`` is None).
        """
        info = self.llm.collective_rpc("r1l_param_sums")[0]
        if policy is None:
            return info
        ours = {n: float(t.double().sum()) for n, t in policy_weights(policy)}
        compared, skipped, worst, worst_name = 0, 0, 0.0, None
        for name, (numel, total) in info["sums"].items():
            if numel == 0:
                skipped += 1
                continue
            parts = [name]
            for fused, pieces in info["packed"].items():
                if f".{fused}." in name:
                    parts = [name.replace(f".{fused}.", f".{p}.") for p in pieces]
            if not all(p in ours for p in parts):
                skipped += 1
                continue
            expected = sum(ours[p] for p in parts)
            diff = abs(expected - total) / max(1.0, abs(expected))
            compared += 1
            if math.isnan(diff) or (not math.isnan(worst) and diff >= worst):  # a NaN sum is the worst
                worst, worst_name = diff, name
        return {"compared": compared, "skipped": skipped, "max_rel_diff": worst, "worst": worst_name}

