"""Rollouts with Hugging Face ``generate``: on the live training model (no weight copy, no sync), or, for
asynchronous rollouts, on a copy of it that is pushed the policy like a vLLM engine -- in a background thread
of the training process, or in a process of its own (``engine_process``)."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from typing import Optional

import torch

from r1lightning.policy import gathered_for_inference
from r1lightning.rollout.base import EngineSettings, RolloutBatch, RolloutEngine, SamplingSettings
from r1lightning.rollout.process import PROCESS_NAME, EngineProcess, ProcessBackedEngine, serve

log = logging.getLogger(__name__)

__all__ = ["HFEngineSettings", "HFProcessRolloutEngine", "HFRolloutEngine", "PROCESS_NAME", "hf_generate"]


@torch.no_grad()
def hf_generate(model, tok, prompt_ids: list[list[int]], sampling: SamplingSettings,
                max_batch_size: int) -> RolloutBatch:
    """Sample ``sampling.n`` completions per prompt with ``model.generate`` (left padding, chunks of
    ``max_batch_size`` sequences, eval mode restored afterwards); group-contiguous rows."""
    device = _device_of(model)
    was_training = model.training
    model.eval()
    rows = [p for p in prompt_ids for _ in range(sampling.n)]  # group-contiguous
    completions: list[list[int]] = []
    truncated: list[bool] = []
    logprobs: list[list[float]] = [] if sampling.logprobs else None
    eos = tok.eos_token_id
    gen = None
    if sampling.seed is not None:
        gen = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        gen.__enter__()
        torch.manual_seed(sampling.seed)
    t0 = time.perf_counter()
    try:
        for start in range(0, len(rows), max_batch_size):
            chunk = rows[start : start + max_batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for i, p in enumerate(chunk):  # left padding
                ids[i, width - len(p) :] = torch.tensor(p)
                attn[i, width - len(p) :] = 1
            kwargs = dict(
                do_sample=sampling.temperature > 0,
                max_new_tokens=sampling.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
                return_dict_in_generate=True,
                output_scores=sampling.logprobs,
                # each rank's forwards run alone (DDP replicas; FSDP2 weights gathered for the call), so no rank
                # waits for the others' longest completion
                synced_gpus=False,
            )
            if sampling.temperature > 0:
                kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None)
            if sampling.stop:
                kwargs.update(stop_strings=sampling.stop, tokenizer=tok)
            out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **kwargs)
            new = out.sequences[:, width:].cpu()
            if sampling.logprobs:
                # scores are the processed (temperature / top-p) logits the sampler drew from
                step_lp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1).cpu()
            for i in range(new.shape[0]):
                seq = new[i].tolist()
                cut, stopped = len(seq), False
                for j, t in enumerate(seq):
                    if t == eos:
                        cut, stopped = j + 1, True
                        break
                else:
                    # trailing pads after an early stop-string finish
                    while cut > 0 and seq[cut - 1] == tok.pad_token_id:
                        cut -= 1
                        stopped = True
                completions.append(seq[:cut])
                truncated.append(not stopped and cut >= sampling.max_new_tokens)
                if sampling.logprobs:
                    lp = step_lp[i, torch.arange(cut), torch.tensor(seq[:cut], dtype=torch.long)]
                    logprobs.append(lp.tolist())
    finally:
        if gen is not None:
            gen.__exit__(None, None, None)
        if was_training:
            model.train()
    elapsed = time.perf_counter() - t0
    texts = tok.batch_decode(completions, skip_special_tokens=True)
    ntok = sum(len(c) for c in completions)
    return RolloutBatch(
        prompt_ids=list(prompt_ids), completion_ids=completions, texts=texts, truncated=truncated,
        n=sampling.n, logprobs=logprobs,
        stats={"generate_s": elapsed, "tokens": ntok, "tokens_per_s": ntok / max(elapsed, 1e-9)},
    )


class HFRolloutEngine(RolloutEngine):
    """Samples with the policy's own model, in chunks of ``max_batch_size`` sequences.

    The model is put in eval mode for generation (no dropout) and restored afterwards.

    ``own_weights=True`` (asynchronous rollouts): the engine samples from its own frozen copy of the model
    (LoRA merged), because a background thread cannot sample from the parameters the optimizer is changing
    at the same time. It then ``holds_weights`` and is pushed the policy by ``GRPOModule.sync_engine`` like
    the vLLM engine (:meth:`update_weights`, verified through :meth:`probe_logprobs`). It costs one more
    copy of the weights (on the policy's device).
    """

    def __init__(self, policy, max_batch_size: int = 256, own_weights: bool = False):
        self.policy = policy
        self.max_batch_size = max_batch_size
        self.model = None
        if own_weights:
            if policy.sharded:  # FSDP2: an unsharded copy gathered tensor by tensor (a collective: every rank builds one)
                self.model = policy.plain_copy()
            else:
                model = policy.merged_model()  # a copy under LoRA, the training model itself otherwise
                self.model = copy.deepcopy(model) if model is policy.build() else model
            self.model.requires_grad_(False)
            self.model.eval()
            self.holds_weights = True
            self.dtype = next(self.model.parameters()).dtype
            self.num_updates = 0

    def _sampling_model(self):
        return self.model if self.model is not None else self.policy.build()

    def _gathered(self):
        """Sampling on a sharded (FSDP2) training model: its weights gathered for the whole call, so each rank
        may run its own number of forwards (see ``policy.gathered_for_inference``); nothing otherwise."""
        if self.model is not None:
            return contextlib.nullcontext()
        return gathered_for_inference(self.policy.build())

    @torch.no_grad()
    def update_weights(self, policy) -> dict:
        """Copy the policy's current weights (LoRA merged) into the engine's model, tensor by tensor."""
        if self.model is None:
            return {}
        t0 = time.perf_counter()
        own = self.model.state_dict()
        tensors = nbytes = 0
        for name, tensor in policy.merged_weights():
            own[name].copy_(tensor)  # tied aliases arrive under each name: the same storage is written twice
            tensors += 1
            nbytes += tensor.numel() * tensor.element_size()
        self.num_updates += 1
        return {"seconds": time.perf_counter() - t0, "bytes": nbytes, "tensors": tensors,
                "dtype": str(self.dtype).removeprefix("torch.")}

    @torch.no_grad()
    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        """The engine model's log-prob of each token of ``token_ids`` given the ones before it (temperature 1),
        as :meth:`VLLMRolloutEngine.probe_logprobs` (what ``VLLMRolloutRefresh`` compares with the trainer's)."""
        if len(token_ids) < 2:
            raise ValueError("a probe needs at least 2 tokens")
        model = self._sampling_model()
        ids = torch.tensor([token_ids], device=_device_of(model))
        with self._gathered():
            logits = model(input_ids=ids).logits[0, :-1].float()  # (L-1, V)
        return torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0].tolist()

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> RolloutBatch:
        with self._gathered():
            return hf_generate(self._sampling_model(), self.policy.tokenizer, prompt_ids, sampling,
                               self.max_batch_size)


def _device_of(model) -> torch.device:
    """Where the model computes (a sharded parameter reports its local shard's device)."""
    return next(model.parameters()).device


def _serve(conn, model, tok, max_batch_size: int, threads: int) -> None:
    """The engine process: generate on the shared-memory ``model`` for every request (see
    :func:`r1lightning.rollout.process.serve`)."""
    torch.set_num_threads(threads)
    serve(conn, {"generate": lambda prompt_ids, sampling: hf_generate(model, tok, prompt_ids, sampling,
                                                                      max_batch_size)})


class HFProcessRolloutEngine(ProcessBackedEngine, HFRolloutEngine):
    """:class:`HFRolloutEngine` with its own weights, generating in a separate process.

    Why: with rollouts in a thread of the training process the two phases take turns on the GIL (the HF
    generate loop and Lightning are Python), so an asynchronous step is barely shorter than a synchronous one.
    Here the engine's model copy lives in shared memory (``Module.share_memory()``; on GPU, CUDA IPC) and a spawned
    process samples from it; the training process keeps the same object, so:

    * a push (:meth:`update_weights`) is the same tensor-by-tensor ``copy_`` into the engine's copy, done by
      the trainer while the process is idle (the asynchronous protocol pushes only then), and visible to the
      process without any transfer; the push check (:meth:`probe_logprobs`) reads that same copy;
    * ``generate`` sends the prompts and the sampling settings through a pipe and waits for the
      :class:`RolloutBatch` (the caller -- the rollout worker thread -- waits without holding the GIL);
      seeded sampling gives what :class:`HFRolloutEngine` gives on the same weights (same function, same seed);
    * the process uses ``threads`` torch threads (default: half of the trainer's count at build time, at least
      1, the split the rollout worker makes), stops on :meth:`close` and exits by itself when the pipe closes
      (the trainer died).

    Start-up costs a process spawn (importing torch and transformers: seconds). CUDA sharing of the copy is
    written to PyTorch's API but NOT exercised by this repository's tests (CPU only).
    """

    def __init__(self, policy, max_batch_size: int = 256, threads: Optional[int] = None,
                 start_timeout_s: float = 300.0):
        super().__init__(policy, max_batch_size=max_batch_size, own_weights=True)
        if next(self.model.parameters()).device.type == "cpu":
            self.model.share_memory()
        self.threads = max(1, torch.get_num_threads() // 2) if threads is None else int(threads)
        self._process: Optional[EngineProcess] = EngineProcess(
            _serve, (self.model, policy.tokenizer, max_batch_size, self.threads), start_timeout_s)
    # alive, pid, generate (through the pipe) and close come first from ProcessBackedEngine


class HFEngineSettings(EngineSettings):
    """Sample with transformers ``generate`` on the training model itself (no weight copy, no sync), or with
    ``async_rollouts`` on a pushed copy of it in a background thread."""

    def __init__(self, max_batch_size: int = 256, async_rollouts: bool = False, max_staleness: int = 1,
                 tis_cap: float = 2.0, engine_process: bool = False):
        """
        Args:
            max_batch_size: Sequences generated at once (prompts x G are split into chunks of this size).
            async_rollouts: Generate the next rollout batch in a background thread while the trainer optimises
                on the current one (off: exact on-policy GRPO). The engine then samples from its own copy of
                the weights, pushed before every rollout in which the policy changed (see README, Asynchronous
                rollouts).
            max_staleness: Policy versions a trained batch may lag behind the trainer (1: one batch in flight).
            tis_cap: Truncation of the per-token importance weight pi_old / pi_behaviour (verl: 2).
            engine_process: With ``async_rollouts``: generate in a process of its own (a shared-memory copy of
                the weights, :class:`HFProcessRolloutEngine`) instead of a thread of the training process, so
                generation and training really run at the same time (a thread shares the GIL with the trainer).
        """
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        self.max_batch_size = max_batch_size
        self._set_async(async_rollouts, max_staleness, tis_cap)
        if not isinstance(engine_process, bool):
            raise ValueError(f"engine_process must be true or false, got {engine_process!r}")
        if engine_process and not async_rollouts:
            raise ValueError("engine_process needs async_rollouts: true (synchronous rollouts sample the training "
                             "model itself, in the training process)")
        self.engine_process = engine_process

    def build(self, policy) -> HFRolloutEngine:
        if getattr(self, "engine_process", False):
            return HFProcessRolloutEngine(policy, max_batch_size=self.max_batch_size)
        return HFRolloutEngine(policy, max_batch_size=self.max_batch_size, own_weights=self.async_rollouts)
