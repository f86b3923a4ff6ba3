"""Rejection sampling (DeepSeek-R1 §2.3.3, stage 3): sample k completions per prompt from a trained policy,
keep the correct, well-formatted, single-language, untruncated ones, and write them as an SFT dataset.

    python -m r1lightning predict --config configs/recipe/tiny/3a_rejection_sampling.yaml \\
        --model.init_args.policy.model_name_or_path outputs/recipe/reasoning_rl/hf_model

LightningCLI's ``predict`` subcommand: the prompts are :class:`~r1lightning.data.EvalDataModule` sets (one
reward per set, exact shards over ranks, ``limit``), sampled through the rollout engine exactly as
:class:`~r1lightning.modules.EvalModule` samples them (an HF folder, or ``--ckpt_path`` of any r1lightning
training checkpoint). The verdicts are :func:`r1lightning.rejection.filter_samples`'s.

Outputs (``output_dir``, default ``<log dir>/rejection_sampling``), written by rank 0 after every rank's part
is on disk:

- ``data.jsonl``: the kept samples, SFT-ready (``prompt``, ``completion``, ``answer``) with their provenance:
  ``source_model``, ``benchmark`` (the prompt set), ``prompt_id``, ``sample_index``, ``reward``, ``tokens``,
  ``chars``, ``language_consistency``, ``filters_passed``;
- ``samples.jsonl``: every sample with its verdict (``kept``, ``rejected_by``, ``failed``);
- ``summary.json``: kept / rejected counts by reason, overall and per prompt set, with the filters, the
  sampling settings and the source model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_only

from r1lightning.modules.evaluate import EvalModule
from r1lightning.policy import PolicyConfig
from r1lightning.rejection import RejectionFilters, filter_samples, summarize
from r1lightning.rollout.base import EngineSettings, SamplingSettings


class RejectionSamplingModule(EvalModule):
    """``predict``: k samples per prompt, filtered into an SFT dataset with provenance; no training."""

    def __init__(
        self,
        policy: Optional[PolicyConfig] = None,
        sampling: Optional[SamplingSettings] = None,
        rollout: Optional[EngineSettings] = None,
        filters: Optional[RejectionFilters] = None,
        output_dir: Optional[str] = "auto",
        label: Optional[str] = None,
        reward_call_timeout_s: float = 300.0,
        reward_batch_timeout_s: float = 900.0,
    ):
        """
        Args:
            policy: The model to sample from (an HF folder). With ``--ckpt_path`` it may be left out: the
                checkpoint's own policy settings are used and its ``policy.*`` weights loaded.
            sampling: How to sample (``n`` = k completions per prompt; R1: temperature 0.6-1.0). Each prompt set
                may override ``n`` and ``max_new_tokens``.
            rollout: Engine settings (``r1lightning.rollout.VLLMEngineSettings`` / ``HFEngineSettings``);
                None = vLLM where installed, else HF ``generate``.
            filters: Which samples survive (r1lightning.rejection.RejectionFilters; default: every check on,
                duplicates dropped, all survivors kept).
            output_dir: Where data.jsonl, samples.jsonl and summary.json go ('auto' = <log dir>/rejection_sampling).
            label: The source model's name in the provenance (default: the policy path or checkpoint).
            reward_call_timeout_s: Limit of one scoring call, seconds; what runs out scores 0 (and is rejected).
            reward_batch_timeout_s: Budget of all scoring of one batch, seconds.
        """
        super().__init__(policy=policy, sampling=sampling, rollout=rollout, output_dir=output_dir, label=label,
                         reward_call_timeout_s=reward_call_timeout_s, reward_batch_timeout_s=reward_batch_timeout_s)
        self.filters = filters or RejectionFilters()
        # EvalModule's metric settings, which this module does not expose (Lightning saved only its own arguments)
        self.hparams.update(pass_k=None, bootstrap_resamples=0, confidence=0.95, answer_group_timeout_s=30.0)

    # ---------------------------------------------------------------- sampling
    def on_predict_start(self) -> None:
        self._start("predict")

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        start = len(self._records[self._datamodule().sets[dataloader_idx].name])
        self.evaluate_batch(batch, dataloader_idx)
        records = self._records[self._datamodule().sets[dataloader_idx].name]
        prompts = batch["columns"].get("prompt") or [None] * len(batch["prompt_ids"])
        n = (len(records) - start) // max(len(batch["prompt_ids"]), 1)
        for i, record in enumerate(records[start:]):
            # the question as written in the data (the SFT stage renders it with its own template)
            record["prompt"] = prompts[i // n] if prompts[i // n] is not None else batch["prompt_text"][i // n]

    # ---------------------------------------------------------------- verdicts and files
    def output_path(self) -> Optional[Path]:
        out = self.hparams.output_dir
        if out in (None, "", "none"):
            return None
        if out == "auto":
            return Path(self.trainer.log_dir or self.trainer.default_root_dir, "rejection_sampling")
        return Path(out)

    def on_predict_epoch_end(self) -> None:
        out = self.output_path()
        if out is None:
            return
        rank, world = self.global_rank, self.trainer.world_size
        out.mkdir(parents=True, exist_ok=True)
        with open(out / f"samples.rank{rank}.jsonl", "w", encoding="utf-8") as f:
            for records in self._records.values():
                for r in records:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        self.trainer.strategy.barrier("r1l_rs_parts")
        self._merge(out, world)
        self.trainer.strategy.barrier("r1l_rs_merged")

    def _source_model(self) -> str:
        ckpt = getattr(self.trainer, "ckpt_path", None)
        cfg = self.policy_config
        return self.hparams.label or (str(ckpt) if ckpt else (cfg.model_name_or_path if cfg is not None else "?"))

    @rank_zero_only
    def _merge(self, out: Path, world: int) -> None:
        from r1lightning.rewards.format import is_well_formatted

        records = []
        for r in range(world):
            part = out / f"samples.rank{r}.jsonl"
            with open(part, encoding="utf-8") as f:
                records.extend(json.loads(line) for line in f)
            part.unlink()
        source = self._source_model()
        for r in records:
            r.update(source_model=source, prompt_id=f"{r['benchmark']}/{r['id']}", sample_index=r["sample"],
                     reward=r["score"], truncated=r["finish_reason"] == "length",
                     formatted=is_well_formatted(r["completion"]), chars=len(r["completion"]))
        kept, rejected = filter_samples(records, self.filters)
        provenance = ("source_model", "benchmark", "prompt_id", "sample_index", "reward", "tokens", "chars",
                      "language_consistency", "filters_passed")
        with open(out / "data.jsonl", "w", encoding="utf-8") as f:
            for r in kept:
                row = {"prompt": r["prompt"], "completion": r["completion"], "answer": r["gold"],
                       **{k: r[k] for k in provenance}}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
            verdicts = [{**r, "kept": True} for r in kept] + [{**r, "kept": False} for r in rejected]
            for r in sorted(verdicts, key=lambda x: (x["benchmark"], x["row"], x["sample_index"])):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        summary = {"source_model": source, **summarize(kept, rejected, self.filters),
                   "sampling": dataclasses.asdict(self.sampling), "world_size": world, "per_set": {}}
        for spec in self._datamodule().sets:
            k = [r for r in kept if r["benchmark"] == spec.name]
            rj = [r for r in rejected if r["benchmark"] == spec.name]
            summary["per_set"][spec.name] = {**summarize(k, rj), "reward": spec.reward,
                                             "sampled_accuracy": sum(r["correct"] for r in k + rj) / max(len(k + rj), 1)}
        with open(out / "summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, ensure_ascii=False)
        reasons = ", ".join(f"{k} {v}" for k, v in summary["rejected_by"].items() if v)
        print(f"[r1lightning] rejection sampling from {source}: kept {summary['kept']} of {summary['samples']} samples "
              f"({summary['prompts_with_kept']} of {summary['prompts']} prompts); rejected: {reasons or 'none'}; "
              f"-> {out / 'data.jsonl'}")
