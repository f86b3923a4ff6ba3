"""The policy backbone: log-probs against a naive reference, chunking, packing, LoRA, export."""

import pytest
import torch
import torch.nn.functional as F

from r1lightning.policy import Policy, PolicyConfig, TinyModelSettings, LoraSettings, position_ids_from_mask


def _batch(tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    return enc.input_ids, enc.attention_mask


def naive_logprobs(model, ids, attn, temperature=1.0):
    """log_softmax over the full (B, T, V) logits, then gather: the reference implementation."""
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits.float()
    logp = torch.log_softmax(logits[:, :-1] / temperature, -1)  # (B, T-1, V)
    tok_lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return tok_lp * attn[:, 1:], entropy * attn[:, 1:]


TEXTS = ["<|user|>Compute 12+30+7.<|end|><|assistant|><think>12+30=42</think>",
         "<|user|>Hi<|end|><|assistant|><answer>\\boxed{3}</answer><|end|>",
         "<|user|>Compute 99+1.<|end|>"]


@pytest.mark.parametrize("chunk", [1, 7, 4096])  # one token per chunk, uneven chunks, a single chunk
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_naive_log_softmax(tiny_policy, chunk, temperature):
    tiny_policy.config.logprob_chunk_tokens = chunk
    ids, attn = _batch(tiny_policy.tokenizer, TEXTS)  # left padded: exercises position ids
    lp, ent = tiny_policy.token_logprobs(ids, attn, temperature=temperature)
    ref_lp, ref_ent = naive_logprobs(tiny_policy.model, ids, attn, temperature)
    assert lp.shape == (3, ids.shape[1] - 1)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)


def test_logits_to_keep_and_loss_mask(tiny_policy):
    ids, attn = _batch(tiny_policy.tokenizer, TEXTS)
    full, _ = tiny_policy.token_logprobs(ids, attn)
    last4, _ = tiny_policy.token_logprobs(ids, attn, logits_to_keep=4)
    torch.testing.assert_close(last4, full[:, -4:], atol=1e-6, rtol=0)
    mask = torch.zeros_like(last4, dtype=torch.long)
    mask[0, 1] = 1
    only, _ = tiny_policy.token_logprobs(ids, attn, logits_to_keep=4, loss_mask=mask)
    assert float(only[0, 1].detach()) == pytest.approx(float(full[0, -3].detach()), abs=1e-6)
    assert torch.count_nonzero(only) == 1  # masked positions are not computed
    with pytest.raises(ValueError, match="logits_to_keep"):
        tiny_policy.token_logprobs(ids, attn, logits_to_keep=ids.shape[1])


def test_gradients_match_naive(tiny_policy):
    ids, attn = _batch(tiny_policy.tokenizer, TEXTS)
    tiny_policy.config.logprob_chunk_tokens = 5
    lp, _ = tiny_policy.token_logprobs(ids, attn)
    lp.sum().backward()
    g1 = [p.grad.clone() for p in tiny_policy.model.parameters()]
    tiny_policy.model.zero_grad()
    ref, _ = naive_logprobs(tiny_policy.model, ids, attn)
    ref.sum().backward()
    for a, p in zip(g1, tiny_policy.model.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4)


def test_packed_rows_equal_separate_rows(tiny_policy):
    tok = tiny_policy.tokenizer
    a = tok(TEXTS[0], add_special_tokens=False).input_ids
    b = tok(TEXTS[1], add_special_tokens=False).input_ids
    packed = torch.tensor([a + b])
    pos = torch.tensor([list(range(len(a))) + list(range(len(b)))])
    lp_packed, _ = tiny_policy.token_logprobs(packed, None, position_ids=pos)
    lp_a, _ = tiny_policy.token_logprobs(torch.tensor([a]), torch.ones(1, len(a), dtype=torch.long))
    lp_b, _ = tiny_policy.token_logprobs(torch.tensor([b]), torch.ones(1, len(b), dtype=torch.long))
    torch.testing.assert_close(lp_packed[0, : len(a) - 1], lp_a[0], atol=1e-5, rtol=0)
    # position len(a)-1 predicts b[0] across the boundary (never a target); the rest is b's own
    torch.testing.assert_close(lp_packed[0, len(a) :], lp_b[0], atol=1e-5, rtol=0)


def test_lora_trains_only_the_adapter_and_exports_merged(tiny_tokenizer, tmp_path):
    cfg = PolicyConfig(tiny=TinyModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                              intermediate_size=64),
                       lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    policy = Policy(cfg, tokenizer=tiny_tokenizer)
    model = policy.build()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    ids, attn = _batch(tiny_tokenizer, TEXTS)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(2):  # lora_B starts at zero: the second step moves lora_A too
        lp, _ = policy.token_logprobs(ids, attn)
        (-lp.sum()).backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, base_before[n]), n
    lp_after, _ = policy.token_logprobs(ids, attn)
    with model.disable_adapter():
        lp_base, _ = policy.token_logprobs(ids, attn)
    assert (lp_after - lp_base).abs().max() > 1e-3  # the adapter changed the policy

    out = policy.save_pretrained(tmp_path / "export")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    with torch.no_grad():
        pos = position_ids_from_mask(attn)
        want = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
        got = reloaded(input_ids=ids, attention_mask=attn, position_ids=pos).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_export_reloads_with_identical_logits(tiny_policy, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tiny_policy.save_pretrained(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == tiny_policy.tokenizer.chat_template
    assert tok("<think>7</think>").input_ids == tiny_policy.tokenizer("<think>7</think>").input_ids
    ids, attn = _batch(tok, TEXTS)
    with torch.no_grad():
        a = tiny_policy.model(input_ids=ids, attention_mask=attn).logits
        b = model(input_ids=ids, attention_mask=attn).logits
    assert torch.equal(a, b)
    # and back through the backbone itself
    again = Policy(PolicyConfig(model_name_or_path=str(out)))
    lp1, _ = tiny_policy.token_logprobs(ids, attn)
    lp2, _ = again.token_logprobs(ids, attn)
    assert torch.equal(lp1, lp2)


def test_gradient_checkpointing_same_gradients(tiny_tokenizer):
    small = TinyModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    grads = []
    for gc in (False, True):
        p = Policy(PolicyConfig(tiny=small, gradient_checkpointing=gc), tokenizer=tiny_tokenizer)
        p.build().train()
        ids, attn = _batch(tiny_tokenizer, TEXTS)
        lp, _ = p.token_logprobs(ids, attn)
        lp.sum().backward()
        grads.append([q.grad for q in p.model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_clear_errors(tmp_path, tiny_tokenizer):
    with pytest.raises(FileNotFoundError, match="model_name_or_path='/nope/model'"):
        Policy(PolicyConfig(model_name_or_path="/nope/model")).build()
    with pytest.raises(ValueError, match="set model_name_or_path"):
        Policy(PolicyConfig(), tokenizer=tiny_tokenizer).build()
    # a tokenizer without a pad token names the option to set
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    import json

    cfg_path = tmp_path / "tok" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))
    tj_path = tmp_path / "tok" / "tokenizer.json"
    tj = json.loads(tj_path.read_text())
    tj["padding"] = None  # a tokenizer used with padding=True records its pad token here too
    tj_path.write_text(json.dumps(tj))
    with pytest.raises(ValueError, match="policy.pad_token"):
        Policy(PolicyConfig(model_name_or_path=str(tmp_path / "tok")))
    p = Policy(PolicyConfig(model_name_or_path=str(tmp_path / "tok"), pad_token="<|end|>"))
    assert p.tokenizer.pad_token == "<|end|>"


def test_shipped_paths_resolve_from_anywhere(monkeypatch, tmp_path):
    from r1lightning.policy import resolve_path, PACKAGE_ROOT

    monkeypatch.chdir(tmp_path)
    assert resolve_path("r1lightning/data") == PACKAGE_ROOT / "data"
