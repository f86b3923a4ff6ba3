"""Prove that every weight push into a colocated vLLM engine worked.

GRPO samples its G completions from pi_old, the policy *as it is now*. An engine that keeps its own
copy of the weights (``engine.holds_weights``, e.g. :class:`~r1lightning.rollout.vllm.VLLMRolloutEngine`)
samples from whatever was last pushed into it; if a push silently fails, training goes on with a
frozen or corrupted sampler and nothing crashes. Silent weight-sync failures are the most reported
problem with the peers' vLLM integrations, so this callback does not trust the push.

Who pushes: the LightningModule. ``GRPOModule.sync_engine`` calls ``engine.update_weights(policy)``
before a rollout and before held-out evaluation whenever the policy changed since the last push (it counts
policy versions; the first push of each fit is unconditional, since an engine alive from before may hold
other weights); right after each push it calls every callback's ``on_engine_sync(trainer, pl_module,
info)``, ``info`` being what ``update_weights`` returned (``seconds``, ``bytes``, ``tensors``, ``dtype``)
plus ``step`` (``global_step``), ``policy_version`` and ``reason`` (``"rollout"`` or ``"eval"``; a
``"start"`` push is treated as the first of a fit too). A fit without this callback samples from the right
weights as well; it just does not check them.

What is checked after a push (``verify="probe"``, every ``verify_every_n``-th push):

* the engine's log-probs of a fixed probe sequence (``post``) must match the trainer's own log-probs
  of the same tokens (``policy.token_logprobs`` at temperature 1) within ``atol``;
* and when the policy moved (by more than ``atol / 100``) since the previous verified push, the engine
  must have moved too (``post`` != the engine probe stored at that push): this catches a no-op push
  even when the step was too small to exceed ``atol`` (and in bf16, where ``atol`` has to be loose).
  The first push of a fit (and of a new engine) has no previous probe: only the match check runs.

Either failure raises ``RuntimeError`` ("weight sync failed: ..."). ``verify="checksum"`` compares
float64 sums of the engine's readable parameters instead (on the CPU build only embeddings and norms
are readable: linear layers are repacked; see ``engine_param_checksum``); ``"off"`` only logs.

Logged: ``vllm/refresh_s``, ``vllm/refresh_bytes``, ``vllm/refresh_tensors``, ``vllm/policy_version``,
``vllm/verify_s``, ``vllm/probe_max_abs_diff`` / ``vllm/probe_mean_abs_diff`` (engine vs trainer) and
``vllm/probe_engine_delta`` (how far the push moved the engine). Pushes made inside ``training_step``
log through ``pl_module.log``; Lightning refuses per-step ``self.log`` in ``on_train_start`` /
``on_train_end`` and outside hooks, so pushes made there (the evaluations at the start and the end of a
fit) go to ``trainer.logger.log_metrics(step=info["step"])`` directly. Checkpoints store the number of
pushes seen and the step of the last one.

Tolerance (max over the probe tokens of |engine - trainer| log-prob) follows the *engine's* dtype
(``engine.dtype``; the policy's if the engine has none), and the low-precision one applies when either
side computes in bf16/fp16. Measured on CPU with ``benchmarks/refresh_cost.py`` on the tiny base model:
fp32 1e-5 (at most 3.6e-5 during a GRPO fit), while one optimizer step of configs/r1.yaml (lr 1e-4)
moves it by about 0.5 when the push is left out; the fp32 default ``atol=1e-3`` sits between.
bf16 engines (vLLM's bf16 kernels vs the trainer's bf16 forward with an fp32 log-softmax) differ by
0.24-0.35 nats even right after a correct push (mean over tokens 0.03), so the bf16/fp16 default is
1.0: there the match check only catches gross failures (another model's or garbage weights) and the
"engine moved" check is what catches a no-op. A bf16 engine beside fp32 master weights (configs/r1_gpu.yaml)
gets the bf16 tolerance. GPU bf16 was not measured in this repository (``benchmarks/gpu_smoke.py`` does).
``vllm/probe_mean_abs_diff`` is logged too, to watch the train/inference gap over a run.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PROBE_TEXT", "VLLMRolloutRefresh"]

DEFAULT_PROBE_TEXT = (
    "Compute 23+45+17. <think>23+45=68, 68+17=85. Wait, let me verify: 85-17=68.</think> "
    "<answer>85</answer> The quick brown fox jumps over the lazy dog; 0123456789."
)
"""Probe sequence: arithmetic, the reasoning tags and varied ordinary text (about 60-80 tokens)."""

_FP32_ATOL = 1e-3
_LOW_PRECISION_ATOL = 1.0
_UNCHANGED = 1e-7  # engine probe moved by less than this: the push changed nothing
_FULL_PRECISION = (torch.float32, torch.float64)


def _can_log_on_step(pl_module: Any) -> bool:
    """Whether ``pl_module.log(..., on_step=True)`` is allowed in the hook now running (Lightning's own table)."""
    fx = getattr(pl_module, "_current_fx_name", None)
    if fx is None or getattr(pl_module, "_trainer", None) is None:
        return False
    try:
        from lightning.pytorch.trainer.connectors.logger_connector.fx_validator import _FxValidator
    except ImportError:  # another Lightning layout: the one hook known to allow it
        return fx == "training_step"
    options = _FxValidator.functions.get(fx)
    return options is not None and True in options["allowed_on_step"]


class VLLMRolloutRefresh(Callback):
    """Verify each push of ``pl_module.policy`` into ``pl_module.engine`` (``on_engine_sync``) and log it.

    The name is kept from when this callback made the pushes itself; the module makes them now.
    """

    def __init__(
        self,
        verify: Literal["probe", "checksum", "off"] = "probe",
        atol: Optional[float] = None,
        verify_every_n: int = 1,
        probe_text: str = DEFAULT_PROBE_TEXT,
    ):
        """
        Args:
            verify: 'probe' (engine vs trainer log-probs of a fixed sequence, plus "the engine moved"),
                'checksum' (parameter sums; partial on the CPU build) or 'off' (log the push only).
            atol: Largest allowed |engine - trainer| log-prob per probe token (None: 1e-3 when engine and
                policy compute in fp32, 1.0 when either is bf16/fp16, see above); also the relative checksum
                tolerance.
            verify_every_n: Verify every N-th push (1 = every push). The "engine moved" check needs the
                previous push verified too, so with N > 1 only the match check runs.
            probe_text: Text whose tokens form the probe sequence.
        """
        if isinstance(verify_every_n, bool) or not isinstance(verify_every_n, int) or verify_every_n < 1:
            raise ValueError(f"verify_every_n must be a positive integer, got {verify_every_n!r}")
        if verify not in ("probe", "checksum", "off"):
            raise ValueError(f"verify must be 'probe', 'checksum' or 'off', got {verify!r}")
        if atol is not None and not atol > 0:
            raise ValueError(f"atol must be > 0, got {atol!r}")
        self.verify = verify
        self.atol = atol
        self.verify_every_n = verify_every_n
        self.probe_text = probe_text
        self.last_pushed_step: Optional[int] = None
        self.pushes = 0
        self.last_stats: dict[str, float] = {}
        self.last_info: dict[str, Any] = {}
        self._engine_id: Optional[int] = None
        self._engine_updates: Optional[int] = None  # engine.num_updates at the last push reported to us
        self._warned_unreported = False
        self._baseline: Optional[tuple[int, int]] = None  # (id, num_updates) of the engine alive at train start
        self._last_policy_probe: Optional[torch.Tensor] = None
        self._last_engine_probe: Optional[torch.Tensor] = None

    # ---------------------------------------------------------------- probe helpers
    def probe_ids(self, tokenizer) -> list[int]:
        ids = list(tokenizer(self.probe_text, add_special_tokens=False)["input_ids"])
        if tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
        return ids

    def tolerance(self, engine: Any, policy: Any) -> float:
        """``atol`` if set; else by precision: fp32 only when both the engine and the policy compute in fp32."""
        if self.atol is not None:
            return self.atol
        policy_dtype = next(policy.build().parameters()).dtype
        engine_dtype = getattr(engine, "dtype", None)
        dtypes = [policy_dtype] + ([engine_dtype] if isinstance(engine_dtype, torch.dtype) else [])
        return _FP32_ATOL if all(d in _FULL_PRECISION for d in dtypes) else _LOW_PRECISION_ATOL

    @staticmethod
    @torch.no_grad()
    def policy_probe(policy, ids: list[int]) -> torch.Tensor:
        """The trainer's log-prob of each probe token given the previous ones (temperature 1).  # (T-1,)"""
        model = policy.build()
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()  # no dropout: the engine has none
        try:
            logp, _ = policy.token_logprobs(torch.tensor([ids], device=device))
        finally:
            model.train(was_training)
        return logp[0].float().cpu()

    def forget_engine(self) -> None:
        """Drop the stored probes: the next push has nothing to compare the engine's movement with."""
        self._last_policy_probe = self._last_engine_probe = None

    # ---------------------------------------------------------------- verification
    def check_sync(self, engine: Any, policy: Any, info: dict[str, Any]) -> dict[str, float]:
        """Verify (when due) the push ``info`` describes; returns the numbers to log. Raises on a failed sync.

        Callable without a trainer (what :meth:`on_engine_sync` runs after its bookkeeping)."""
        step = info.get("step", "?")
        stats = {"vllm/refresh_s": float(info.get("seconds", 0.0)), "vllm/refresh_bytes": float(info.get("bytes", 0)),
                 "vllm/refresh_tensors": float(info.get("tensors", 0))}
        if "policy_version" in info:
            stats["vllm/policy_version"] = float(info["policy_version"])
        if self.verify != "off" and self.pushes % self.verify_every_n == 0:
            t0 = time.perf_counter()
            atol = self.tolerance(engine, policy)
            if self.verify == "probe":
                stats.update(self._verify_probe(engine, policy, atol, info, step))
            else:
                stats.update(self._verify_checksum(engine, policy, atol, info, step))
            stats["vllm/verify_s"] = time.perf_counter() - t0
        else:  # the stored probes no longer describe the engine: the next verification starts afresh
            self.forget_engine()
        self.pushes += 1
        if isinstance(step, int):
            self.last_pushed_step = step
        self.last_stats = stats
        return stats

    def _verify_probe(self, engine, policy, atol, info, step) -> dict[str, float]:
        ids = self.probe_ids(policy.tokenizer)
        post = torch.tensor(engine.probe_logprobs(ids))
        ours = self.policy_probe(policy, ids)
        pre, last_ours = self._last_engine_probe, self._last_policy_probe
        if pre is not None and len(pre) != len(post):  # probe_text changed: nothing to compare with
            pre = last_ours = None
        diff = float((post - ours).abs().max())
        engine_delta = None if pre is None else float((post - pre).abs().max())
        policy_delta = None if last_ours is None else float((ours - last_ours).abs().max())
        n = int(info.get("tensors", 0))
        if not diff <= atol:  # also catches NaN
            stale = (pre is not None and float((pre - last_ours).abs().max()) <= atol
                     and engine_delta < _UNCHANGED)
            moved = "" if engine_delta is None else f"the push moved the engine by {engine_delta:.3g}; "
            raise RuntimeError(
                f"vLLM weight sync failed at step {step}: pushed {n} params, but the engine's log-probs of the "
                f"probe differ from the policy's by max |dlogp| = {diff:.3g} > atol = {atol:.3g} "
                + ("(the engine did not change: it still samples from the old weights)" if stale else
                   f"({moved}its weights are corrupted or incomplete)")
                + ". Rollouts would come from the wrong policy."
            )
        # a move well above float noise (atol / 100) must change the engine at all; smaller ones may vanish
        # in a bf16 engine's rounding of fp32 master weights
        if policy_delta is not None and policy_delta > atol / 100 and engine_delta < _UNCHANGED:
            raise RuntimeError(
                f"vLLM weight sync failed at step {step}: pushed {n} params, the policy moved by max |dlogp| = "
                f"{policy_delta:.3g} since the last push but the engine did not change at all (max |dlogp| = "
                f"{engine_delta:.3g}): the refresh was a no-op."
            )
        self._last_policy_probe, self._last_engine_probe = ours, post
        stats = {"vllm/probe_max_abs_diff": diff, "vllm/probe_mean_abs_diff": float((post - ours).abs().mean())}
        if engine_delta is not None:
            stats["vllm/probe_engine_delta"] = engine_delta
        return stats

    def _verify_checksum(self, engine, policy, atol, info, step) -> dict[str, float]:
        res = engine.engine_param_checksum(policy)
        if res["compared"] == 0:
            raise RuntimeError("verify='checksum': the engine exposes no readable parameters; use verify='probe'")
        if not res["max_rel_diff"] <= atol:
            raise RuntimeError(
                f"vLLM weight sync failed at step {step}: pushed {int(info.get('tensors', 0))} params, but the sum "
                f"of {res['worst']} differs from the policy's by {res['max_rel_diff']:.3g} (relative) > atol = "
                f"{atol:.3g} ({res['compared']} parameters compared, {res['skipped']} not readable)"
            )
        return {"vllm/checksum_max_rel_diff": float(res["max_rel_diff"])}

    # ---------------------------------------------------------------- hooks
    def on_engine_sync(self, trainer: Optional[pl.Trainer], pl_module: Any, info: dict[str, Any]) -> None:
        """Called by the module right after each push (see the module docstring for ``info``)."""
        engine = pl_module.engine
        if self._engine_id != id(engine) or info.get("reason") == "start":
            # another engine, or a new fit: the stored probes describe neither this engine nor a resumed policy
            self._engine_id = id(engine)
            self.forget_engine()
        self.last_info = dict(info)
        # the trainer's probe computes as training does (bf16-mixed: autocast; Lightning sets none outside the step)
        plugin = getattr(trainer, "precision_plugin", None)
        with plugin.forward_context() if plugin is not None else contextlib.nullcontext():
            stats = self.check_sync(engine, pl_module.policy, info)
        self._engine_updates = getattr(engine, "num_updates", None)
        step = info.get("step")
        if _can_log_on_step(pl_module):
            for name, value in stats.items():
                pl_module.log(name, float(value), on_step=True, on_epoch=False, batch_size=1)
        elif trainer is not None and trainer.logger is not None:
            trainer.logger.log_metrics(stats, step=int(step if step is not None else trainer.global_step))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._engine_id = None  # the fit's first push (made after this hook) begins a new comparison chain
        self.forget_engine()
        self._warned_unreported = False
        engine = getattr(pl_module, "engine", None)  # one that exists already may have been pushed to before
        self._baseline = (id(engine), getattr(engine, "num_updates", 0)) if engine is not None else None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # a push that never reached on_engine_sync was not verified: say so once instead of staying silent
        engine = getattr(pl_module, "engine", None)
        updates = getattr(engine, "num_updates", None)
        if self._warned_unreported or not isinstance(updates, int) or not getattr(engine, "holds_weights", False):
            return
        if self._engine_id == id(engine) and self._engine_updates is not None:
            reported = self._engine_updates
        elif self._baseline is not None and self._baseline[0] == id(engine):
            reported = self._baseline[1]
        else:
            reported = 0  # created during this fit (start-up is not a push)
        if updates > reported:
            self._warned_unreported = True
            log.warning("VLLMRolloutRefresh: the rollout engine received %d weight push(es) that were not reported "
                        "through on_engine_sync; they were not verified", updates - reported)

    def state_dict(self) -> dict[str, Any]:
        return {"last_pushed_step": self.last_pushed_step, "pushes": self.pushes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_pushed_step = state_dict.get("last_pushed_step")
        self.pushes = int(state_dict.get("pushes", 0))
