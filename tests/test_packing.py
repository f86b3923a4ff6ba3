"""Packed log-prob micro-batches: the layout by hand, and packed == padded (log-probs, entropies, GRPO losses,
gradients, a whole GRPO step) on rows of very different lengths, for Llama and Qwen3 with sdpa and eager;
a model that attends across packed sequences is detected and padded instead."""

from __future__ import annotations

import pytest
import torch

from r1lightning.losses import grpo_loss
from r1lightning.modules.grpo import build_sequences, packed_micro_batches
from r1lightning.policy import pack_rows, pack_sequences, packed_token_logprobs, causal_lm_token_logprobs, \
    resolve_path, supports_packed_rows


def test_pack_rows_first_fit_decreasing_by_hand():
    # longest first: 5 -> row 0 (1 left), 4 -> row 1 (2 left), 3 -> row 2, 2 -> row 1 (0 left), 1 -> row 0
    assert pack_rows([5, 3, 4, 2, 1], 6) == [[0, 4], [2, 3], [1]]
    assert pack_rows([9, 2], 6) == [[0], [1]]  # longer than a row: a row of its own
    assert pack_rows([], 6) == []


def test_pack_sequences_layout_by_hand():
    packed = pack_sequences([[1, 2, 3], [4, 5], [6]], score_from=[1, 1, 1], rows=[[0, 2], [1]], pad_id=0)
    assert packed.input_ids.tolist() == [[1, 2, 3, 6], [4, 5, 0, 0]]
    # positions restart per sequence; the fill is a sequence of its own
    assert packed.position_ids.tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    # scored: tokens 2, 3 of sequence 0 (flat 1, 2) and token 5 of sequence 1 (row 1 starts at 4: flat 5);
    # sequence 2 has no token after score_from
    assert packed.targets.tolist() == [1, 2, 5]
    with pytest.raises(ValueError, match="score_from >= 1"):
        pack_sequences([[1, 2]], score_from=[0], rows=[[0]], pad_id=0)


def test_packed_micro_batches_by_hand():
    # longest 4: k=1 -> 4 rows x 4 = 16 slots; k=2 -> [[0,1],[2,3]] x 8 = 16 (a tie: k=1 kept);
    # k=3 -> [[0,1,2],[3]] x 12 = 24; k=4 -> one row of 13 tokens = 13 slots, the fewest
    assert packed_micro_batches([4, 4, 4, 1], 100) == [[[0, 1, 2, 3]]]
    # budget 12: widths above 12 are not tried; k=1 wins and 12 // 4 = 3 rows make a micro-batch
    assert packed_micro_batches([4, 4, 4, 1], 12) == [[[0], [1], [2]], [[3]]]
    assert packed_micro_batches([20, 3], 10) == [[[0]], [[1]]]  # longer than the budget: alone
    assert packed_micro_batches([], 10) == []


def _llama(attn):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(resolve_path("r1lightning/assets/tiny_base")),
                                                attn_implementation=attn)


def _qwen3(attn):
    from transformers import AutoModelForCausalLM, Qwen3Config

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, intermediate_size=128, max_position_embeddings=512)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)


def _rows(vocab: int):
    """Prompts of 3..20 tokens and completions of 1..60 tokens (one a single token, one empty)."""
    gen = torch.Generator().manual_seed(1)
    plen = [3, 20, 7, 12, 5, 9]
    clen = [60, 1, 33, 0, 8, 47]
    rand = lambda n: torch.randint(3, vocab, (n,), generator=gen).tolist()
    return [rand(n) for n in plen], [rand(n) for n in clen]


@pytest.mark.parametrize("build", [_llama, _qwen3], ids=["llama", "qwen3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_padded_logprobs_losses_and_gradients(build, attn):
    model = build(attn).train()
    assert supports_packed_rows(model)
    prompts, completions = _rows(model.config.vocab_size)
    ids, am, cmask = build_sequences(prompts, completions, 0, torch.device("cpu"))
    keep = [i for i, c in enumerate(completions) if c]  # GRPO leaves empty completions out of packed rows
    lengths = [len(prompts[i]) + len(completions[i]) for i in keep]
    micro = packed_micro_batches(lengths, 4096)
    assert len(micro) == 1 and len(micro[0]) < len(keep)  # several sequences do share a row
    rows = [[keep[i] for i in row] for row in micro[0]]
    packed = pack_sequences([p + c for p, c in zip(prompts, completions)], [len(p) for p in prompts], rows, 0)
    assert packed.input_ids.numel() < ids.numel()
    adv = torch.tensor([1.0, -0.5, 0.25, 2.0, -1.0, 0.5])
    results = []
    for use_packed in (False, True):
        model.zero_grad()
        if use_packed:
            logp, ent = packed_token_logprobs(model, packed, cmask, temperature=0.7, chunk_tokens=17)
        else:
            logp, ent = causal_lm_token_logprobs(model, ids, am, cmask.shape[1], 0.7, None, cmask, chunk_tokens=17)
        with torch.no_grad():
            ref = logp.detach() - 0.1 * cmask  # a reference away from the policy: the KL term is non-zero
        loss, _ = grpo_loss(logp, logp.detach(), ref, adv, cmask, beta=0.04, max_len=60, total_tokens=None,
                            num_sequences=None)
        loss.backward()
        results.append((logp.detach(), ent, loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (lp0, e0, l0, g0), (lp1, e1, l1, g1) = results
    assert lp0[cmask.bool()].abs().min() > 0  # every completion token was scored
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=0)
    torch.testing.assert_close(e1, e0, atol=1e-5, rtol=0)
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_the_probe_detects_a_model_attending_across_packed_sequences():
    """An attention that ignores the packing (plain causal over the whole row) fails the probe; sdpa passes."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def whole_row_causal(module, query, key, value, attention_mask, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    AttentionInterface.register("whole_row_causal", whole_row_causal)
    model = _llama("whole_row_causal")
    assert not supports_packed_rows(model)
    assert supports_packed_rows(_llama("sdpa"))


def length_reward(completions, **kw):
    """Varies within every group: advantages are non-zero."""
    return [len(c) / 50.0 for c in completions]


class _Record:
    """Gradients before every optimizer step, and how the micro-batches were laid out."""

    def __init__(self):
        import lightning.pytorch as pl

        record = self
        self.grads, self.layouts, self.slots = [], [], 0

        class Callback(pl.Callback):
            def on_before_optimizer_step(self, trainer, pl_module, optimizer):
                record.grads.append([p.grad.clone() for p in pl_module.policy.model.parameters()])

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                micro = [m for mb in outputs["minibatches"] for m in mb.micro]
                record.layouts += [m.packed is not None for m in micro]
                record.slots += sum((m.packed.input_ids if m.packed is not None else m.ids).numel() for m in micro)

        self.callback = Callback()


def _grpo_step(tmp_path, packing, attn="sdpa"):
    import lightning.pytorch as pl

    from r1lightning.data import PromptDataModule
    from r1lightning.modules import GRPOModule
    from r1lightning.policy import PolicyConfig
    from r1lightning.rollout import SamplingSettings

    policy = PolicyConfig(model_name_or_path="r1lightning/assets/tiny_base", attn_implementation=attn)
    module = GRPOModule(policy=policy,
                        rewards=[length_reward], sampling=SamplingSettings(n=4, max_new_tokens=64, seed=5), beta=0.04,
                        num_minibatches=2, mu=2, packing=packing, micro_batch_tokens=512, lr=1e-3, export_dir="none")
    dm = PromptDataModule(train_data="synthetic:arithmetic?n=16&split=train&min_terms=2&max_terms=5", batch_size=4,
                          tokenizer=module.tokenizer)  # 2 to 5 terms: prompts and completions of different lengths
    rec = _Record()
    pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
               callbacks=[rec.callback]).fit(module, dm)
    return module, rec


def test_a_grpo_step_packed_equals_padded(tmp_path):
    """One rollout of 4 prompts x 4, mu 2 x 2 mini-batches = 4 optimizer steps with pi_old, the reference and
    several micro-batches: the same gradients before every step and the same weights after, to 1e-5."""
    padded, rec0 = _grpo_step(tmp_path, packing=False)
    packed, rec1 = _grpo_step(tmp_path, packing=True)
    assert rec0.layouts and not any(rec0.layouts)
    assert rec1.layouts and all(rec1.layouts) and rec1.slots < rec0.slots  # less padding computed
    assert len(rec0.grads) == len(rec1.grads) == 4, (rec0.slots, rec1.slots, rec0.layouts, rec1.layouts)
    for step0, step1 in zip(rec0.grads, rec1.grads):
        for a, b in zip(step0, step1):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    for a, b in zip(padded.policy.model.parameters(), packed.policy.model.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    start = _llama("sdpa")
    moved = max(float((a - b).abs().max()) for a, b in zip(start.parameters(), packed.policy.model.parameters()))
    assert moved > 1e-3  # the steps did move the weights


def test_grpo_pads_when_the_model_attends_across_packed_sequences(tmp_path):
    """The probe fails, so GRPO's prepare pads: no micro-batch is packed."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("whole_row_causal", lambda m, q, k, v, mask, **kw: sdpa_attention_forward(
        m, q, k, v, None, **kw))
    _, rec = _grpo_step(tmp_path, packing=True, attn="whole_row_causal")
    assert rec.layouts and not any(rec.layouts)


def test_an_empty_completion_still_counts_among_the_sequences(tiny_tokenizer):
    """Packing leaves an empty completion out of the rows (it scores nothing) but the 'grpo' loss still divides by
    every sequence of the mini-batch: the same normalisers and the same loss as the padded layout."""
    from r1lightning.modules import GRPOModule
    from r1lightning.modules.grpo import Trajectory
    from r1lightning.policy import PolicyConfig, TinyModelSettings
    from r1lightning.rollout import SamplingSettings
    from r1lightning.rollout.base import RolloutBatch

    module = GRPOModule(policy=PolicyConfig(tiny=TinyModelSettings(hidden_size=32, num_hidden_layers=2,
                                                                   num_attention_heads=2, intermediate_size=64)),
                        sampling=SamplingSettings(n=2, max_new_tokens=8), beta=0.04, export_dir="none")
    module.policy.tokenizer = tiny_tokenizer
    module.configure_model()
    completions = [[5, 6, 7], [], [8], [9, 10, 11, 12]]
    rollout = RolloutBatch(prompt_ids=[[3, 4, 5], [6, 7]], completion_ids=completions, texts=[""] * 4,
                           truncated=[False] * 4, n=2)
    traj = Trajectory(rollout=rollout, columns={}, rewards=torch.zeros(4), per_fn={},
                      advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]), loss_rows=torch.ones(4, dtype=torch.bool),
                      policy_version=0)
    losses = {}
    for packing in (False, True):
        module.hparams.packing = packing
        (mb,) = module.prepare(traj)
        assert mb.num_sequences == 4 and mb.num_tokens == 8
        assert all((m.packed is not None) == packing for m in mb.micro)
        total = 0.0
        for m in mb.micro:
            logp, _ = module.policy_logprobs(m)
            loss, _ = grpo_loss(logp, logp.detach(), m.ref_logp, m.adv, m.cmask, beta=0.04, max_len=8,
                                total_tokens=mb.num_tokens, num_sequences=mb.num_sequences)
            total += float(loss)
        losses[packing] = total
    assert losses[True] == pytest.approx(losses[False], abs=1e-6)
