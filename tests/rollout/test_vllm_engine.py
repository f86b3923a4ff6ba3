"""VLLMRolloutEngine: same RolloutBatch contract as the HF engine, checked against the trainer's own numbers."""

import pytest
import torch
from vllm_testing import SKIP_REASON

from r1lightning.modules.grpo import build_sequences
from r1lightning.rollout.base import SamplingSettings
from r1lightning.rollout.hf import HFRolloutEngine

pytest.importorskip("vllm", reason=SKIP_REASON)
pytestmark = pytest.mark.slow

# Engine vs trainer log-probs on CPU fp32 agree to about 5e-7 (measured on this tiny model); 1e-4 is
# >100x that, and far below the 0.1-1 nats one perturbation below moves them.
LOGP_ATOL = 1e-4


def trainer_logprobs(policy, prompts, completions, n, temperature):
    """policy.token_logprobs of each completion given its group's prompt.  # (B, C) and mask (B, C)"""
    rows = [p for p in prompts for _ in range(n)]
    ids, attn, cmask = build_sequences(rows, completions, policy.tokenizer.pad_token_id, torch.device("cpu"))
    logp, _ = policy.token_logprobs(ids, attn, cmask.shape[1], temperature, loss_mask=cmask)
    return logp, cmask


def test_groups_are_contiguous_in_index_order(synced, monkeypatch):
    # vLLM returns one request output per prompt whose samples carry an index; feed them out of order
    from types import SimpleNamespace as NS

    def fake_generate(prompts, params, use_tqdm=False):
        return [NS(outputs=[NS(index=j, token_ids=[100 + 10 * i + j], finish_reason="length", logprobs=None)
                            for j in reversed(range(params[i].n))]) for i in range(len(prompts))]

    monkeypatch.setattr(synced.engine.llm, "generate", fake_generate)
    out = synced.engine.generate(synced.prompts[:3], SamplingSettings(n=2, max_new_tokens=1))
    assert out.completion_ids == [[100], [101], [110], [111], [120], [121]]  # prompt i -> rows 2i, 2i+1
    assert out.truncated == [True] * 6


def test_greedy_repeats_the_sample_n_times_like_hf(synced):
    # vLLM refuses greedy with n > 1; HF generate returns n copies: the engine does the same
    out = synced.engine.generate(synced.prompts, SamplingSettings(n=3, temperature=0.0, max_new_tokens=12))
    assert out.n == 3 and out.prompt_ids == synced.prompts and len(out.completion_ids) == 12
    assert all(out.completion_ids[3 * i] == out.completion_ids[3 * i + 1] == out.completion_ids[3 * i + 2]
               for i in range(4))
    hf = HFRolloutEngine(synced.policy).generate(synced.prompts, SamplingSettings(n=1, temperature=0.0,
                                                                                 max_new_tokens=12))
    assert out.completion_ids[::3] == hf.completion_ids  # the same greedy continuation as HF generate


def test_ids_texts_eos_and_truncation_like_hf(synced):
    tok = synced.policy.tokenizer
    out = synced.engine.generate(synced.prompts, SamplingSettings(n=8, max_new_tokens=32, seed=0))
    assert out.texts == tok.batch_decode(out.completion_ids, skip_special_tokens=True)
    eos = tok.eos_token_id
    stopped = [c for c, t in zip(out.completion_ids, out.truncated) if not t]
    cut = [c for c, t in zip(out.completion_ids, out.truncated) if t]
    assert stopped and cut  # the sharpened model gives both (seeded)
    assert all(c[-1] == eos and eos not in c[:-1] for c in stopped)  # eos kept, as the HF engine does
    assert all(len(c) == 32 and eos not in c for c in cut)
    assert all(tok.eos_token not in t for t in out.texts)
    assert out.stats["tokens"] == out.num_completion_tokens and out.stats["tokens_per_s"] > 0


def test_seed_reproducible(synced):
    s = SamplingSettings(n=4, max_new_tokens=16, seed=123)
    a = synced.engine.generate(synced.prompts, s).completion_ids
    b = synced.engine.generate(synced.prompts, s).completion_ids
    c = synced.engine.generate(synced.prompts, SamplingSettings(n=4, max_new_tokens=16, seed=124)).completion_ids
    assert a == b
    assert a != c
    assert len({tuple(x) for x in a[:4]}) > 1  # one seed per request still gives n different samples


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_trainer(synced, temperature):
    # the train/inference mismatch: the engine's log-prob of each sampled token vs the trainer's
    n = 4
    out = synced.engine.generate(synced.prompts, SamplingSettings(n=n, temperature=temperature, max_new_tokens=24,
                                                                  seed=7, logprobs=True))
    ours, cmask = trainer_logprobs(synced.policy, synced.prompts, out.completion_ids, n, temperature)
    assert [len(lp) for lp in out.logprobs] == [len(c) for c in out.completion_ids]
    engine = torch.zeros_like(ours)
    for i, lp in enumerate(out.logprobs):
        engine[i, : len(lp)] = torch.tensor(lp)
    diff = ((engine - ours) * cmask).abs().max().item()
    assert diff < LOGP_ATOL, diff
    assert ours[cmask.bool()].mean() < -0.1  # a test that can fail: the tokens are not near-certain
    # ... and one that notices wrong grouping: the same completions scored after the next group's prompt
    shifted, smask = trainer_logprobs(synced.policy, synced.prompts[1:] + synced.prompts[:1], out.completion_ids, n,
                                      temperature)
    assert ((engine - shifted) * smask).abs().max().item() > 100 * LOGP_ATOL


def test_prompt_near_max_model_len_is_cut_not_rejected(synced):
    room = 5
    long_prompt = (synced.prompts[0] * synced.engine.max_model_len)[: synced.engine.max_model_len - room]
    out = synced.engine.generate([long_prompt], SamplingSettings(n=2, max_new_tokens=64, seed=0))
    assert all(len(c) <= room for c in out.completion_ids)
    assert all(t for c, t in zip(out.completion_ids, out.truncated) if c[-1] != synced.policy.tokenizer.eos_token_id)
    with pytest.raises(ValueError, match="max_model_len"):
        synced.engine.generate([synced.prompts[0] * 200], SamplingSettings(n=2, max_new_tokens=4))


def test_stop_strings_keep_the_stop_text_like_hf(synced):
    first = synced.engine.generate(synced.prompts, SamplingSettings(n=4, max_new_tokens=32, seed=0))
    words = [w for t in first.texts for w in t.split() if w.isalpha()]
    assert words
    stop = max(set(words), key=words.count)  # a word this model writes often
    out = synced.engine.generate(synced.prompts, SamplingSettings(n=4, max_new_tokens=32, seed=0, stop=[stop]))
    eos = synced.policy.tokenizer.eos_token_id
    by_stop = [t for c, t, cut in zip(out.completion_ids, out.texts, out.truncated) if not cut and c[-1] != eos]
    assert by_stop
    assert all(t.endswith(stop) for t in by_stop)
    assert out.texts == synced.policy.tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)


def test_unsupported_cpu_head_dim_is_refused_before_the_engine_starts():
    from r1lightning.policy import Policy, PolicyConfig, TinyModelSettings
    from r1lightning.rollout.vllm import VLLMRolloutEngine, _on_cpu

    if not _on_cpu():
        pytest.skip("the head-size list is the CPU build's")
    policy = Policy(PolicyConfig(tiny=TinyModelSettings(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                        intermediate_size=64)))  # head_dim 16
    with pytest.raises(ValueError,
                       match=r"head_dim=16 .*32 / 2 heads.*\[32, 64,.*rollout: r1lightning.rollout.HFEngineSettings"):
        VLLMRolloutEngine.from_policy(policy, enforce_eager=True)
