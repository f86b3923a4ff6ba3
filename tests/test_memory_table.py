"""benchmarks/memory_table.py: the parameter count is exactly transformers' (hand-computed for the three
Qwen2.5 configs, and compared with a real model built from a small config), and each memory term is the
stated formula on hand-computed values."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_table.py"


@pytest.fixture(scope="module")
def mt():
    spec = importlib.util.spec_from_file_location("memory_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_table"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_qwen25_parameter_counts_by_hand(mt):
    # 1.5B: h 1536, g = 2 x 128 = 256, I 8960, V 151936, tied
    #   layer = q 1536*1536+1536 (2,360,832) + k,v 2*(1536*256+256) (786,944) + o 1536*1536 (2,359,296)
    #         + mlp 3*1536*8960 (41,287,680) + norms 2*1536 (3,072) = 46,797,824;  x 28 = 1,310,339,072
    #   + embedding 151936*1536 = 233,373,696 + final norm 1536 = 1,543,714,304
    assert mt.QWEN25["1.5B"].layer_params == 46_797_824
    assert mt.QWEN25["1.5B"].num_params == 1_543_714_304
    # 7B: h 3584, g 4 x 128 = 512, I 18944, V 152064, untied
    #   layer = 12,848,640 + 2*1,835,520 + 12,845,056 + 203,685,888 + 7,168 = 233,057,792; x 28 = 6,525,618,176
    #   + 2 * 152064*3584 (1,089,994,752) + 3584 = 7,615,616,512
    assert mt.QWEN25["7B"].layer_params == 233_057_792
    assert mt.QWEN25["7B"].num_params == 7_615_616_512
    # 32B: h 5120, g 8 x 128 = 1024, I 27648, 64 layers, untied
    #   layer = 26,219,520 + 2*5,243,904 + 26,214,400 + 424,673,280 + 10,240 = 487,605,248; x 64 = 31,206,735,872
    #   + 2 * 152064*5120 (1,557,135,360) + 5120 = 32,763,876,352
    assert mt.QWEN25["32B"].num_params == 32_763_876_352


@pytest.mark.parametrize("tied", [True, False])
def test_count_equals_transformers_on_a_small_qwen2(mt, tmp_path, tied):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=96, vocab_size=211, tie_word_embeddings=tied)
    cfg.save_pretrained(tmp_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    arch = mt.Arch.from_hf_config(tmp_path / "config.json")
    assert arch.num_params == sum(p.numel() for p in model.parameters())
    assert arch.tie_word_embeddings is tied and arch.attention_bias


def test_from_hf_config_reads_a_llama_without_biases(mt, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16, "vocab_size": 10}))
    a = mt.Arch.from_hf_config(tmp_path / "config.json")
    # no GQA (kv heads = heads: g = 8), no bias: 4*64 + 3*8*16 + 2*8 = 656; + 80 + 8 + untied head 80
    assert (a.kv_dim, a.attention_bias, a.layer_params, a.num_params) == (8, False, 656, 824)


def test_strategy_terms_by_hand(mt):
    a = mt.QWEN25["7B"]
    n = 7_615_616_512
    ddp = mt.budget(a, "DDP", world_size=8, tokens=1024, gpu_gb=80, gpu_memory_utilization=0.35)
    assert (ddp.weights, ddp.grads, ddp.optimizer, ddp.master, ddp.reference) == (4 * n, 4 * n, 8 * n, 0, 4 * n)
    assert ddp.engine == pytest.approx(0.35 * 80e9)
    fsdp = mt.budget(a, "FSDP2", world_size=8, tokens=1024)
    assert (fsdp.weights, fsdp.optimizer, fsdp.reference) == (4 * n / 8, 8 * n / 8, 4 * n / 8)
    # transient: 2 layers bf16 (4 x 233,057,792) + fp32 grad of a layer (4 x 233,057,792)
    #            + root bf16 2 x (2 x 544,997,376 + 3584)
    assert fsdp.transient == 8 * 233_057_792 + 2 * (2 * 544_997_376 + 3584)
    z3 = mt.budget(a, "ZeRO-3", world_size=8, tokens=1024)
    assert (z3.weights, z3.grads, z3.optimizer, z3.master, z3.reference, z3.engine) == \
        (2 * n / 8, 2 * n / 8, 8 * n / 8, 4 * n / 8, 0, 0)
    # the 16 bytes per parameter of mixed-precision AdamW, however they are split
    assert ddp.weights + ddp.grads + ddp.optimizer + ddp.master == 16 * n
    assert 8 * (z3.weights + z3.grads + z3.optimizer + z3.master) == pytest.approx(16 * n)


def test_activation_formula_by_hand(mt):
    a = mt.Arch("toy", hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=16, vocab_size=10, tie_word_embeddings=True)
    # per token per layer: 16h + 4g + 8I = 128 + 16 + 128 = 272 bytes (g = 1 x 4)
    assert mt.activation_bytes_per_token_layer(a) == 272
    head = 4 * 10 * 4 * 3  # chunk 4 x V 10 x fp32 x (logits, softmax, grad)
    assert mt.activations(a, 5, checkpointing=False, head_chunk=4) == 2 * 5 * 272 + head
    # checkpointed: each layer's fp32 input (2 x 5 x 4 x 8 = 320) + one layer recomputed (5 x 272 = 1360)
    assert mt.activations(a, 5, checkpointing=True, head_chunk=4) == 320 + 1360 + head


def test_kv_cache_tokens(mt):
    a = mt.QWEN25["7B"]
    # 2 (K, V) x 28 layers x 512 x 2 bytes = 57,344 bytes per token (the figure quoted in configs/r1_gpu.yaml)
    assert a.kv_bytes_per_token == 57_344
    assert mt.kv_cache_tokens(a, 80, 0.35) == (28e9 - 2 * 7_615_616_512) // 57_344
    assert mt.kv_cache_tokens(mt.QWEN25["32B"], 80, 0.35) == 0  # 65.5 GB of bf16 weights > a 28 GB share


def test_table_prints(mt, capsys):
    assert mt.main(["--world-size", "8"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and "B (" in ln]
    assert len(rows) == 9  # 3 models x 3 strategies
    assert "| 7B (7.62B) | DDP | 30.5 | 30.5 | 60.9 |" in out
