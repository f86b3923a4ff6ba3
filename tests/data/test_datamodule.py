"""DataModules: which tokens the SFT loss sees, packing, prompt batches for RL, clear configuration
errors, and a resumed fit that continues the data exactly where the interrupted one stopped."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from r1lightning.data import PromptDataModule, SFTDataModule
from r1lightning.data.templates import render_prompt

EOS = "<|end|>"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _targets(batch, i):
    """Decoded target tokens of row i that the loss covers (loss_mask aligns with input_ids[:, 1:])."""
    return batch["input_ids"][i, 1:][batch["loss_mask"][i].bool()]


PC_ROWS = [
    {"prompt": "Compute 12+30.", "completion": "<think>12+30=42</think><answer>\\boxed{42}</answer>", "answer": "42"},
    {"prompt": "Compute 5+6+7.", "completion": "<think>5+6=11, 11+7=18</think><answer>\\boxed{18}</answer>",
     "answer": "18"},
]


# ---------------------------------------------------------------------------------------------
# SFT: the loss mask


@pytest.mark.parametrize("template", ["chat", "r1_zero"])
def test_prompt_completion_mask_covers_exactly_the_completion_and_eos(tmp_path, tiny_tokenizer, template):
    tok = tiny_tokenizer
    dm = SFTDataModule(train_data=_jsonl(tmp_path / "d.jsonl", PC_ROWS), template=template, tokenizer=tok,
                       batch_size=2, max_length=512)
    dm.setup("fit")
    batch = dm.collate([dm.train_set[0], dm.train_set[1]])  # rows of different length: right padding
    assert batch["loss_mask"].shape == (2, batch["input_ids"].shape[1] - 1)
    for i, row in enumerate(PC_ROWS):
        assert tok.decode(_targets(batch, i)) == row["completion"] + EOS
        # everything before the completion is the rendered prompt, and none of it is a target
        real = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        n_prompt = len(real) - int(batch["loss_mask"][i].sum())
        assert tok.decode(real[:n_prompt]) == render_prompt(row["prompt"], template, tok)
        assert not batch["loss_mask"][i, : n_prompt - 1].any()
        assert batch["loss_mask"][i, n_prompt - 1 : len(real) - 1].all()
        assert not batch["loss_mask"][i, len(real) - 1 :].any()  # padding is never a target


def test_chat_messages_mask_only_assistant_turns(tmp_path, tiny_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Compute 1+2."},
        {"role": "assistant", "content": "<think>1+2=3</think><answer>\\boxed{3}</answer>"},
        {"role": "user", "content": "And 3+4?"},
        {"role": "assistant", "content": "<answer>\\boxed{7}</answer>"},
    ]
    dm = SFTDataModule(train_data=_jsonl(tmp_path / "m.jsonl", [{"messages": messages}]), messages_column="messages",
                       tokenizer=tiny_tokenizer, batch_size=1)
    dm.setup("fit")
    batch = dm.collate([dm.train_set[0]])
    ids = batch["input_ids"][0]
    assert tiny_tokenizer.decode(ids) == tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    want = messages[2]["content"] + EOS + messages[4]["content"] + EOS
    assert tiny_tokenizer.decode(_targets(batch, 0)) == want
    # the masked tokens form exactly two runs, one per assistant turn
    m = batch["loss_mask"][0].tolist()
    assert sum(1 for a, b in zip([0] + m, m) if b and not a) == 2


# ---------------------------------------------------------------------------------------------
# SFT: packing and truncation


def test_packing(tiny_tokenizer):
    kwargs = dict(train_data="synthetic:arithmetic?n=40&seed=1", tokenizer=tiny_tokenizer, batch_size=4,
                  max_length=96)
    plain = SFTDataModule(**kwargs)
    plain.setup("fit")
    packed = SFTDataModule(packing=True, **kwargs)
    packed.setup("fit")
    examples = plain.train_set.items
    rows = packed.train_set.items
    assert len(rows) < len(examples)
    assert all(len(r["input_ids"]) <= 96 for r in rows)
    # greedy packing in data order: the packed rows are the examples concatenated
    assert sum((r["input_ids"] for r in rows), []) == sum((e["input_ids"] for e in examples), [])

    starts = [p for r in rows for p, pos in enumerate(r["position_ids"]) if pos == 0]
    assert len(starts) == len(examples)  # position ids restart once per example...
    flat_pos = sum((r["position_ids"] for r in rows), [])
    assert flat_pos == sum((list(range(len(e["input_ids"]))) for e in examples), [])  # ...counting its tokens
    for r in rows:  # the first token of every packed example is never a target
        assert all(r["loss_mask"][p] == 0 for p, pos in enumerate(r["position_ids"]) if pos == 0)

    # Target count: position 0 of an example has no context in its row. Unpacked, the collator drops
    # it (loss_mask = mask[:, 1:]); packed, _pack zeroes it. Both count sum(mask[1:]) per example --
    # here equal to sum(mask), since every example starts with a prompt token.
    n_plain = int(plain.collate(examples)["loss_mask"].sum())
    batch = packed.collate(rows)
    assert n_plain == sum(sum(e["loss_mask"][1:]) for e in examples) == sum(sum(e["loss_mask"]) for e in examples)
    assert int(batch["loss_mask"].sum()) == n_plain
    # and the targets are the same tokens: every completion followed by eos
    want = "".join(tiny_tokenizer.decode(_targets(plain.collate([e]), 0)) for e in examples)
    assert "".join(tiny_tokenizer.decode(_targets(batch, i)) for i in range(len(rows))) == want
    # packed batches carry restarting position ids instead of an attention mask
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape


def test_truncation_is_counted(tmp_path, tiny_tokenizer):
    rows = PC_ROWS + [{"prompt": "Compute 1+1.", "completion": "<think>" + "1+1=2, " * 40 + "</think>", "answer": "2"}]
    dm = SFTDataModule(train_data=_jsonl(tmp_path / "d.jsonl", rows), tokenizer=tiny_tokenizer, max_length=48)
    dm.setup("fit")
    assert dm.truncated == 1
    assert sorted(len(e["input_ids"]) for e in dm.train_set.items)[-1] == 48
    assert len(dm.train_set) == 3


# ---------------------------------------------------------------------------------------------
# SFT: configuration errors name the option


def test_missing_column_names_option_and_column(tmp_path, tiny_tokenizer):
    dm = SFTDataModule(train_data=_jsonl(tmp_path / "d.jsonl", PC_ROWS), prompt_column="question",
                       tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match=r"no column 'question' \(option prompt_column\); columns are \['answer'"):
        dm.setup("fit")
    dm = SFTDataModule(train_data=_jsonl(tmp_path / "d.jsonl", PC_ROWS), messages_column="messages",
                       tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match=r"no column 'messages' \(option messages_column\)"):
        dm.setup("fit")


def test_empty_data_file(tmp_path, tiny_tokenizer):
    (tmp_path / "empty.jsonl").write_text("")
    dm = SFTDataModule(train_data=str(tmp_path / "empty.jsonl"), tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match=r"data source '.*empty\.jsonl' is empty"):
        dm.setup("fit")


def test_chat_template_required(tmp_path, tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    dm = SFTDataModule(train_data=_jsonl(tmp_path / "d.jsonl", PC_ROWS), template="chat", tokenizer=tok)
    with pytest.raises(ValueError, match="template='chat' but the tokenizer .* has no chat_template; use template='r1_zero'"):
        dm.setup("fit")
    SFTDataModule(train_data=_jsonl(tmp_path / "d.jsonl", PC_ROWS), template="r1_zero", tokenizer=tok).setup("fit")


def test_unknown_template():
    with pytest.raises(ValueError, match=r"template='fancy': expected one of \('r1_zero', 'chat', 'plain'\)"):
        SFTDataModule(template="fancy")
    with pytest.raises(ValueError, match=r"template='fancy'"):
        PromptDataModule(template="fancy")


def test_format_string_template(tmp_path, tiny_tokenizer):
    dm = SFTDataModule(train_data=_jsonl(tmp_path / "d.jsonl", PC_ROWS), template="Q: {prompt}\nA:",
                       tokenizer=tiny_tokenizer)
    dm.setup("fit")
    ex = dm.train_set[0]
    n_prompt = ex["loss_mask"].index(1)
    assert tiny_tokenizer.decode(ex["input_ids"][:n_prompt]) == "Q: Compute 12+30.\nA:"


def test_validation_rows_keep_prompt_and_answer(tmp_path, tiny_tokenizer):
    dm = SFTDataModule(train_data=_jsonl(tmp_path / "d.jsonl", PC_ROWS), val_data=_jsonl(tmp_path / "v.jsonl", PC_ROWS),
                       tokenizer=tiny_tokenizer, val_batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["answer"] == ["42", "18"]
    assert tiny_tokenizer.decode(batch["prompt_ids"][1]) == render_prompt(PC_ROWS[1]["prompt"], "chat", tiny_tokenizer)
    assert "prompt_ids" not in dm.train_set[0]  # training rows carry tokens only


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_evaluation_stages_load_the_held_out_rows(tmp_path, tiny_tokenizer, stage):
    dm = SFTDataModule(train_data=_jsonl(tmp_path / "d.jsonl", PC_ROWS), val_data=_jsonl(tmp_path / "v.jsonl", PC_ROWS),
                       tokenizer=tiny_tokenizer)
    dm.setup(stage)
    assert dm.train_set is None  # training rows are only tokenised for fit
    loader = {"validate": dm.val_dataloader, "test": dm.test_dataloader, "predict": dm.predict_dataloader}[stage]()
    assert [len(b["prompt_ids"]) for b in loader] == [2]


# ---------------------------------------------------------------------------------------------
# RL prompts


def test_prompt_batches(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "Compute 1+2.", "answer": "3", "language": "en"},
            {"prompt": "Compute 10+20+30.", "answer": "60", "language": "en"}]
    dm = PromptDataModule(train_data=_jsonl(tmp_path / "p.jsonl", rows), tokenizer=tiny_tokenizer, batch_size=2,
                          seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"prompt_ids", "prompt_text", "columns"}
    assert set(batch["columns"]) == {"answer", "language"}  # every other column, as lists
    by_answer = dict(zip(batch["columns"]["answer"], zip(batch["prompt_text"], batch["prompt_ids"])))
    assert set(by_answer) == {"3", "60"}
    for row in rows:
        text, ids = by_answer[row["answer"]]
        assert text == render_prompt(row["prompt"], "chat", tiny_tokenizer)
        assert text.endswith("<|assistant|>")  # generation starts right after the prompt
        assert tiny_tokenizer.decode(ids) == text


def test_max_prompt_length_drops_long_prompts(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "Compute 1+2.", "answer": "3"}, {"prompt": "Compute " + "+".join(["12"] * 30) + ".", "answer": "360"}]
    dm = PromptDataModule(train_data=_jsonl(tmp_path / "p.jsonl", rows), tokenizer=tiny_tokenizer, max_prompt_length=32)
    dm.setup("fit")
    assert dm.dropped == 1
    assert [x["columns"]["answer"] for x in dm.train_set.items] == ["3"]
    dm = PromptDataModule(train_data=_jsonl(tmp_path / "p.jsonl", rows[1:]), tokenizer=tiny_tokenizer,
                          max_prompt_length=32)
    with pytest.raises(ValueError, match="no prompt fits max_prompt_length=32"):
        dm.setup("fit")


def test_answer_column_is_passed_as_answer(tmp_path, tiny_tokenizer):
    rows = [{"question": "Compute 1+2.", "solution": "3"}]
    dm = PromptDataModule(train_data=_jsonl(tmp_path / "p.jsonl", rows), prompt_column="question",
                          answer_column="solution", tokenizer=tiny_tokenizer, batch_size=1)
    dm.setup("fit")
    batch = dm.collate(dm.train_set.items)
    assert batch["columns"] == {"answer": ["3"], "solution": ["3"]}
    assert "Compute 1+2." in batch["prompt_text"][0]
    with pytest.raises(ValueError, match=r"no column 'answer' \(option answer_column\)"):
        PromptDataModule(train_data=_jsonl(tmp_path / "p.jsonl", rows), prompt_column="question",
                         tokenizer=tiny_tokenizer).setup("fit")


# ---------------------------------------------------------------------------------------------
# resuming: the data continues where it stopped


def test_resumed_fit_sees_the_remaining_batches(tmp_path, tiny_tokenizer):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    from r1lightning.modules import SFTModule
    from r1lightning.policy import PolicyConfig, TinyModelSettings

    class RecordBatches(Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(batch["input_ids"].clone())

    small = TinyModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)

    def run(max_steps, ckpt_path=None, checkpoint_every=None):
        pl.seed_everything(0)
        # a constant LR: a schedule over max_steps would differ between the 3- and the 6-step run
        module = SFTModule(PolicyConfig(tiny=small), lr=1e-3, lr_schedule="constant", export_dir="none")
        # 16 rows / batch 4 = 4 batches an epoch: stopping after 3 and running to 6 crosses an epoch
        data = SFTDataModule(train_data="synthetic:arithmetic?n=16&seed=4", tokenizer=tiny_tokenizer,
                             batch_size=4, max_length=64, seed=3)
        rec = RecordBatches()
        callbacks = [rec]
        if checkpoint_every:
            callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=checkpoint_every,
                                             save_top_k=-1))
        trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             enable_checkpointing=bool(checkpoint_every), callbacks=callbacks,
                             default_root_dir=tmp_path)
        trainer.fit(module, data, ckpt_path=ckpt_path)
        return rec.seen, module

    full, full_module = run(6)
    assert len(full) == 6
    assert not torch.equal(full[0], full[4])  # the second epoch is reshuffled
    first, _ = run(3, checkpoint_every=3)
    assert all(torch.equal(a, b) for a, b in zip(first, full[:3]))
    (ckpt,) = (tmp_path / "ckpt").glob("*step=3.ckpt")
    resumed, resumed_module = run(6, ckpt_path=str(ckpt))
    assert len(resumed) == 3
    for a, b in zip(resumed, full[3:]):
        assert torch.equal(a, b)
    # same data in the same order from the same state: the same weights
    for (name, p), q in zip(full_module.named_parameters(), resumed_module.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


def test_sampler_skip_continues_the_same_permutation():
    from r1lightning.data.datamodule import ResumableRandomSampler

    s = ResumableRandomSampler(10, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.skip = 4
    assert len(s) == 10  # Lightning sizes every epoch from this, so a pending skip must not shrink it
    assert list(s) == full[4:]
    assert list(s) == full  # the skip applies to one pass only
    s.set_epoch(3)
    assert sorted(s) == list(range(10)) and list(s) != full


def test_sampler_shards_by_rank_and_skips_each_ranks_consumed_share():
    from r1lightning.data.datamodule import ResumableRandomSampler

    # 2 ranks, 12 samples: each rank sees every other index of the epoch's permutation
    ranks = [ResumableRandomSampler(12, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    shards = [list(s) for s in ranks]
    assert sorted(shards[0] + shards[1]) == list(range(12)) and len(shards[0]) == 6
    # 2 batches of 2 per rank were consumed before the interruption: 8 global samples
    for s, full in zip(ranks, shards):
        s.skip = 8
        assert list(s) == full[4:]  # each rank drops its own 4, not 8
