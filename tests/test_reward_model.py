"""R1 stage 4: the Bradley-Terry loss by hand and against a naive loop, pairwise accuracy, the reward model's
scores (batched = one by one, left / right padding, the HF head's own pooling), the reward_model reward
(normalisation, routing by reward_kind, garbage in, loading errors), preference data and mixed prompts, and a
short `python -m r1lightning fit` of RewardModelModule that must beat chance on held-out pairs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1lightning.data import PreferenceDataModule, PromptDataModule
from r1lightning.data.preferences import generate_mixed_prompts, generate_preferences, read_preference_rows
from r1lightning.modules import RewardModel, RewardModelModule
from r1lightning.modules.reward_model import bradley_terry_loss, pairwise_accuracy
from r1lightning.policy import PolicyConfig, TinyModelSettings
from r1lightning.rewards import RewardConfigError, WeightedReward
from r1lightning.rewards import reward_model as rm

ROOT = Path(__file__).resolve().parents[1]
SMALL = TinyModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# the loss


def test_bradley_terry_hand_computed():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    loss, stats = bradley_terry_loss(chosen, rejected)
    # -log sigmoid(2) = log(1 + e^-2) = 0.1269280; -log sigmoid(0) = ln 2 = 0.6931472; mean = 0.4100376
    assert float(loss) == pytest.approx(0.4100376, abs=1e-6)
    assert float(stats["margin"]) == pytest.approx(1.0)  # (2 + 0) / 2
    assert float(stats["accuracy"]) == pytest.approx(0.75)  # one right, one tie (1/2)
    assert float(stats["chosen"]) == pytest.approx(1.0) and float(stats["rejected"]) == 0.0
    # margin 1: -log sigmoid(1) = 0.3132617, -log sigmoid(-1) = 1.3132617; mean = 0.8132617
    loss, _ = bradley_terry_loss(chosen, rejected, margin=1.0)
    assert float(loss) == pytest.approx(0.8132617, abs=1e-6)
    # centering 0.1: + 0.1 * mean((2 + 0)^2, (0 + 0)^2) = 0.1 * 2 = 0.2
    loss, stats = bradley_terry_loss(chosen, rejected, center_coef=0.1)
    assert float(loss) == pytest.approx(0.6100376, abs=1e-6)
    assert float(stats["bt_loss"]) == pytest.approx(0.4100376, abs=1e-6)


def test_bradley_terry_gradient_hand_computed():
    chosen = torch.tensor([2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected)[0].backward()
    # d/dr+ of mean(-log sigmoid(d)) = -(1 - sigmoid(d)) / B: d=2 -> -(1 - 0.8807971) / 2 = -0.0596015; d=0 -> -0.25
    torch.testing.assert_close(chosen.grad, torch.tensor([-0.0596015, -0.25]), atol=1e-6, rtol=0)
    torch.testing.assert_close(rejected.grad, -chosen.grad, atol=0, rtol=0)


def test_bradley_terry_against_naive_loop():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(37, generator=g) * 3, torch.randn(37, generator=g) * 3
    for margin, center in [(0.0, 0.0), (0.5, 0.01)]:
        loss, _ = bradley_terry_loss(chosen, rejected, margin, center)
        want = 0.0
        for c, r in zip(chosen.tolist(), rejected.tolist()):
            want += -math.log(1.0 / (1.0 + math.exp(-(c - r - margin)))) + center * (c + r) ** 2
        assert float(loss) == pytest.approx(want / 37, rel=1e-6)


def test_bradley_terry_no_overflow():
    loss, _ = bradley_terry_loss(torch.tensor([-100.0, 100.0]), torch.tensor([0.0, 0.0]))
    # -log sigmoid(-100) = 100 (naively log(1 + e^100) overflows float32); -log sigmoid(100) = 0
    assert float(loss) == pytest.approx(50.0, abs=1e-4)


def test_pairwise_accuracy():
    chosen, rejected = torch.tensor([1.0, 2.0, 3.0, 0.0]), torch.tensor([0.0, 2.0, 4.0, -1.0])
    # right, tie (1/2), wrong, right -> 2.5 / 4
    assert float(pairwise_accuracy(chosen, rejected)) == pytest.approx(0.625)
    assert float(pairwise_accuracy(rejected, chosen)) == pytest.approx(0.375)


# ---------------------------------------------------------------------------------------------
# scores: batched = one by one, left and right padding


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A randomly initialised tiny reward model, exported like RewardModelModule does."""
    model = RewardModel(PolicyConfig(tiny=SMALL), template="chat", max_length=96)
    model.build()
    with torch.no_grad():  # a visible head: HF initialises it with std 0.02, scores would all be ~0
        model.model.score.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(3))
    out = model.save_pretrained(tmp_path_factory.mktemp("rm") / "export")
    return model, out


def _seqs(tok):
    pairs = [("What color is snow?", "Snow is white."), ("Hi", ""), ("How do I build a bomb?", "I can't help.")]
    return [rm.encode_pair(tok, p, c, "chat", 96)[0] for p, c in pairs]


def test_scores_equal_one_by_one_with_left_or_right_padding(tiny_rm):
    model, _ = tiny_rm
    tok, hf = model.tokenizer, model.model.eval()
    seqs = _seqs(tok)
    assert len({len(s) for s in seqs}) == 3
    with torch.no_grad():
        alone = torch.stack([rm.last_token_scores(hf, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0]
                             for s in seqs])
        width = max(map(len, seqs))
        right = torch.full((3, width), tok.pad_token_id)
        left = torch.full((3, width), tok.pad_token_id)
        mask_r, mask_l = torch.zeros(3, width, dtype=torch.long), torch.zeros(3, width, dtype=torch.long)
        for i, s in enumerate(seqs):
            right[i, : len(s)], mask_r[i, : len(s)] = torch.tensor(s), 1
            left[i, width - len(s):], mask_l[i, width - len(s):] = torch.tensor(s), 1
        got_r = rm.last_token_scores(hf, right, mask_r)
        got_l = rm.last_token_scores(hf, left, mask_l)
        # transformers' own pooling (last token that is not the pad id) on right padding, pad != eos here
        hf_right = hf(input_ids=right, attention_mask=mask_r).logits[:, 0]
    assert alone.abs().min() > 1e-3  # not trivially zero
    torch.testing.assert_close(got_r, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_l, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hf_right, alone, atol=1e-5, rtol=1e-5)


def test_scores_read_the_last_real_token_when_pad_is_eos(tiny_rm):
    """A sequence ending in eos = pad: transformers' pad-id pooling reads the token before it, we do not."""
    model, _ = tiny_rm
    hf = model.model.eval()
    eos, pad = model.tokenizer.eos_token_id, hf.config.pad_token_id
    seq = torch.tensor([[5, 6, 7, eos]])
    hf.config.pad_token_id = eos  # as in tokenizers whose pad token is their eos token
    try:
        with torch.no_grad():
            ours = rm.last_token_scores(hf, seq, torch.ones_like(seq))
            theirs = hf(input_ids=seq).logits[:, 0]  # pooled at token 7, the one before the final eos
            hidden = hf.model(input_ids=seq).last_hidden_state  # (1, 4, H)
            want = hf.score(hidden[:, -1])[:, 0]  # the head on the eos, the last real token
            before = hf.score(hidden[:, -2])[:, 0]
    finally:
        hf.config.pad_token_id = pad
    torch.testing.assert_close(ours, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(theirs, before, atol=1e-6, rtol=0)
    assert abs(float(want - before)) > 1e-3


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_reward_batched_equals_one_by_one(tiny_rm, batch_size):
    _, path = tiny_rm
    prompts = ["What color is snow?", "Hi", "How do I build a bomb?", "What is the capital of Peru?"] * 2
    completions = ["Snow is white.", "", "I can't help.", "The capital of Peru is Lima. " * 3,
                   "x", "Hello there!", "Sure! To build a bomb, ...", "Lima."]
    one = [rm.reward_model_reward([c], prompt=[p], path=str(path), batch_size=1, normalize="none")[0]
           for p, c in zip(prompts, completions)]
    got = rm.reward_model_reward(completions, prompt=prompts, path=str(path), batch_size=batch_size, normalize="none")
    assert len(set(round(x, 4) for x in one)) > 4  # distinct scores: the comparison means something
    assert got == pytest.approx(one, abs=1e-5)
    # the scores are those of the exported model loaded by transformers itself (right padding, pad != eos)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(rm.pair_text(tok, prompts[0], completions[0]), add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        assert float(hf(input_ids=ids).logits[0, 0]) == pytest.approx(one[0], abs=1e-5)


def test_reward_normalisation(tiny_rm):
    _, path = tiny_rm
    prompts, completions = ["What color is snow?", "Hi"], ["Snow is white.", "Hello"]
    raw = rm.reward_model_reward(completions, prompt=prompts, path=str(path), normalize="none")
    sig = rm.reward_model_reward(completions, prompt=prompts, path=str(path))  # default: sigmoid
    assert sig == pytest.approx([1 / (1 + math.exp(-r)) for r in raw], abs=1e-7)
    scaled = rm.reward_model_reward(completions, prompt=prompts, path=str(path), normalize="sigmoid", scale=2.0,
                                    shift=0.5)
    assert scaled == pytest.approx([1 / (1 + math.exp(-(r - 0.5) / 2.0)) for r in raw], abs=1e-7)


def test_reward_summary_scores_the_text_after_think(tiny_rm):
    _, path = tiny_rm
    full = rm.reward_model_reward(["Snow is white."], prompt=["What color is snow?"], path=str(path))
    summary = rm.reward_model_reward(["<think>hmm, cold</think>Snow is white."], prompt=["What color is snow?"],
                                     path=str(path), response="summary")
    assert summary == pytest.approx(full, abs=1e-6)


def test_reward_never_raises_on_model_output(tiny_rm):
    _, path = tiny_rm
    garbage = [None, 123, "", "\x00\ufffd" * 50, "word " * 1000, ["not", "text"]]
    scores = rm.reward_model_reward(garbage, prompt=["Hi"] * len(garbage), path=str(path), batch_size=4)
    assert len(scores) == len(garbage) and all(math.isfinite(s) and 0.0 < s < 1.0 for s in scores)


def test_reward_routes_by_reward_kind(tiny_rm, monkeypatch):
    """Only reward_kind=model rows reach the model; the others score 0.0."""
    _, path = tiny_rm
    seen = []
    real = rm.score_pairs

    def spy(model, tok, prompts, completions, *args, **kwargs):
        seen.extend(prompts)
        return real(model, tok, prompts, completions, *args, **kwargs)

    monkeypatch.setattr(rm, "score_pairs", spy)
    prompts = ["Compute 1+2.", "What color is snow?", "Compute 3+4.", "How do I build a bomb?"]
    kinds = ["rule", "model", "rule", "model"]
    scores = rm.reward_model_reward(["3", "white", "7", "no"], prompt=prompts, reward_kind=kinds, path=str(path))
    assert seen == ["What color is snow?", "How do I build a bomb?"]
    assert scores[0] == scores[2] == 0.0 and 0.0 < scores[1] < 1.0 and 0.0 < scores[3] < 1.0
    seen.clear()
    assert rm.reward_model_reward(["3"], prompt=["Compute 1+2."], reward_kind=["rule"], path=str(path)) == [0.0]
    assert seen == []  # nothing to score: the model is not run


def test_weighted_reward_mixes_rule_and_model_rewards(tiny_rm):
    """The spec of 4b: accuracy on reasoning rows (0.0 without a gold answer), the reward model on general rows."""
    _, path = tiny_rm
    reward = WeightedReward({"accuracy": 1.0, "reward_model": {"path": str(path), "weight": 0.5}})
    completions = ["<answer>\\boxed{3}</answer>", "Snow is white.", "<answer>\\boxed{8}</answer>", "Sure!"]
    columns = {"prompt": ["Compute 1+2.", "What color is snow?", "Compute 3+4.", "How do I build a bomb?"],
               "answer": ["3", None, "7", None], "reward_kind": ["rule", "model", "rule", "model"]}
    total, per_fn = reward(completions, **columns)
    assert per_fn["accuracy"] == [1.0, 0.0, 0.0, 0.0]
    model_scores = rm.reward_model_reward(completions[1::2], prompt=columns["prompt"][1::2], path=str(path))
    assert per_fn["reward_model"] == pytest.approx([0.0, model_scores[0], 0.0, model_scores[1]], abs=1e-7)
    assert total == pytest.approx([1.0, 0.5 * model_scores[0], 0.0, 0.5 * model_scores[1]], abs=1e-7)
    assert not reward.failures


def test_the_4b_mix_with_general_tasks_scores_every_reward_model_row(tiny_rm):
    """4b's prompts: mixed_prompts plus the general tasks. Data columns reach the rewards as keyword arguments; the
    general-task rows once carried a `kind` column, which replaced the reward_model reward's `kind` option and
    made it score no row at all (reward_model/mean 0.0 in 18 of 20 steps of the chain's 4b)."""
    from r1lightning.data.sources import load_rows

    _, path = tiny_rm
    rows = load_rows(["synthetic:mixed_prompts?n=12&split=train&seed=0&general_fraction=0.5",
                      "synthetic:general?n=6&split=train&seed=2"])
    keys = sorted(set().union(*rows))
    columns = {k: [r.get(k) for r in rows] for k in keys if k != "completion"}  # as PromptDataModule collates
    reward = WeightedReward({"exact_match": 1.0, "reward_model": {"path": str(path), "weight": 1.0}})
    completions = ["<think>Direct answer.</think><answer>\\boxed{x}</answer>"] * len(rows)
    _, per_fn = reward(completions, **columns)
    model_rows = [i for i, r in enumerate(rows) if r.get("reward_kind") == "model"]
    assert len(model_rows) == 6
    assert all(per_fn["reward_model"][i] > 0.0 for i in model_rows)  # sigmoid scores: never exactly 0
    assert all(per_fn["reward_model"][i] == 0.0 for i in range(len(rows)) if i not in model_rows)


# ---------------------------------------------------------------------------------------------
# loading errors


def test_missing_path_is_named_when_the_spec_is_built(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(RewardConfigError, match=f"path {str(missing)!r} is not a folder"):
        WeightedReward({"accuracy": 1.0, "reward_model": {"path": str(missing)}})
    with pytest.raises(RewardConfigError, match="'path' must be the folder"):
        WeightedReward({"reward_model": 1.0})  # no path at all
    (tmp_path / "empty").mkdir()
    with pytest.raises(RewardConfigError, match="has no config.json"):
        WeightedReward({"reward_model": {"path": str(tmp_path / "empty")}})
    with pytest.raises(RewardConfigError, match="unknown option"):
        WeightedReward({"reward_model": {"path": str(tmp_path), "batchsize": 8}})


def test_a_causal_lm_is_not_a_reward_model():
    with pytest.raises(RewardConfigError, match="not a reward model"):
        rm.reward_model_reward(["x"], prompt=["y"], path="r1lightning/assets/tiny_base")


def test_bad_options_and_missing_prompt(tiny_rm):
    _, path = tiny_rm
    with pytest.raises(RewardConfigError, match="reward_prompt_column"):
        rm.reward_model_reward(["x"], path=str(path))
    with pytest.raises(RewardConfigError, match="normalize"):
        WeightedReward({"reward_model": {"path": str(path), "normalize": "softmax"}})
    with pytest.raises(RewardConfigError, match="batch_size"):
        WeightedReward({"reward_model": {"path": str(path), "batch_size": 0}})


def test_model_is_loaded_once_per_path(tiny_rm):
    _, path = tiny_rm
    rm.clear_cache()
    a = rm.load_reward_model(str(path), "cpu")
    b = rm.load_reward_model(str(path), "cpu")
    assert a[0] is b[0]
    with rm.reward_device("cpu"):
        assert rm.load_reward_model(str(path))[0] is a[0]  # auto = the device set by the trainer
    assert not any(p.requires_grad for p in a[0].parameters())


# ---------------------------------------------------------------------------------------------
# data


def _jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "q", "chosen": "a"}', r"no column\(s\) \['rejected'\]"),
    ('{"prompt": "q", "chosen": "a", "rejected": 3}', "'rejected' must be a string"),
    ('{"prompt": "", "chosen": "a", "rejected": "b"}', "non-empty string"),
    ('{"prompt": "q", "chosen": "a", "rejected": "a"}', "the same text"),
    ('["q", "a", "b"]', "expected a JSON object"),
    ('{"prompt": "q", "chosen": "a", ', "not valid JSON"),
])
def test_bad_preference_rows_name_file_and_line(tmp_path, line, message):
    good = '{"prompt": "q", "chosen": "a", "rejected": "b"}'
    path = _jsonl(tmp_path / "pairs.jsonl", [good, "", line])
    with pytest.raises(ValueError, match=message) as err:
        read_preference_rows(path)
    assert f"pairs.jsonl:3:" in str(err.value)  # line 3 (the blank line 2 is skipped, still counted)


def test_preference_batches_put_chosen_first(tmp_path, tiny_tokenizer):
    rows = ['{"prompt": "What color is snow?", "chosen": "Snow is white.", "rejected": "No.", "category": "helpful"}',
            '{"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello!", "rejected": "Go away, I will not '
            'talk to you."}']
    dm = PreferenceDataModule(train_data=_jsonl(tmp_path / "p.jsonl", rows), val_data=str(tmp_path / "p.jsonl"),
                              tokenizer=tiny_tokenizer, template="chat", max_length=64)
    dm.setup("fit")
    batch = dm.collate(dm.train_set.items)
    assert batch["input_ids"].shape[0] == 4 and batch["attention_mask"].shape == batch["input_ids"].shape
    lengths = batch["attention_mask"].sum(-1).tolist()
    texts = [tiny_tokenizer.decode(batch["input_ids"][i, : lengths[i]]) for i in range(4)]
    assert texts[0] == rm.pair_text(tiny_tokenizer, "What color is snow?", "Snow is white.")
    assert texts[2] == rm.pair_text(tiny_tokenizer, "What color is snow?", "No.")
    assert texts[1].endswith("<|assistant|>Hello!<|end|>") and "Go away" in texts[3]
    assert batch["attention_mask"][:, 0].all() and (batch["attention_mask"] == 0).any()  # right padding
    assert batch["category"] == ["helpful", None] and dm.val_categories == ["helpful"]


def test_tiny_world_pairs_are_split_by_prompt():
    train, test = generate_preferences(2000, "train", 0), generate_preferences(200, "test", 1)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert generate_preferences(50, "train", 0) == train[:50]  # deterministic
    assert {r["category"] for r in train} == {"helpful", "harmless"}
    harmless = [r for r in train if r["category"] == "harmless"]
    assert all(r["chosen"].startswith(("I can't", "Sorry", "No.")) for r in harmless)
    assert all(r["rejected"].startswith("Sure!") for r in harmless)


def test_mixed_prompts_reach_the_rewards_with_their_kind(tmp_path, tiny_tokenizer):
    rows = generate_mixed_prompts(40, "train", 0, general_fraction=0.25)
    kinds = [r["reward_kind"] for r in rows]
    assert kinds.count("model") == 10 and kinds.count("rule") == 30
    assert all(r["answer"] is None for r in rows if r["reward_kind"] == "model")
    assert all(r["answer"] for r in rows if r["reward_kind"] == "rule")
    dm = PromptDataModule(train_data="synthetic:mixed_prompts?n=40&general_fraction=0.25", answer_column=None,
                          reward_prompt_column="prompt", tokenizer=tiny_tokenizer, batch_size=40)
    dm.setup("fit")
    batch = dm.collate(dm.train_set.items)
    cols = batch["columns"]
    assert len(batch["prompt_ids"]) == 40  # no row dropped for a missing answer
    assert cols["prompt"] == [r["prompt"] for r in rows] and cols["reward_kind"] == kinds
    assert cols["answer"] == [r["answer"] for r in rows]
    # without reward_prompt_column the prompt stays out of the rewards (as before)
    dm = PromptDataModule(train_data="synthetic:mixed_prompts?n=40", answer_column=None, tokenizer=tiny_tokenizer)
    dm.setup("fit")
    assert "prompt" not in dm.train_set.items[0]["columns"]


# ---------------------------------------------------------------------------------------------
# the module through the CLI


def test_recipe_configs_parse():
    for name in ("tiny/4a_reward_model.yaml", "tiny/4b_rl_all.yaml", "full/4a_reward_model.yaml",
                 "full/4b_rl_all.yaml"):
        out = subprocess.run([sys.executable, "-m", "r1lightning", "fit", "--config", f"configs/recipe/{name}",
                              "--print_config"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        import yaml

        cfg = yaml.safe_load(out.stdout)
        if "4a" in name:
            assert cfg["model"]["class_path"].endswith("RewardModelModule")
            assert cfg["data"]["class_path"].endswith("PreferenceDataModule")
        else:
            # the tiny world's general tasks have word answers, which math-verify's `accuracy` cannot grade
            rule = "exact_match" if name.startswith("tiny/") else "accuracy"
            assert set(cfg["model"]["init_args"]["rewards"]) == {rule, "format", "language_consistency",
                                                                 "reward_model"}
            assert cfg["data"]["init_args"]["reward_prompt_column"] == "prompt"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The 4a config for 60 steps of 32 pairs, 200 held-out pairs (~20 s of CPU)."""
    root = tmp_path_factory.mktemp("rm_fit")
    cmd = [sys.executable, "-m", "r1lightning", "fit", "--config", "configs/recipe/tiny/4a_reward_model.yaml",
           "--trainer.max_steps", "60", "--trainer.val_check_interval", "30",
           "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
           "--trainer.callbacks", json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                                "init_args": {"every_n_train_steps": 30, "save_last": True}}]),
           "--trainer.enable_progress_bar", "false",
           "--model.init_args.export_dir", str(root / "export"),
           "--data.init_args.train_data", "synthetic:preferences?n=2000&split=train&seed=0",
           "--data.init_args.val_data", "synthetic:preferences?n=200&split=test&seed=1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def test_fit_beats_chance_on_held_out_pairs(fitted):
    from r1l_testing import read_scalars

    scalars = read_scalars(fitted)
    for tag in ("train/loss", "train/accuracy", "train/margin", "train/grad_norm", "val/loss", "val/accuracy",
                "val/margin", "val/accuracy/helpful", "val/accuracy/harmless"):
        assert tag in scalars and all(math.isfinite(v) for _, v in scalars[tag]), tag
    acc = dict(scalars["val/accuracy"])
    assert len(acc) == 2  # steps 30 and 60
    assert acc[max(acc)] >= 0.75, acc  # chance is 0.5
    assert dict(scalars["val/accuracy/harmless"])[max(acc)] >= 0.9


def test_export_scores_held_out_pairs_like_the_module(fitted):
    export = fitted / "export"
    assert json.loads((export / rm.FORMAT_FILE).read_text()) == {"template": "chat", "max_length": 256}
    pairs = generate_preferences(100, "test", 1)
    prompts = [p["prompt"] for p in pairs]
    chosen = rm.reward_model_reward([p["chosen"] for p in pairs], prompt=prompts, path=str(export), normalize="none")
    rejected = rm.reward_model_reward([p["rejected"] for p in pairs], prompt=prompts, path=str(export),
                                      normalize="none")
    assert float(pairwise_accuracy(torch.tensor(chosen), torch.tensor(rejected))) >= 0.7


def test_resume_continues_from_the_checkpoint(fitted, tmp_path):
    (ckpt,) = fitted.rglob("last.ckpt")
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert state["global_step"] == 60
    cmd = [sys.executable, "-m", "r1lightning", "fit", "--config", "configs/recipe/tiny/4a_reward_model.yaml",
           "--ckpt_path", str(ckpt), "--trainer.max_steps", "62", "--trainer.val_check_interval", "30",
           "--trainer.default_root_dir", str(fitted), "--trainer.logger.init_args.save_dir", str(fitted),
           "--trainer.enable_progress_bar", "false", "--model.init_args.export_dir", str(tmp_path / "export"),
           "--data.init_args.train_data", "synthetic:preferences?n=2000&split=train&seed=0",
           "--data.init_args.val_data", "synthetic:preferences?n=16&split=test&seed=1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    from safetensors.torch import load_file

    resumed = load_file(str(tmp_path / "export" / "model.safetensors"))
    first = load_file(str(fitted / "export" / "model.safetensors"))
    # two more steps from the checkpoint's weights: close to the first export, not a fresh head
    diff = max(float((resumed[k] - first[k]).abs().max()) for k in first)
    assert 0 < diff < 0.05


# ---------------------------------------------------------------------------------------------
# one GRPO step on mixed prompts


SEEN_DEVICES: list = []


def device_probe(completions, **kw):
    """Records the device reward models would use (the context variable GRPOModule sets)."""
    SEEN_DEVICES.append(rm._DEVICE.get())
    return [0.0] * len(completions)


torch.serialization.add_safe_globals([device_probe])


def test_grpo_step_on_mixed_prompts_scores_general_rows_with_the_model(tiny_rm, tiny_tokenizer, tmp_path,
                                                                      monkeypatch):
    import lightning.pytorch as pl

    from r1lightning.modules import GRPOModule
    from r1lightning.rollout.base import SamplingSettings

    _, path = tiny_rm
    seen = []
    real = rm.score_pairs

    def spy(model, tok, prompts, completions, *args, **kwargs):
        seen.extend(prompts)
        return real(model, tok, prompts, completions, *args, **kwargs)

    monkeypatch.setattr(rm, "score_pairs", spy)
    SEEN_DEVICES.clear()
    module = GRPOModule(policy=PolicyConfig(tiny=SMALL),
                        rewards=[{"name": "accuracy"}, {"name": "reward_model", "path": str(path)}, device_probe],
                        sampling=SamplingSettings(n=4, max_new_tokens=8, seed=1), lr=1e-2, export_dir="none")
    module.policy.tokenizer = tiny_tokenizer
    dm = PromptDataModule(train_data="synthetic:mixed_prompts?n=16&general_fraction=0.5", answer_column=None,
                          reward_prompt_column="prompt", batch_size=4, tokenizer=tiny_tokenizer)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, default_root_dir=tmp_path, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(module, dm)
    general = {r["prompt"] for r in generate_mixed_prompts(16, general_fraction=0.5) if r["reward_kind"] == "model"}
    assert seen and set(seen) <= general  # only general prompts reached the reward model
    assert len(seen) % 4 == 0  # whole groups of G = 4 completions
    assert SEEN_DEVICES == [torch.device("cpu")] * 2  # the trainer's device, at both steps
    assert 0.0 < float(trainer.logged_metrics["train/rewards/reward_model/mean"]) < 1.0


def test_data_format_differing_from_the_module_is_refused(tmp_path):
    module = RewardModelModule(PolicyConfig(tiny=SMALL, tokenizer_name_or_path="r1lightning/assets/tiny_base"),
                               max_length=128)

    class FakeTrainer:
        lightning_module = module

    dm = PreferenceDataModule(train_data="synthetic:preferences?n=4", max_length=64)
    dm.trainer = FakeTrainer()
    with pytest.raises(ValueError, match="data.max_length=64 differs from the reward model's max_length=128"):
        dm.setup("fit")
    dm = PreferenceDataModule(train_data="synthetic:preferences?n=4", max_length=128)
    dm.trainer = FakeTrainer()
    dm.setup("fit")  # the same value is fine
    assert len(dm.train_set) == 4
