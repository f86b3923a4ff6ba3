"""Evaluate a policy like the DeepSeek-R1 paper: k samples per question, pass@1, cons@k, code pass rates.

    python -m r1lightning test --config configs/eval/r1_paper.yaml --model.init_args.policy.model_name_or_path PATH
    python -m r1lightning test --config configs/eval/tiny.yaml --ckpt_path lightning_logs/r1/version_0/checkpoints/last.ckpt

R1's protocol (paper §3.1 / DESIGN.md): temperature 0.6, top-p 0.95, k samples per question; pass@1 is the
mean correctness over the k samples, cons@k the correctness of the majority-voted answer. This module adds
unbiased pass@k (Chen et al. 2021), a bootstrap interval on pass@1 over questions, mean length, truncation
rate, format rate and the language consistency of the chain of thought.

What is evaluated: an HF folder (``policy.model_name_or_path``) or the policy inside any r1lightning training
checkpoint (``--ckpt_path``: SFT, GRPO or distillation; only the ``policy.*`` weights are read, the checkpoint's
policy settings are used when the config names none). Samples come from the rollout engine (vLLM where
installed, ``rollout: r1lightning.rollout.HFEngineSettings`` for transformers ``generate``); each rank samples
its exact shard of every benchmark and the metrics are gathered over ranks.

Outputs (``output_dir``, default ``<log dir>/eval``): TensorBoard scalars ``test/<benchmark>/<metric>``,
``summary.json`` (every metric, the sampling settings, the model), ``<benchmark>.samples.jsonl`` (one line per
sample: id, sample index, completion, extracted answer, score, correct, tokens, finish reason) and a markdown
table printed at the end (``python -m r1lightning.analysis table summary.json ...`` rebuilds it across runs).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from r1lightning.metrics import BenchmarkMetrics
from r1lightning.modules.base import expand_columns, reduce_over_ranks
from r1lightning.policy import Policy, PolicyConfig
from r1lightning.rollout.base import EngineSettings, RolloutEngine, SamplingSettings

log = logging.getLogger(__name__)

#: R1's evaluation protocol (paper §3.1): T 0.6, top-p 0.95, k samples, generation length 32,768.
PAPER_SAMPLING = dict(n=16, temperature=0.6, top_p=0.95, max_new_tokens=32768)


def default_engine() -> EngineSettings:
    """vLLM where it is installed, transformers ``generate`` otherwise."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        from r1lightning.rollout.vllm import VLLMEngineSettings

        return VLLMEngineSettings()
    from r1lightning.rollout.hf import HFEngineSettings

    return HFEngineSettings()


def finish_reason(truncated: bool) -> str:
    return "length" if truncated else "stop"


class EvalModule(pl.LightningModule):
    """Sampled evaluation on several benchmarks (``r1lightning.data.EvalDataModule``); no training."""

    def __init__(
        self,
        policy: Optional[PolicyConfig] = None,
        sampling: Optional[SamplingSettings] = None,
        rollout: Optional[EngineSettings] = None,
        pass_k: Optional[list[int]] = None,
        bootstrap_resamples: int = 1000,
        confidence: float = 0.95,
        output_dir: Optional[str] = "auto",
        label: Optional[str] = None,
        reward_call_timeout_s: float = 300.0,
        reward_batch_timeout_s: float = 900.0,
        answer_group_timeout_s: float = 30.0,
    ):
        """
        Args:
            policy: The model to evaluate (an HF folder, ``local_files_only``). With ``--ckpt_path`` it may be left
                out: the checkpoint's own policy settings are used and its ``policy.*`` weights loaded.
            sampling: Sampling protocol. Default R1's: n 16, temperature 0.6, top-p 0.95, 32,768 new tokens;
                ``seed`` makes the samples reproducible. Each benchmark may override ``n`` and ``max_new_tokens``.
            rollout: Engine settings (``r1lightning.rollout.VLLMEngineSettings`` / ``HFEngineSettings``);
                None = vLLM where installed, else HF ``generate``.
            pass_k: Unbiased pass@k values to report besides pass@1 (each needs k <= n), e.g. [1, 8, 16].
            bootstrap_resamples: Resamples of the questions for the pass@1 confidence interval.
            confidence: Level of that interval (0.95 = 95%).
            output_dir: Where summary.json and the per-sample jsonl files go ('auto' = <log dir>/eval; None = nowhere).
            label: Name of the evaluated model in the summary and tables (default: the path or checkpoint).
            reward_call_timeout_s: Limit of one scoring call (a batch of samples), seconds; what runs out scores 0.
            reward_batch_timeout_s: Budget of all scoring of one batch, seconds.
            answer_group_timeout_s: Budget for grouping one question's equivalent answers (cons@k) with math-verify.
        """
        super().__init__()
        self.save_hyperparameters()
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        self.policy_config = policy
        self.policy: Optional[Policy] = Policy(policy) if policy is not None else None
        self.sampling = sampling or SamplingSettings(**PAPER_SAMPLING)
        self.rollout_settings = rollout
        self.pass_k = sorted({1, *(pass_k or [])})
        self.engine: Optional[RolloutEngine] = None
        self._metrics: dict[str, BenchmarkMetrics] = {}
        self._rewards: dict[str, Any] = {}
        self._records: dict[str, list[dict]] = {}
        self._seconds: dict[str, float] = {}
        self._summary: Optional[dict] = None

    # ---------------------------------------------------------------- the model
    @property
    def eval_sampling(self) -> SamplingSettings:  # what PromptDataModule reads to bound prompt lengths
        return self.sampling

    @property
    def tokenizer(self):
        return self._policy().tokenizer

    def _policy(self) -> Policy:
        if self.policy is None:
            raise ValueError("EvalModule: no policy to evaluate; give --model.init_args.policy.model_name_or_path "
                             "(an HF folder) or --ckpt_path (an r1lightning training checkpoint)")
        return self.policy

    def configure_model(self) -> None:
        self._policy().build()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Only the policy's weights of a training checkpoint (GRPO's reference model, SFT's nothing else)."""
        own = {k: v for k, v in state_dict.items() if k.startswith("policy.")}
        if not own:
            raise ValueError("the checkpoint holds no policy.* weights: is it an r1lightning training checkpoint?")
        missing, unexpected = super().load_state_dict(own, strict=False, assign=assign)
        missing = [k for k in missing if k.startswith("policy.")]
        if strict and (missing or unexpected):
            raise RuntimeError(f"the checkpoint's policy does not match the configured one: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]} (is policy set to another model than the checkpoint's?)")
        return missing, unexpected

    def on_save_checkpoint(self, checkpoint: dict) -> None:  # pragma: no cover - evaluation saves nothing
        raise RuntimeError("EvalModule does not train and writes no checkpoints")

    # ---------------------------------------------------------------- set-up
    def _datamodule(self):
        from r1lightning.data.evaluation import EvalDataModule

        dm = self.trainer.datamodule
        if not isinstance(dm, EvalDataModule):
            raise TypeError("EvalModule evaluates r1lightning.data.EvalDataModule benchmarks; got "
                            f"{type(dm).__name__}")
        return dm

    def _start(self, prefix: str) -> None:
        from r1lightning.rewards.combine import WeightedReward

        hp = self.hparams
        self._prefix = prefix
        self._metrics, self._rewards, self._records, self._seconds = {}, {}, {}, {}
        for spec in self._datamodule().sets:
            self._metrics[spec.name] = BenchmarkMetrics(self.pass_k, votes=bool(spec.votes),
                                                        num_resamples=hp.bootstrap_resamples,
                                                        confidence=hp.confidence, seed=self.sampling.seed or 0)
            self._rewards[spec.name] = WeightedReward({spec.reward: {"weight": 1.0, **(spec.reward_kwargs or {})}},
                                                      call_timeout_s=hp.reward_call_timeout_s,
                                                      batch_timeout_s=hp.reward_batch_timeout_s,
                                                      max_consecutive_failures=None)
            self._records[spec.name] = []
            self._seconds[spec.name] = 0.0
        if self.engine is None:
            settings = self.rollout_settings or default_engine()
            self.engine = settings.build(self._policy())
        self._policy().build().eval()

    def on_test_start(self) -> None:
        self._start("test")

    def on_validation_start(self) -> None:
        self._start("val")

    def teardown(self, stage: str) -> None:
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()
        self.engine = None

    # ---------------------------------------------------------------- one batch of questions
    def _sampling_for(self, spec) -> SamplingSettings:
        import dataclasses

        changes = {}
        if spec.n is not None:
            changes["n"] = spec.n
        if spec.max_new_tokens is not None:
            changes["max_new_tokens"] = spec.max_new_tokens
        return dataclasses.replace(self.sampling, **changes) if changes else self.sampling

    @torch.no_grad()
    def evaluate_batch(self, batch: dict, dataloader_idx: int = 0) -> None:
        from r1lightning.rewards.format import format_reward
        from r1lightning.rewards.language import target_language_fraction
        from r1lightning.rewards.parsing import extract_final_answer, extract_think
        from r1lightning.rewards.voting import majority_answers

        spec = self._datamodule().sets[dataloader_idx]
        s = self._sampling_for(spec)
        t0 = time.perf_counter()
        out = self.engine.generate(batch["prompt_ids"], s)
        prompts, n = len(batch["prompt_ids"]), s.n
        columns = {k: v for k, v in batch["columns"].items() if not k.startswith("_")}
        _, per_fn = self._rewards[spec.name](out.texts, **expand_columns(columns, n))
        scores = [float(x) for x in per_fn[spec.reward]]
        correct = [x > 0.5 for x in scores]
        lengths = [len(c) for c in out.completion_ids]
        row_languages = batch["columns"].get("language") or [None] * prompts
        languages = [spec.language or row_languages[i // n] or "en" for i in range(len(out.texts))]
        answers = [extract_final_answer(t) if spec.votes else None for t in out.texts]
        lang_scores = [target_language_fraction(extract_think(t) or t, lang) for t, lang in zip(out.texts, languages)]
        per_q = [slice(q * n, (q + 1) * n) for q in range(prompts)]
        num_correct = [sum(correct[rows]) for rows in per_q]
        votes = []
        if spec.votes:  # equivalent answers vote together; a group is right when a member was scored right
            won = majority_answers([answers[rows] for rows in per_q], [correct[rows] for rows in per_q],
                                   timeout_s=self.hparams.answer_group_timeout_s)
            votes = [float(ok) for _, ok in won]
        self._metrics[spec.name].update(
            torch.tensor(num_correct), torch.full((prompts,), n), torch.tensor(votes) if votes else None,
            tokens=float(sum(lengths)), truncated=float(sum(out.truncated)),
            formatted=float(sum(format_reward(out.texts))), lang_sum=float(sum(lang_scores)),
            lang_count=float(len(lang_scores)))
        ids = batch["columns"].get("id") or [None] * prompts
        for i, text in enumerate(out.texts):
            q = i // n
            self._records[spec.name].append({
                "benchmark": spec.name, "id": ids[q] if ids[q] is not None else batch["columns"]["_row"][q],
                "row": batch["columns"]["_row"][q], "sample": i % n, "completion": text, "answer": answers[i],
                "gold": (batch["columns"].get("answer") or [None] * prompts)[q], "score": scores[i],
                "correct": correct[i], "tokens": lengths[i], "finish_reason": finish_reason(out.truncated[i]),
                "language_consistency": lang_scores[i]})
        self._seconds[spec.name] += time.perf_counter() - t0

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluate_batch(batch, dataloader_idx)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluate_batch(batch, dataloader_idx)

    # ---------------------------------------------------------------- results
    def _finish(self) -> dict:
        """Metrics of every benchmark over all ranks, logged, written and printed (every rank must call it)."""
        dm = self._datamodule()
        results: dict[str, dict] = {}
        for spec in dm.sets:
            metrics = self._metrics[spec.name].compute()  # gathers the question rows of all ranks
            reward = self._rewards[spec.name]
            # wall time: the slowest rank's; failures and timeouts: all ranks'
            (seconds,) = reduce_over_ranks(self, [self._seconds[spec.name]], "max")
            failures, timeouts = reduce_over_ranks(
                self, [float(sum(reward.failures.values())), float(sum(reward.timeouts.values()))], "sum")
            metrics.update(seconds=seconds, reward_failures=failures, reward_timeouts=timeouts,
                           dropped_rows=float(dm.dropped.get(spec.name, 0)))
            results[spec.name] = metrics
            for k, v in metrics.items():
                if isinstance(v, float) and math.isfinite(v):
                    # already global: sync_dist only tells Lightning so (all ranks hold the same value)
                    self.log(f"{self._prefix}/{spec.name}/{k}", v, sync_dist=True, add_dataloader_idx=False)
        self._summary = self._summary_dict(results)
        self._write_outputs()
        return results

    def _summary_dict(self, results: dict) -> dict:
        import dataclasses

        cfg = self.policy_config
        ckpt = getattr(self.trainer, "ckpt_path", None)
        model = self.hparams.label or (str(ckpt) if ckpt else (cfg.model_name_or_path if cfg is not None else "?"))
        sets = {s.name: dataclasses.asdict(s) for s in self._datamodule().sets}
        return {"model": model, "checkpoint": str(ckpt) if ckpt else None,
                "policy": cfg.model_name_or_path if cfg is not None else None,
                "engine": type(self.engine).__name__, "sampling": dataclasses.asdict(self.sampling),
                "world_size": int(self.trainer.world_size), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "benchmarks": {name: {"settings": sets[name], "metrics": m} for name, m in results.items()}}

    def output_path(self) -> Optional[Path]:
        out = self.hparams.output_dir
        if out in (None, "", "none"):
            return None
        if out == "auto":
            base = self.trainer.log_dir or self.trainer.default_root_dir
            return Path(base, "eval")
        return Path(out)

    def _write_outputs(self) -> None:
        """Per-rank sample files, then rank 0 merges them (ordered by row and sample) and writes the summary."""
        out = self.output_path()
        if out is None:
            return
        rank, world = self.global_rank, self.trainer.world_size
        out.mkdir(parents=True, exist_ok=True)
        for name, records in self._records.items():
            with open(out / f"{name}.samples.rank{rank}.jsonl", "w", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        self.trainer.strategy.barrier("r1l_eval_samples")
        self._merge_outputs(out, world)
        self.trainer.strategy.barrier("r1l_eval_merged")

    @rank_zero_only
    def _merge_outputs(self, out: Path, world: int) -> None:
        from r1lightning.analysis import eval_table

        for name in self._records:
            rows = []
            for r in range(world):
                part = out / f"{name}.samples.rank{r}.jsonl"
                with open(part, encoding="utf-8") as f:
                    rows.extend(json.loads(line) for line in f)
                part.unlink()
            rows.sort(key=lambda x: (x["row"], x["sample"]))
            with open(out / f"{name}.samples.jsonl", "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        with open(out / "summary.json", "w", encoding="utf-8") as f:
            json.dump(self._summary, f, indent=2, ensure_ascii=False, allow_nan=True)
        print(f"\n[r1lightning] evaluation of {self._summary['model']} ({out / 'summary.json'}):\n")
        print(eval_table([self._summary], detail=True))

    def on_test_epoch_end(self) -> None:
        self._finish()

    def on_validation_epoch_end(self) -> None:
        self._finish()

    @property
    def summary(self) -> Optional[dict]:
        """The last evaluation's summary (what summary.json holds)."""
        return self._summary

    def configure_optimizers(self):  # pragma: no cover - Lightning asks only when fitting
        raise RuntimeError("EvalModule only evaluates: use `python -m r1lightning test` (or validate), not fit")

