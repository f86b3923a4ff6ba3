"""Data is checked at load, every row: missing / null answers, columns present only on some rows, and prompts
that leave no room for generation within the model's positions."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from r1lightning.data import PromptDataModule, SFTDataModule


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _prompt_dm(tmp_path, rows, **kw):
    return PromptDataModule(train_data=_jsonl(tmp_path / "p.jsonl", rows), tokenizer=kw.pop("tokenizer"), **kw)


def test_null_answers_are_dropped_and_counted(tmp_path, tiny_tokenizer, caplog):
    rows = [{"prompt": f"Compute {i}+1.", "answer": str(i + 1) if i % 2 else None} for i in range(10)]
    dm = _prompt_dm(tmp_path, rows, tokenizer=tiny_tokenizer)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert dm.no_answer == 5  # rows 0, 2, 4, 6, 8
    assert sorted(x["columns"]["answer"] for x in dm.train_set.items) == ["10", "2", "4", "6", "8"]
    assert "5 of 10 rows" in caplog.text and "'answer'" in caplog.text


def test_answer_key_on_some_rows_only_is_handled_like_null(tmp_path, tiny_tokenizer):
    # the first row has the key, so the old first-row check passed; rows 1 and 3 then crashed or scored 0
    rows = [{"prompt": "Compute 1+1.", "answer": "2"}, {"prompt": "Compute 2+2."},
            {"prompt": "Compute 3+3.", "answer": "6"}, {"prompt": "Compute 4+4."}]
    dm = _prompt_dm(tmp_path, rows, tokenizer=tiny_tokenizer)
    dm.setup("fit")
    assert dm.no_answer == 2 and len(dm.train_set) == 2
    # and the other way round: the first row lacks it
    dm = _prompt_dm(tmp_path, rows[1:], tokenizer=tiny_tokenizer)
    dm.setup("fit")
    assert dm.no_answer == 2 and [x["columns"]["answer"] for x in dm.train_set.items] == ["6"]


@pytest.mark.parametrize("rows, what", [
    ([{"prompt": "Compute 1+1.", "answer": None}] * 3, r"column 'answer' \(option answer_column\) is null or empty in every"),
    ([{"prompt": "Compute 1+1.", "solution": "2"}] * 3, r"has no column 'answer' \(option answer_column\)"),
])
def test_no_answer_anywhere_is_refused(tmp_path, tiny_tokenizer, rows, what):
    dm = _prompt_dm(tmp_path, rows, tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match=what):
        dm.setup("fit")


def test_answer_column_none_keeps_every_row(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "Compute 1+1."}, {"prompt": "Compute 2+2.", "answer": None}]
    dm = _prompt_dm(tmp_path, rows, tokenizer=tiny_tokenizer, answer_column=None)
    dm.setup("fit")
    assert len(dm.train_set) == 2


def test_prompt_missing_on_a_later_row_names_the_row(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "Compute 1+1.", "answer": "2"}, {"question": "Compute 2+2.", "answer": "4"}]
    dm = _prompt_dm(tmp_path, rows, tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match=r"1 of 2 rows have no column 'prompt' \(option prompt_column\), the first is row 1"):
        dm.setup("fit")


def test_sft_completion_missing_on_a_later_row_is_refused(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "Compute 1+1.", "completion": "2"}, {"prompt": "Compute 2+2."}]
    dm = SFTDataModule(train_data=_jsonl(tmp_path / "d.jsonl", rows), tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match=r"1 of 2 rows have no column 'completion'"):
        dm.setup("fit")


class _Trainer(SimpleNamespace):
    """Just what the DataModule reads from a Trainer: the module (policy, sampling) and the callbacks."""


def _attach(dm, max_positions, max_new_tokens, milestones=None, tokenizer=None):
    policy = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=max_positions)),
                             tokenizer=tokenizer)
    module = SimpleNamespace(policy=policy, sampling=SimpleNamespace(max_new_tokens=max_new_tokens),
                             eval_sampling=SimpleNamespace(max_new_tokens=max_new_tokens))
    callbacks = [SimpleNamespace(milestones=milestones)] if milestones else []
    dm.trainer = _Trainer(lightning_module=module, callbacks=callbacks, world_size=1, global_rank=0, current_epoch=0,
                          training=False)
    return dm


def _lengths(tok, rows):
    from r1lightning.data.templates import render_prompt

    return [len(tok(render_prompt(r["prompt"], "chat", tok))["input_ids"]) for r in rows]


ROWS = [{"prompt": "Compute 1+2.", "answer": "3"}, {"prompt": "Compute " + "+".join(["12"] * 30) + ".", "answer": "360"}]


def test_prompt_plus_generation_must_fit_the_models_positions(tmp_path, tiny_tokenizer, caplog):
    short, long = _lengths(tiny_tokenizer, ROWS)
    positions = long + 4  # the long prompt fits max_prompt_length (1024) and the model alone, not with 8 new tokens
    dm = _attach(_prompt_dm(tmp_path, ROWS, tokenizer=tiny_tokenizer), positions, 8)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert dm.dropped == 1 and [x["columns"]["answer"] for x in dm.train_set.items] == ["3"]
    assert f"the model's {positions} positions minus max_new_tokens=8" in caplog.text
    # a length schedule that later raises max_new_tokens counts with its largest value
    dm = _attach(_prompt_dm(tmp_path, ROWS, tokenizer=tiny_tokenizer), long + 16, 8, milestones=[(0, 8), (5, 32)])
    dm.setup("fit")
    assert dm.dropped == 1
    dm = _attach(_prompt_dm(tmp_path, ROWS, tokenizer=tiny_tokenizer), long + 16, 8)
    dm.setup("fit")
    assert dm.dropped == 0


def test_generation_longer_than_the_model_is_refused(tmp_path, tiny_tokenizer):
    dm = _attach(_prompt_dm(tmp_path, ROWS, tokenizer=tiny_tokenizer), 64, 64)
    with pytest.raises(ValueError, match="max_new_tokens=64 leaves no room for a prompt in the model's 64 positions"):
        dm.setup("fit")
    dm = _attach(_prompt_dm(tmp_path, ROWS, tokenizer=tiny_tokenizer), 40, 39)
    with pytest.raises(ValueError, match=r"no prompt fits max_prompt_length=1024 or the model's 40 positions"):
        dm.setup("fit")
