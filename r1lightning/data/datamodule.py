"""DataModules: SFT examples (cold start, distillation traces) and RL prompts.

Both read rows from a source string (see :mod:`r1lightning.data.sources`), check the configured
columns up front, render prompts with a template (:mod:`r1lightning.data.templates`) and tokenise
once in ``setup``. The tokenizer is the policy's: taken from the LightningModule (``policy``) unless
one is passed explicitly.

Data position is part of the checkpoint: the DataModule counts the training batches it hands to the
loop and, on resume, its sampler skips what the interrupted epoch already consumed, in the same
seeded order (``state_dict`` / ``load_state_dict`` are saved by Lightning with the checkpoint).
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Optional, Union

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from r1lightning.data.sources import load_rows
from r1lightning.data.templates import check_template, render_prompt

log = logging.getLogger(__name__)


def _model_max_positions(policy) -> Optional[int]:
    """``max_position_embeddings`` of an r1lightning Policy's model, read without building it."""
    if policy is None:
        return None
    model = getattr(policy, "model", None)
    if model is not None:
        return getattr(getattr(model, "config", None), "max_position_embeddings", None)
    cfg = getattr(policy, "config", None)
    if cfg is None:
        return None
    if getattr(cfg, "model_name_or_path", None) is None:
        return getattr(getattr(cfg, "tiny", None), "max_position_embeddings", None)
    try:
        from transformers import AutoConfig

        from r1lightning.policy import resolve_path

        hf = AutoConfig.from_pretrained(str(resolve_path(cfg.model_name_or_path)), local_files_only=True,
                                        trust_remote_code=getattr(cfg, "trust_remote_code", False))
    except (OSError, ValueError):  # no local config: Policy.build reports the path itself
        return None
    return getattr(hf, "max_position_embeddings", None)


class ListDataset(Dataset):
    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class ResumableRandomSampler(DistributedSampler):
    """A seeded permutation per epoch, sharded by rank, that can start part-way through.

    ``skip`` counts *global* samples (all ranks) already consumed in the current epoch; each rank drops
    its share of them. Being a ``DistributedSampler``, Lightning uses it as is under DDP instead of
    wrapping it, so a resumed multi-rank run continues each rank's shard where it stopped.
    """

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())  # this rank's shard of the epoch's permutation
        skip, self.skip = self.skip // self.num_replicas, 0  # only the first epoch after a resume is shortened
        return iter(indices[skip:])

    # __len__ stays the full shard even while a skip is pending: Lightning reads it once per fit
    # (num_training_batches) and keeps it for later epochs; the shortened first epoch still ends on time.


def require_columns(rows: list[dict], columns: dict[str, Optional[str]], source: str) -> None:
    """Every configured column must exist in every row (named with its option and the first row lacking it)."""
    if not rows:
        raise ValueError(f"data source {source!r} is empty")
    for option, column in columns.items():
        if column is None:
            continue
        missing = [i for i, row in enumerate(rows) if column not in row]
        if len(missing) == len(rows):
            raise ValueError(
                f"data source {source!r} has no column {column!r} (option {option}); columns are {sorted(rows[0])}"
            )
        if missing:
            raise ValueError(f"data source {source!r}: {len(missing)} of {len(rows)} rows have no column {column!r} "
                             f"(option {option}), the first is row {missing[0]}")


def rows_with_value(rows: list[dict], column: str, option: str, source: str) -> tuple[list[dict], int]:
    """(rows whose ``column`` holds a value, how many were dropped). A column missing from some rows or
    null in them is the same thing to a reward: no gold value. Refused when no row has one."""
    kept = [r for r in rows if r.get(column) is not None and r.get(column) != ""]
    if not kept:
        if not any(column in r for r in rows):
            raise ValueError(f"data source {source!r} has no column {column!r} (option {option}); columns are "
                             f"{sorted(rows[0])}. Set {option} to the right column, or to null if the rewards need none.")
        raise ValueError(f"data source {source!r}: column {column!r} (option {option}) is null or empty in every row")
    return kept, len(rows) - len(kept)


class _RowsDataModule(pl.LightningDataModule):
    """Loading, tokenizer lookup, resumable sampling and the consumed-batch counter."""

    def __init__(self, train_data: Optional[Union[str, list[str]]], val_data: Optional[Union[str, list[str]]],
                 batch_size: int, val_batch_size: Optional[int], template: str, system_prompt: Optional[str],
                 num_workers: int, seed: int, tokenizer=None):
        super().__init__()
        check_template(template)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.train_data, self.val_data = train_data, val_data
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.template, self.system_prompt = template, system_prompt
        self.num_workers, self.seed = num_workers, seed
        self._tokenizer = tokenizer
        self.train_set: Optional[ListDataset] = None
        self.val_set: Optional[ListDataset] = None
        self._sampler: Optional[ResumableRandomSampler] = None
        self.consumed_batches = 0  # training batches handed to the loop in the current epoch
        self._count_epoch: Optional[int] = None
        self._resume_epoch: Optional[int] = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
            policy = getattr(module, "policy", None)
            if policy is None:
                raise RuntimeError("no tokenizer: pass tokenizer= or attach the DataModule to a Trainer with an r1lightning module")
            self._tokenizer = policy.tokenizer
        return self._tokenizer

    def render(self, prompt) -> str:
        return render_prompt(prompt, self.template, self.tokenizer, self.system_prompt)

    def encode_prompt(self, prompt) -> tuple[str, list[int]]:
        """``(text, token ids)`` of one prompt as the policy sees it: rendered with the template (and system
        prompt), special tokens added only where the template does not write them itself (``chat``)."""
        text = self.render(prompt)
        return text, self.tokenizer(text, add_special_tokens=self.template != "chat")["input_ids"]

    # to be provided by subclasses
    def _prepare(self, rows: list[dict], source: str, train: bool) -> list:
        raise NotImplementedError

    def collate(self, items: list) -> dict:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        check_template(self.template, self.tokenizer)
        if self.train_set is None and self.train_data is not None and stage == "fit":
            self.train_set = ListDataset(self._prepare(load_rows(self.train_data), self.train_data, True))
        if self.val_set is None and self.val_data is not None and stage in ("fit", "validate", "test", "predict"):
            self.val_set = ListDataset(self._prepare(load_rows(self.val_data), self.val_data, False))

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise ValueError("no training data: set data.init_args.train_data")
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        self._sampler = ResumableRandomSampler(len(self.train_set), num_replicas=world, rank=rank, seed=self.seed)
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        self._sampler.set_epoch(epoch)
        if self._resume_epoch is not None and self._resume_epoch == epoch:
            self._sampler.skip = min(self.consumed_batches * self.batch_size * world, len(self.train_set))
            self._count_epoch = epoch  # the restored count continues in this epoch
        else:
            self.consumed_batches = 0
        self._resume_epoch = None
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=self._sampler, collate_fn=self.collate,
                          num_workers=self.num_workers, drop_last=True)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False, collate_fn=self.collate,
                          num_workers=self.num_workers)

    def test_dataloader(self):
        return self.val_dataloader()

    def predict_dataloader(self):
        return self.val_dataloader()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            if self._count_epoch != self.trainer.current_epoch:  # a new epoch starts from its first batch
                self._count_epoch = self.trainer.current_epoch
                self.consumed_batches = 0
            self.consumed_batches += 1
        return batch

    def state_dict(self) -> dict:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return {"consumed_batches": self.consumed_batches, "epoch": epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed_batches = int(state.get("consumed_batches", 0))
        self._resume_epoch = int(state.get("epoch", 0))
        if state.get("seed", self.seed) != self.seed:
            log.warning("resuming with data seed %s but the checkpoint used %s: the data order changes", self.seed, state["seed"])


# ------------------------------------------------------------------------------------------------ SFT


class SFTDataModule(_RowsDataModule):
    """Supervised fine-tuning rows: chat ``messages`` or ``prompt``/``completion`` columns.

    The loss covers only assistant / completion tokens (and the eos that ends them). With
    ``packing`` several examples share one row of ``max_length`` tokens; position ids restart per
    example so attention stays inside each one (transformers derives the block-diagonal mask from
    them). Validation rows also keep the prompt and gold ``answer`` so a module can sample and score.
    """

    def __init__(
        self,
        train_data: Optional[Union[str, list[str]]] = None,
        val_data: Optional[Union[str, list[str]]] = None,
        template: str = "chat",
        prompt_column: str = "prompt",
        completion_column: str = "completion",
        messages_column: Optional[str] = None,
        answer_column: Optional[str] = "answer",
        system_prompt: Optional[str] = None,
        max_length: int = 1024,
        packing: bool = False,
        batch_size: int = 8,
        val_batch_size: Optional[int] = None,
        num_workers: int = 0,
        seed: int = 0,
        tokenizer: Any = None,
    ):
        """
        Args:
            train_data: Training rows (path, saved dataset folder, ``synthetic:...`` or ``benchmark:...``), or a list
                of such sources, concatenated (a data mixture).
            val_data: Validation rows (same forms).
            template: 'chat' (tokenizer chat template), 'r1_zero', 'plain' or a format string with {prompt}.
            prompt_column: Column with the question / prompt (prompt-completion data).
            completion_column: Column with the target completion.
            messages_column: Column with chat messages [{role, content}, ...]; when set, prompt/completion are not used.
            answer_column: Column with the gold final answer (kept for scoring samples in validation); None to ignore.
            system_prompt: System message prepended with the chat template.
            max_length: Longest tokenised example; longer ones are truncated (counted and reported).
            packing: Pack several examples into each row of max_length tokens.
            batch_size: Rows per training batch (per device).
            val_batch_size: Rows per validation batch (default batch_size).
            num_workers: DataLoader worker processes.
            seed: Seed of the shuffling order.
        """
        super().__init__(train_data, val_data, batch_size, val_batch_size, template, system_prompt, num_workers, seed,
                         tokenizer)
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.prompt_column, self.completion_column = prompt_column, completion_column
        self.messages_column, self.answer_column = messages_column, answer_column
        self.max_length, self.packing = max_length, packing
        self.truncated = 0

    def _encode_prompt_completion(self, prompt, completion: str) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        _, p = self.encode_prompt(prompt)
        c = tok(completion + tok.eos_token, add_special_tokens=False)["input_ids"]
        return p + c, [0] * len(p) + [1] * len(c)

    def _encode_messages(self, messages: list[dict], source: str) -> tuple[list[int], list[int]]:
        """Assistant-only mask from incremental renders (the template must be prefix-stable)."""
        tok = self.tokenizer
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError(f"{source!r}: column {self.messages_column!r} must hold lists of {{role, content}} messages")
        ids: list[int] = []
        mask: list[int] = []
        for i, m in enumerate(messages):
            full = tok.apply_chat_template(messages[: i + 1], tokenize=False)
            if m["role"] == "assistant":
                prefix = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            else:
                prefix = tok.apply_chat_template(messages[:i], tokenize=False) if i else ""
            done = tok.decode(ids) if ids else ""
            if not full.startswith(prefix) or not prefix.startswith(done):
                raise ValueError(
                    f"the chat template of {tok.name_or_path!r} is not prefix-stable, so assistant tokens cannot be "
                    "located; use prompt/completion columns instead of messages_column"
                )
            head = tok(prefix[len(done):], add_special_tokens=False)["input_ids"]
            body = tok(full[len(prefix):], add_special_tokens=False)["input_ids"]
            ids += head + body
            mask += [0] * len(head) + [1 if m["role"] == "assistant" else 0] * len(body)
        return ids, mask

    def _prepare(self, rows: list[dict], source: str, train: bool) -> list:
        if self.messages_column:
            require_columns(rows, {"messages_column": self.messages_column}, source)
        else:
            require_columns(rows, {"prompt_column": self.prompt_column, "completion_column": self.completion_column}, source)
        examples = []
        for row in rows:
            if self.messages_column:
                ids, mask = self._encode_messages(row[self.messages_column], source)
                prompt = None
            else:
                prompt, completion = row[self.prompt_column], row[self.completion_column]
                if not isinstance(completion, str):
                    raise ValueError(f"{source!r}: column {self.completion_column!r} must hold strings")
                ids, mask = self._encode_prompt_completion(prompt, completion)
            prompt_ids = ids[: mask.index(1)] if prompt is not None else None  # before any truncation
            if len(ids) > self.max_length:
                self.truncated += 1
                ids, mask = ids[: self.max_length], mask[: self.max_length]
            if sum(mask) == 0:
                continue  # nothing to learn from (e.g. truncated before the completion)
            ex = {"input_ids": ids, "loss_mask": mask}
            if not train and prompt is not None:
                ex["prompt_ids"] = prompt_ids
                if self.answer_column and self.answer_column in row:
                    ex["answer"] = str(row[self.answer_column])
            examples.append(ex)
        if not examples:
            raise ValueError(f"data source {source!r}: no example has completion tokens within max_length={self.max_length}")
        if self.truncated:
            log.warning("%d examples longer than max_length=%d were truncated", self.truncated, self.max_length)
        if self.packing and train:
            examples = self._pack(examples)
        return examples

    def _pack(self, examples: list[dict]) -> list[dict]:
        """Greedy packing in data order into rows of at most max_length tokens."""
        packed, cur = [], {"input_ids": [], "loss_mask": [], "position_ids": []}
        for ex in examples:
            n = len(ex["input_ids"])
            if cur["input_ids"] and len(cur["input_ids"]) + n > self.max_length:
                packed.append(cur)
                cur = {"input_ids": [], "loss_mask": [], "position_ids": []}
            cur["input_ids"] += ex["input_ids"]
            # the first token of each packed example is never a target (it has no context in its row)
            cur["loss_mask"] += [0] + ex["loss_mask"][1:]
            cur["position_ids"] += list(range(n))
        if cur["input_ids"]:
            packed.append(cur)
        return packed

    def collate(self, items: list[dict]) -> dict:
        pad = self.tokenizer.pad_token_id
        width = max(len(x["input_ids"]) for x in items)
        ids = torch.full((len(items), width), pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        attn = torch.zeros((len(items), width), dtype=torch.long)
        for i, x in enumerate(items):
            n = len(x["input_ids"])
            ids[i, :n] = torch.tensor(x["input_ids"])
            mask[i, :n] = torch.tensor(x["loss_mask"])
            attn[i, :n] = 1
        batch = {"input_ids": ids, "loss_mask": mask[:, 1:]}  # loss_mask (B, T-1) aligns with targets ids[:, 1:]
        if "position_ids" in items[0]:
            pos = torch.zeros((len(items), width), dtype=torch.long)
            for i, x in enumerate(items):
                n = len(x["position_ids"])
                pos[i, :n] = torch.tensor(x["position_ids"])
                pos[i, n:] = torch.arange(width - n)  # padding forms its own (ignored) sequence
            batch["position_ids"] = pos
        else:
            batch["attention_mask"] = attn
        if "prompt_ids" in items[0]:
            batch["prompt_ids"] = [x["prompt_ids"] for x in items]
            batch["answer"] = [x.get("answer") for x in items]
        return batch


# ------------------------------------------------------------------------------------------------ prompts


class PromptDataModule(_RowsDataModule):
    """RL prompts: each batch is ``batch_size`` questions (the trainer samples G completions of each).

    Batches carry ``prompt_ids`` (token ids of the rendered prompts), ``prompt_text`` and every other
    column of the rows as lists (``answer``, ``language``, task fields) for the reward functions.
    """

    def __init__(
        self,
        train_data: Optional[Union[str, list[str]]] = None,
        val_data: Optional[Union[str, list[str]]] = None,
        template: str = "chat",
        prompt_column: str = "prompt",
        answer_column: Optional[str] = "answer",
        system_prompt: Optional[str] = None,
        max_prompt_length: int = 1024,
        batch_size: int = 16,
        val_batch_size: Optional[int] = None,
        num_workers: int = 0,
        seed: int = 0,
        tokenizer: Any = None,
        reward_prompt_column: Optional[str] = None,
    ):
        """
        Args:
            train_data: Training prompts (path, saved dataset folder, ``synthetic:...`` or ``benchmark:...``), or a
                list of such sources, concatenated (a prompt mixture).
            val_data: Held-out prompts scored in validation (pass@1 etc.).
            template: 'chat', 'r1_zero' (DeepSeek-R1-Zero Table 1), 'plain' or a format string with {prompt}.
            prompt_column: Column with the question.
            answer_column: Column with the gold answer passed to rewards as ``answer``; None if the rewards need none.
                Rows where it is missing or null are dropped (counted and reported); none left is an error.
            system_prompt: System message prepended with the chat template.
            max_prompt_length: Prompts longer than this many tokens are dropped (counted and reported); so are
                prompts that leave fewer than max_new_tokens of the model's positions.
            batch_size: Questions per training step (per device). R1: 32 questions x 16 samples = 512 outputs.
            val_batch_size: Questions per validation batch.
            num_workers: DataLoader worker processes.
            seed: Seed of the shuffling order.
            reward_prompt_column: Also pass each row's prompt (as in the data, not rendered) to the reward
                functions as a column of this name; ``prompt`` for the ``reward_model`` reward. None (default) keeps
                the prompt out of the rewards (the ``code`` reward then needs completions that define the entry
                point themselves; given a ``prompt`` it continues the prompt instead).
        """
        super().__init__(train_data, val_data, batch_size, val_batch_size, template, system_prompt, num_workers, seed,
                         tokenizer)
        self.prompt_column, self.answer_column = prompt_column, answer_column
        self.reward_prompt_column = reward_prompt_column
        self.max_prompt_length = max_prompt_length
        self.dropped = 0  # prompts too long (max_prompt_length or the model's positions)
        self.no_answer = 0  # rows dropped for a missing / null answer

    def _prepare(self, rows: list[dict], source: str, train: bool) -> list:
        require_columns(rows, {"prompt_column": self.prompt_column}, source)
        if self.answer_column:
            rows, no_answer = rows_with_value(rows, self.answer_column, "answer_column", source)
            self.no_answer += no_answer
            if no_answer:
                log.warning("%d of %d rows of %r have no %r value (missing or null) and were dropped: the accuracy "
                            "reward could only score them 0", no_answer, no_answer + len(rows), source,
                            self.answer_column)
        positions, new_tokens = self._position_budget(train)
        if positions is not None and new_tokens >= positions:
            raise ValueError(f"max_new_tokens={new_tokens} leaves no room for a prompt in the model's {positions} "
                             "positions")
        limit = self.max_prompt_length if positions is None else min(self.max_prompt_length, positions - new_tokens)
        items = []
        dropped = 0
        for row in rows:
            text, ids = self.encode_prompt(row[self.prompt_column])
            if len(ids) > limit:
                dropped += 1
                continue
            columns = {k: v for k, v in row.items() if k != self.prompt_column}
            if self.answer_column and self.answer_column != "answer":
                columns["answer"] = row[self.answer_column]
            if self.reward_prompt_column:
                columns[self.reward_prompt_column] = row[self.prompt_column]
            items.append({"prompt_ids": ids, "prompt_text": text, "columns": columns})
        self.dropped += dropped
        why = f"max_prompt_length={self.max_prompt_length}"
        if limit < self.max_prompt_length:
            why += f" or the model's {positions} positions minus max_new_tokens={new_tokens} (= {limit} tokens)"
        if dropped:
            log.warning("%d prompts longer than %s were dropped from %r", dropped, why, source)
        if not items:
            raise ValueError(f"data source {source!r}: no prompt fits {why}")
        return items

    def _position_budget(self, train: bool) -> tuple[Optional[int], int]:
        """(the model's maximum positions or None if unknown, the longest generation to leave room for).

        Positions: the smaller of the tokenizer's ``model_max_length`` (when set) and the model config's
        ``max_position_embeddings``. Generation: the module's ``sampling.max_new_tokens`` for training
        (the largest length a GenerationLengthScheduler-like callback with ``milestones`` will reach),
        ``eval_sampling.max_new_tokens`` for validation.
        """
        candidates = []
        tok_max = getattr(self._tokenizer or self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 10**8:  # transformers' "unset" is a huge sentinel
            candidates.append(tok_max)
        trainer = self.trainer
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        model_max = _model_max_positions(getattr(module, "policy", None))
        if model_max:
            candidates.append(model_max)
        sampling = getattr(module, "sampling" if train else "eval_sampling", None)
        if sampling is None and not train:
            sampling = getattr(module, "sampling", None)
        new_tokens = int(getattr(sampling, "max_new_tokens", 0) or 0)
        if train and trainer is not None:
            for cb in trainer.callbacks:
                for _, length in getattr(cb, "milestones", None) or []:
                    new_tokens = max(new_tokens, int(length))
        return (min(candidates) if candidates else None), new_tokens

    def collate(self, items: list[dict]) -> dict:
        keys = set().union(*(x["columns"].keys() for x in items))
        return {
            "prompt_ids": [x["prompt_ids"] for x in items],
            "prompt_text": [x["prompt_text"] for x in items],
            "columns": {k: [x["columns"].get(k) for x in items] for k in sorted(keys)},
        }

