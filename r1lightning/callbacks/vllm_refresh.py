"""Push the policy's weights into a colocated vLLM engine before each rollout, and prove it worked.

GRPO samples its G completions from pi_old, the policy *as it is now*. An engine that keeps its own
copy of the weights (``engine.holds_weights``, e.g. :class:`~r1lightning.rollout.vllm.VLLMRolloutEngine`)
samples from whatever was last pushed into it; if a push silently fails, training goes on with a
frozen or corrupted sampler and nothing crashes. Silent weight-sync failures are the most reported
problem with the peers' vLLM integrations, so this callback does not trust the push:

* the engine's log-probs of a fixed probe sequence are known from before the push (``pre``: the
  previous verified push left them; probed afresh the first time);
* after the push, the engine's (``post``) must match the trainer's own log-probs of the same tokens
  (``policy.token_logprobs`` at temperature 1) within ``atol``;
* and when the policy moved (by more than ``atol / 100``) since the last push, the engine must have
  moved too (``post != pre``): this catches a no-op refresh even when the step was too small to exceed
  ``atol`` (and in bf16, where ``atol`` has to be loose).

Either failure raises ``RuntimeError`` ("weight sync failed: ..."). ``verify="checksum"`` compares
float64 sums of the engine's readable parameters instead (on the CPU build only embeddings and norms
are readable: linear layers are repacked; see ``engine_param_checksum``); ``"off"`` only pushes.

When: in ``on_train_batch_start`` (before the step's rollout), on every rank that holds an engine,
keyed off ``trainer.global_step`` (optimizer steps) so all ranks push the same number of times. A
push happens when ``global_step // every_n_steps`` differs from the value at the last push (every
``every_n_steps`` optimizer steps; GRPO advances ``num_minibatches * mu`` steps per rollout, so a plain
``global_step % every_n_steps == 0`` could be skipped over). An engine that the module creates during
a step is built from the weights of that step and counts as pushed there. At the start of each fit
the first engine seen is pushed to unconditionally (it may hold weights from before a resume).

Logged: ``vllm/refresh_s``, ``vllm/refresh_bytes``, ``vllm/refresh_tensors``, ``vllm/verify_s``,
``vllm/probe_max_abs_diff`` / ``vllm/probe_mean_abs_diff`` (engine vs trainer) and
``vllm/probe_engine_delta`` (how far the push moved the engine). Checkpoints store the step of the
last push (the cadence survives a resume).

Tolerance (max over the probe tokens of |engine - trainer| log-prob), measured on CPU with
``benchmarks/refresh_cost.py`` on the tiny base model: fp32 1e-5 (at most 3.6e-5 during a GRPO fit),
while one optimizer step of configs/r1.yaml (lr 1e-4) moves it by about 0.5 when the push is left out;
the fp32 default ``atol=1e-3`` sits between.
bf16 engines (vLLM's bf16 kernels vs the trainer's bf16 forward with an fp32 log-softmax) differ by
0.24-0.35 nats even right after a correct push (mean over tokens 0.03), so the bf16/fp16 default is
1.0: there the match check only catches gross failures (another model's or garbage weights) and the
"engine moved" check is what catches a no-op. GPU bf16 was not measured in this repository.
``vllm/probe_mean_abs_diff`` is logged too, to watch the train/inference gap over a run.
"""

from __future__ import annotations

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


class VLLMRolloutRefresh(Callback):
    """Refresh ``pl_module.engine`` from ``pl_module.policy`` every ``every_n_steps`` optimizer steps, verified."""

    def __init__(
        self,
        every_n_steps: int = 1,
        verify: Literal["probe", "checksum", "off"] = "probe",
        atol: Optional[float] = None,
        verify_every_n: int = 1,
        probe_text: str = DEFAULT_PROBE_TEXT,
    ):
        """
        Args:
            every_n_steps: Push every N optimizer steps (1 = before every rollout; larger values sample
                from a policy up to N steps old, which GRPO's importance ratio then corrects only partly).
            verify: 'probe' (engine vs trainer log-probs of a fixed sequence, plus "the engine moved"),
                'checksum' (parameter sums; partial on the CPU build) or 'off'.
            atol: Largest allowed |engine - trainer| log-prob per probe token (None: 1e-3 for fp32,
                1.0 for bf16/fp16 policies, see above); also the relative checksum tolerance.
            verify_every_n: Verify every N-th push (1 = every push). The "engine moved" check needs the
                previous push verified too, so with N > 1 only the match check runs.
            probe_text: Text whose tokens form the probe sequence.
        """
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer, got {every_n_steps!r}")
        if isinstance(verify_every_n, bool) or not isinstance(verify_every_n, int) or verify_every_n < 1:
            raise ValueError(f"verify_every_n must be a positive integer, got {verify_every_n!r}")
        if verify not in ("probe", "checksum", "off"):
            raise ValueError(f"verify must be 'probe', 'checksum' or 'off', got {verify!r}")
        if atol is not None and not atol > 0:
            raise ValueError(f"atol must be > 0, got {atol!r}")
        self.every_n_steps = every_n_steps
        self.verify = verify
        self.atol = atol
        self.verify_every_n = verify_every_n
        self.probe_text = probe_text
        self.last_pushed_step: Optional[int] = None
        self.pushes = 0
        self.last_stats: dict[str, float] = {}
        self._engine_id: Optional[int] = None
        self._must_push = True
        self._batch_start_step = 0
        self._last_policy_probe: Optional[torch.Tensor] = None
        self._last_engine_probe: Optional[torch.Tensor] = None

    # ---------------------------------------------------------------- probe helpers
    def probe_ids(self, tokenizer) -> list[int]:
        ids = list(tokenizer(self.probe_text, add_special_tokens=False)["input_ids"])
        if tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
        return ids

    def tolerance(self, policy) -> float:
        if self.atol is not None:
            return self.atol
        dtype = next(policy.build().parameters()).dtype
        return _FP32_ATOL if dtype in (torch.float32, torch.float64) else _LOW_PRECISION_ATOL

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

    # ---------------------------------------------------------------- the refresh
    def refresh(self, pl_module: Any, step: int) -> dict[str, float]:
        """Push (and, when due, verify) now; returns the logged numbers. Raises on a failed sync."""
        engine, policy = pl_module.engine, pl_module.policy
        do_verify = self.verify != "off" and self.pushes % self.verify_every_n == 0
        ids = self.probe_ids(policy.tokenizer) if do_verify and self.verify == "probe" else None
        pre = None
        if ids is not None:
            # the engine's probe as the last verified push left it; probed afresh only the first time (a fresh
            # probe would also wake a sleeping GPU engine just to read weights that are about to be replaced)
            pre = self._last_engine_probe
            if pre is None or len(pre) != len(ids) - 1:
                pre = torch.tensor(engine.probe_logprobs(ids))

        info = engine.update_weights(policy)
        stats = {"vllm/refresh_s": float(info.get("seconds", 0.0)), "vllm/refresh_bytes": float(info.get("bytes", 0)),
                 "vllm/refresh_tensors": float(info.get("tensors", 0))}
        if do_verify:
            t0 = time.perf_counter()
            atol = self.tolerance(policy)
            if self.verify == "probe":
                stats.update(self._verify_probe(engine, policy, ids, pre, atol, info, step))
            else:
                stats.update(self._verify_checksum(engine, policy, atol, info, step))
            stats["vllm/verify_s"] = time.perf_counter() - t0
        else:  # the stored probes no longer describe the engine: the next verification probes afresh
            self._last_policy_probe = self._last_engine_probe = None
        self.last_pushed_step = step
        self.pushes += 1
        self.last_stats = stats
        return stats

    def _verify_probe(self, engine, policy, ids, pre, atol, info, step) -> dict[str, float]:
        post = torch.tensor(engine.probe_logprobs(ids))
        ours = self.policy_probe(policy, ids)
        diff = float((post - ours).abs().max())
        engine_delta = float((post - pre).abs().max())
        policy_delta = None if self._last_policy_probe is None else float((ours - self._last_policy_probe).abs().max())
        n = int(info.get("tensors", 0))
        if not diff <= atol:  # also catches NaN
            stale = policy_delta is not None and float((pre - self._last_policy_probe).abs().max()) <= atol \
                and engine_delta < _UNCHANGED
            raise RuntimeError(
                f"vLLM weight sync failed at step {step}: pushed {n} params, but the engine's log-probs of the "
                f"probe differ from the policy's by max |dlogp| = {diff:.3g} > atol = {atol:.3g} "
                + ("(the engine did not change: it still samples from the old weights)" if stale else
                   f"(the push moved the engine by {engine_delta:.3g}; its weights are corrupted or incomplete)")
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
        return {"vllm/probe_max_abs_diff": diff, "vllm/probe_mean_abs_diff": float((post - ours).abs().mean()),
                "vllm/probe_engine_delta": engine_delta}

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

    # ---------------------------------------------------------------- Lightning hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._must_push = True  # an engine alive from before (e.g. a previous fit) may hold other weights
        self._engine_id = None
        self._last_policy_probe = self._last_engine_probe = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = int(trainer.global_step)
        self._batch_start_step = step
        engine = getattr(pl_module, "engine", None)
        if engine is None or not getattr(engine, "holds_weights", False):
            return
        if self._engine_id != id(engine):
            self._engine_id = id(engine)
            self._must_push = True
            self._last_policy_probe = self._last_engine_probe = None
        due = (self.last_pushed_step is None
               or step // self.every_n_steps != self.last_pushed_step // self.every_n_steps)
        if not (self._must_push or due):
            return
        self._must_push = False
        stats = self.refresh(pl_module, step)
        for name, value in stats.items():
            pl_module.log(name, float(value), on_step=True, on_epoch=False, batch_size=1)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        engine = getattr(pl_module, "engine", None)
        if engine is not None and getattr(engine, "holds_weights", False) and self._engine_id != id(engine):
            # created during this step's rollout, from the weights the step started with
            self._engine_id = id(engine)
            self._must_push = False
            self.last_pushed_step = self._batch_start_step
            self._last_policy_probe = self._last_engine_probe = None

    def state_dict(self) -> dict[str, Any]:
        return {"last_pushed_step": self.last_pushed_step, "pushes": self.pushes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_pushed_step = state_dict.get("last_pushed_step")
        self.pushes = int(state_dict.get("pushes", 0))
