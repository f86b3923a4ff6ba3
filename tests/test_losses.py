"""GRPO / KD losses: hand cases, naive loop references and torch built-ins, edge cases."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence

from r1lightning.losses import (aggregate_loss, clipped_surrogate, grpo_loss, kd_loss, kl_estimate,
                                 truncated_importance_weights)

LN = math.log


def _close(actual, expected, atol=1e-6):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def _batch(seed=0, b=6, t=5, dtype=torch.float32):
    """Random log-probs and a ragged mask with one empty row (row 2)."""
    gen = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(b, t, generator=gen, dtype=dtype) * 2).requires_grad_()
    old = logp.detach() + torch.randn(b, t, generator=gen, dtype=dtype) * 0.3
    ref = logp.detach() + torch.randn(b, t, generator=gen, dtype=dtype) * 0.3
    adv = torch.randn(b, generator=gen, dtype=dtype)
    lengths = torch.tensor([5, 3, 0, 1, 4, 2][:b])
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (B, T)
    return logp, old, ref, adv, mask


# ================================================================ KL estimators


def test_kl_hand():
    # logp = -1, ref = -2: log r = ref - logp = -1
    #   k1 = -log r = 1;  k2 = (log r)^2 / 2 = 0.5;  k3 = exp(-1) - (-1) - 1 = 0.36788
    # logp = -2, ref = -1: log r = 1
    #   k1 = -1;  k2 = 0.5;  k3 = e - 1 - 1 = 0.71828
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-2.0, -1.0]])
    _close(kl_estimate(logp, ref, "k1"), [[1.0, -1.0]])
    _close(kl_estimate(logp, ref, "k2"), [[0.5, 0.5]])
    _close(kl_estimate(logp, ref, "k3"), [[0.3678794, 0.7182818]])
    _close(kl_estimate(logp, ref), [[0.3678794, 0.7182818]])  # k3 is the default


def test_k3_gradient_hand():
    # d k3 / d logp = d/dlogp [exp(ref - logp) - (ref - logp) - 1] = -exp(ref - logp) + 1
    # at logp = -1, ref = -2: 1 - exp(-1) = 0.63212
    logp = torch.tensor([[-1.0]], requires_grad=True)
    kl_estimate(logp, torch.tensor([[-2.0]]), "k3").sum().backward()
    _close(logp.grad, [[0.6321206]])


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_unbiased_estimators_match_exact_kl(kind):
    # k1 and k3 are unbiased: their expectation under tokens x ~ pi is KL(pi || pi_ref) exactly,
    # so weighting every vocabulary entry by pi(x) must give torch.distributions' KL.
    gen = torch.Generator().manual_seed(0)
    pi_logits, ref_logits = torch.randn(2, 4, 7, generator=gen, dtype=torch.float64)  # (B=4, V=7)
    logp, ref = pi_logits.log_softmax(-1), ref_logits.log_softmax(-1)  # (B, V): all tokens as "T"
    expectation = (logp.exp() * kl_estimate(logp, ref, kind)).sum(-1)  # (B,)
    exact = kl_divergence(Categorical(logits=pi_logits), Categorical(logits=ref_logits))
    torch.testing.assert_close(expectation, exact, atol=1e-12, rtol=0)


def test_kl_matches_naive_loop():
    logp, _, ref, _, _ = _batch(1)
    for kind in ("k1", "k2", "k3"):
        out = kl_estimate(logp, ref, kind)
        for b in range(logp.shape[0]):
            for t in range(logp.shape[1]):
                lr = ref[b, t].item() - logp[b, t].item()
                want = {"k1": -lr, "k2": 0.5 * lr * lr, "k3": math.exp(lr) - lr - 1}[kind]
                assert out[b, t].item() == pytest.approx(want, abs=1e-6), (kind, b, t)


def test_kl_edges():
    logp, _, ref, _, _ = _batch(2)
    for kind in ("k1", "k2", "k3"):  # pi == pi_ref -> exactly 0
        assert torch.equal(kl_estimate(logp, logp.detach(), kind), torch.zeros_like(logp))
    assert (kl_estimate(logp, ref, "k3") >= 0).all()  # k3 is non-negative
    # k3 near pi == pi_ref: exp(x) - 1 - x for x = 1e-4 is 5e-9; expm1 keeps the relative accuracy
    k3 = kl_estimate(torch.tensor([[0.0]]), torch.tensor([[1e-4]]), "k3")
    assert k3.item() == pytest.approx(1e-8 / 2 + 1e-12 / 6, rel=1e-3)
    # masked positions holding inf / nan give 0 and a clean (zero) gradient
    lp = torch.tensor([[-1.0, float("-inf"), float("nan")]], requires_grad=True)
    rf = torch.tensor([[-2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, False, False]])
    out = kl_estimate(lp, rf, "k3", mask=mask)
    _close(out.detach(), [[0.3678794, 0.0, 0.0]])
    out.sum().backward()
    _close(lp.grad, [[0.6321206, 0.0, 0.0]])
    with pytest.raises(ValueError, match="kind"):
        kl_estimate(logp, ref, "k4")
    with pytest.raises(ValueError, match="shape"):
        kl_estimate(logp, ref[:, :2])


# ================================================================ clipped surrogate


def _ratios_case():
    # B = 2 sequences, T = 2 tokens, ratios [1.5, 0.5] in both; A = +1 and A = -2
    old = torch.zeros(2, 2)
    logp = torch.tensor([[LN(1.5), LN(0.5)], [LN(1.5), LN(0.5)]], requires_grad=True)
    adv = torch.tensor([1.0, -2.0])
    mask = torch.ones(2, 2, dtype=torch.bool)
    return logp, old, adv, mask


def test_surrogate_hand_eps_02():
    logp, old, adv, mask = _ratios_case()
    loss, stats = clipped_surrogate(logp, old, adv, mask, epsilon_low=0.2)
    # (0,0) A=+1, r=1.5: min(1.5, clip 1.2) = 1.2 -> loss -1.2   (clip_high)
    # (0,1) A=+1, r=0.5: min(0.5, clip 0.8) = 0.5 -> loss -0.5   (unclipped: min picks r*A)
    # (1,0) A=-2, r=1.5: min(-3.0, 1.2*-2 = -2.4) = -3 -> loss 3 (unclipped)
    # (1,1) A=-2, r=0.5: min(-1.0, 0.8*-2 = -1.6) = -1.6 -> loss 1.6 (clip_low)
    _close(loss.detach(), [[-1.2, -0.5], [3.0, 1.6]])
    _close(stats["clip_low"], 0.25)  # 1 of 4 tokens
    _close(stats["clip_high"], 0.25)
    _close(stats["clip_region"], 0.5)
    _close(stats["ratio_mean"], 1.0)  # (1.5 + 0.5 + 1.5 + 0.5) / 4
    _close(stats["ratio_max"], 1.5)
    # d(-r*A)/dlogp = -r*A on unclipped tokens, 0 on clipped ones:
    # (0,1): -0.5*1 = -0.5; (1,0): -1.5*-2 = 3
    loss.sum().backward()
    _close(logp.grad, [[0.0, -0.5], [3.0, 0.0]])


def test_surrogate_hand_clip_higher():
    logp, old, adv, mask = _ratios_case()
    loss, stats = clipped_surrogate(logp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.28)
    # (0,0) now capped at 1.28 -> -1.28; the low side is unchanged
    _close(loss.detach(), [[-1.28, -0.5], [3.0, 1.6]])
    _close(stats["clip_high"], 0.25)


def test_surrogate_hand_eps_10_is_unclipped():
    # R1 (Nature) epsilon = 10: bounds [1 - 10, 1 + 10] = [-9, 11], so loss = -r*A everywhere
    logp, old, adv, mask = _ratios_case()
    loss, stats = clipped_surrogate(logp, old, adv, mask, epsilon_low=10.0, epsilon_high=10.0)
    _close(loss.detach(), [[-1.5, -0.5], [3.0, 1.0]])
    assert stats["clip_region"].item() == 0.0
    # ratio 20 with A = +1 is capped at 11 (loss -11), with A = -1 not (loss 20); nothing NaN
    big = torch.full((2, 1), LN(20.0), requires_grad=True)
    loss, stats = clipped_surrogate(big, torch.zeros(2, 1), torch.tensor([1.0, -1.0]), torch.ones(2, 1), 10.0)
    _close(loss.detach(), [[-11.0], [20.0]], atol=1e-5)
    _close(stats["clip_high"], 0.5)
    loss.sum().backward()
    assert torch.isfinite(big.grad).all()


def test_surrogate_hand_dual_clip():
    # A = -1, ratios [5, 2], delta = 3:
    #   r=5: min(-5, 1.2*-1) = -5, floored at delta*A = -3 -> loss 3 (clip_dual), gradient 0
    #   r=2: min(-2, -1.2) = -2 > -3 -> loss 2
    logp = torch.tensor([[LN(5.0), LN(2.0)]], requires_grad=True)
    loss, stats = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2), delta=3.0)
    _close(loss.detach(), [[3.0, 2.0]], atol=1e-5)
    _close(stats["clip_dual"], 0.5)
    loss.sum().backward()
    _close(logp.grad, [[0.0, 2.0]], atol=1e-5)  # d(-r*A)/dlogp = r = 2 on the second token
    # dual clip leaves positive advantages alone
    loss, _ = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2), delta=3.0)
    _close(loss.detach(), [[-1.2, -1.2]])


def _surrogate_loop(logp, old, adv, mask, el, eh, delta):
    """Naive per-token reference in Python floats."""
    b_, t_ = logp.shape
    out = torch.zeros(b_, t_, dtype=torch.float64)
    for b in range(b_):
        for t in range(t_):
            if not mask[b, t]:
                continue
            a = adv[b, t].item() if adv.dim() == 2 else adv[b].item()
            r = math.exp(logp[b, t].item() - old[b, t].item())
            obj = min(r * a, min(max(r, 1 - el), 1 + eh) * a)
            if delta is not None and a < 0:
                obj = max(obj, delta * a)
            out[b, t] = -obj
    return out


@pytest.mark.parametrize("el, eh, delta", [(0.2, 0.2, None), (0.2, 0.28, None), (0.1, 0.3, 1.5), (10.0, 10.0, None)])
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_surrogate_matches_loop(el, eh, delta, per_token_adv):
    logp, old, _, adv, mask = _batch(3, dtype=torch.float64)
    old = logp.detach() + torch.randn(logp.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    if per_token_adv:
        adv = torch.randn(logp.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    loss, stats = clipped_surrogate(logp, old, adv, mask, el, eh, delta)
    torch.testing.assert_close(loss.detach(), _surrogate_loop(logp, old, adv, mask, el, eh, delta), atol=1e-12, rtol=0)
    # clip fractions by the definitions, over masked tokens
    ratio = (logp - old).exp().detach()
    a = adv if per_token_adv else adv[:, None].expand_as(ratio)
    low = ((ratio < 1 - el) & (a < 0))[mask].double().mean()
    high = ((ratio > 1 + eh) & (a > 0))[mask].double().mean()
    torch.testing.assert_close(stats["clip_low"], low, atol=1e-12, rtol=0)
    torch.testing.assert_close(stats["clip_high"], high, atol=1e-12, rtol=0)
    torch.testing.assert_close(stats["clip_region"], low + high, atol=1e-12, rtol=0)
    torch.testing.assert_close(stats["ratio_mean"], ratio[mask].mean(), atol=1e-12, rtol=0)


def test_surrogate_edges():
    # masked positions with inf/nan log-probs: loss exactly 0 there, gradients finite and 0
    logp = torch.tensor([[-1.0, float("inf"), float("nan")]], requires_grad=True)
    old = torch.tensor([[-1.0, float("-inf"), 0.0]])
    mask = torch.tensor([[1, 0, 0]])  # 0/1 ints are accepted
    loss, stats = clipped_surrogate(logp, old, torch.tensor([2.0]), mask)
    _close(loss.detach(), [[-2.0, 0.0, 0.0]])  # ratio 1 -> -A
    loss.sum().backward()
    _close(logp.grad, [[-2.0, 0.0, 0.0]])
    # fully masked: zero loss, zero stats, no NaN
    loss, stats = clipped_surrogate(torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2), torch.zeros(2, 3))
    assert torch.equal(loss, torch.zeros(2, 3))
    assert all(v.item() == 0.0 for v in stats.values())
    # half precision is computed in float32
    bf16 = torch.zeros(1, 2, dtype=torch.bfloat16)
    loss, _ = clipped_surrogate(bf16, torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2))
    assert loss.dtype == torch.float32


def test_surrogate_validates():
    z, m = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="clip ranges"):
        clipped_surrogate(z, z, torch.ones(2), m, epsilon_low=-0.1)
    with pytest.raises(ValueError, match="delta"):
        clipped_surrogate(z, z, torch.ones(2), m, delta=1.0)
    with pytest.raises(ValueError, match="advantages"):
        clipped_surrogate(z, z, torch.ones(3), m)
    with pytest.raises(ValueError, match="old_logp"):
        clipped_surrogate(z, torch.zeros(2, 4), torch.ones(2), m)


# ================================================================ aggregation


def _agg_case():
    # rows: 3 tokens [1, 2, 3]; 1 token [4]; empty row (its values are garbage: must be ignored)
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [float("nan"), 7.0, float("inf")]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    return loss, mask


def test_aggregate_hand():
    loss, mask = _agg_case()
    # grpo: per-sequence means 6/3 = 2, 4/1 = 4, empty -> 0; over B = 3 sequences: 6/3 = 2
    _close(aggregate_loss(loss, mask, "grpo"), 2.0)
    _close(aggregate_loss(loss, mask, "grpo", num_sequences=6), 1.0)  # 6 / 6
    # token_mean: (1 + 2 + 3 + 4) / 4 tokens = 2.5; with the step's total_tokens = 8: 10 / 8 = 1.25
    _close(aggregate_loss(loss, mask, "token_mean"), 2.5)
    _close(aggregate_loss(loss, mask, "token_mean", total_tokens=8), 1.25)
    _close(aggregate_loss(loss, mask, "token_mean", total_tokens=torch.tensor(8)), 1.25)
    # dr_grpo: 10 / (B=3 * T=3) = 1.11111; max_len = 5: 10 / 15 = 0.66667; + num_sequences 4: 10 / 20
    _close(aggregate_loss(loss, mask, "dr_grpo"), 10 / 9)
    _close(aggregate_loss(loss, mask, "dr_grpo", max_len=5), 10 / 15)
    _close(aggregate_loss(loss, mask, "dr_grpo", max_len=5, num_sequences=4), 0.5)
    # each mode reads only its own normalisers, so a trainer can pass all of them
    _close(aggregate_loss(loss, mask, "grpo", total_tokens=100, max_len=100), 2.0)


def _aggregate_loop(loss, mask, mode, max_len=None, total_tokens=None, num_sequences=None):
    b_, t_ = loss.shape
    rows = [[loss[b, t].item() for t in range(t_) if mask[b, t]] for b in range(b_)]
    total = sum(sum(r) for r in rows)
    if mode == "grpo":
        return sum(sum(r) / len(r) for r in rows if r) / (num_sequences or b_)
    if mode == "token_mean":
        return total / max(total_tokens if total_tokens is not None else sum(map(len, rows)), 1)
    return total / ((num_sequences or b_) * (max_len or t_))


@pytest.mark.parametrize("mode", ["grpo", "token_mean", "dr_grpo"])
def test_aggregate_matches_loop(mode):
    gen = torch.Generator().manual_seed(5)
    loss = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    mask = torch.rand(7, 6, generator=gen) < 0.6
    mask[3] = False  # an empty row
    for kw in ({}, {"num_sequences": 10, "max_len": 8, "total_tokens": 40.0}):
        got = aggregate_loss(loss, mask, mode, **kw).item()
        assert got == pytest.approx(_aggregate_loop(loss, mask, mode, **kw), abs=1e-12)


@pytest.mark.parametrize("mode", ["grpo", "token_mean", "dr_grpo"])
def test_aggregate_fully_masked_is_zero_not_nan(mode):
    x = torch.full((2, 3), float("nan"), requires_grad=True)
    out = aggregate_loss(x, torch.zeros(2, 3, dtype=torch.bool), mode)
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(x.grad, torch.zeros(2, 3))
    assert aggregate_loss(torch.ones(2, 3), torch.zeros(2, 3), mode, total_tokens=0).item() == 0.0
    assert aggregate_loss(torch.ones(0, 3), torch.ones(0, 3), mode).item() == 0.0  # empty micro-batch
    assert aggregate_loss(torch.ones(2, 0), torch.ones(2, 0), mode).item() == 0.0  # zero-length completions


def test_aggregate_validates():
    loss, mask = _agg_case()
    with pytest.raises(ValueError, match="mode"):
        aggregate_loss(loss, mask, "seq_mean")
    with pytest.raises(ValueError, match="num_sequences"):
        aggregate_loss(loss, mask, "grpo", num_sequences=0)
    with pytest.raises(ValueError, match="max_len"):
        aggregate_loss(loss, mask, "dr_grpo", max_len=0)
    with pytest.raises(ValueError, match="total_tokens"):
        aggregate_loss(loss, mask, "token_mean", total_tokens=-1)
    with pytest.raises(ValueError, match="per_token_loss"):
        aggregate_loss(loss[:, :2], mask)


# ================================================================ GRPO loss


def test_grpo_on_policy_gradient_hand():
    # mu = 1 (old_logp None -> logp.detach()): ratio = 1, never clipped, per-token loss -A with
    # gradient -A per token before aggregation. A = [1, -0.5], lengths 3 and 1 (4 tokens).
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -7.0, -7.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5])
    # token_mean: loss = -(1 + 1 + 1 - 0.5) / 4 = -0.625; grad = -A / 4 -> -0.25 and +0.125
    loss, stats = grpo_loss(logp, None, None, adv, mask, loss_agg="token_mean")
    _close(loss.detach(), -0.625)
    loss.backward()
    _close(logp.grad, [[-0.25, -0.25, -0.25], [0.125, 0.0, 0.0]])
    assert stats["clip_region"].item() == 0.0 and stats["ratio_mean"].item() == 1.0
    # grpo: -A_i / (n_i * B): -1 / (3 * 2) = -0.16667 and 0.5 / (1 * 2) = 0.25;
    # loss = (-3/3 + 0.5/1) / 2 = -0.25
    logp.grad = None
    loss, _ = grpo_loss(logp, None, None, adv, mask, loss_agg="grpo")
    _close(loss.detach(), -0.25)
    loss.backward()
    _close(logp.grad, [[-1 / 6, -1 / 6, -1 / 6], [0.25, 0.0, 0.0]])
    # dr_grpo: -A_i / (B * T) = -1/6 and 0.5/6
    logp.grad = None
    loss, _ = grpo_loss(logp, None, None, adv, mask, loss_agg="dr_grpo")
    loss.backward()
    _close(logp.grad, [[-1 / 6, -1 / 6, -1 / 6], [0.5 / 6, 0.0, 0.0]])


def test_grpo_kl_term_hand():
    # A = 0 so only the KL term is left: logp = -1, ref = -2 on every token -> k3 = 0.36788,
    # loss = beta * 0.36788 = 0.1 * 0.36788 = 0.036788 (any aggregation: every token equal, all rows full)
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    ref = torch.full((2, 3), -2.0)
    mask = torch.ones(2, 3, dtype=torch.bool)
    for agg in ("grpo", "token_mean", "dr_grpo"):
        loss, stats = grpo_loss(logp, None, ref, torch.zeros(2), mask, beta=0.1, loss_agg=agg)
        _close(loss.detach(), 0.0367879)
        _close(stats["kl"], 0.3678794)
        _close(stats["policy_loss"], 0.0)
    # gradient: beta * (1 - exp(-1)) / 6 tokens (token_mean) = 0.1 * 0.63212 / 6 = 0.010535
    loss, _ = grpo_loss(logp, None, ref, torch.zeros(2), mask, beta=0.1, loss_agg="token_mean")
    loss.backward()
    _close(logp.grad, torch.full((2, 3), 0.0105353))


def test_grpo_beta_zero_has_no_kl_term():
    logp, old, ref, adv, mask = _batch(6)
    l0, s0 = grpo_loss(logp, old, None, adv, mask, beta=0.0)
    (g0,) = torch.autograd.grad(l0, logp)
    l1, s1 = grpo_loss(logp, old, ref, adv, mask, beta=0.0)  # ref given: logged only
    (g1,) = torch.autograd.grad(l1, logp)
    assert torch.equal(l0, l1) and torch.equal(g0, g1)
    assert "kl" not in s0 and s1["kl"].item() > 0
    l2, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.5)
    assert not torch.allclose(l0, l2)  # and beta > 0 does change it


def _grpo_loop(logp, old, ref, adv, mask, beta, el, eh, agg):
    """Naive reference: per-token surrogate + beta * k3, aggregated by loop."""
    per_tok = _surrogate_loop(logp, old, adv, mask, el, eh, None)
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if mask[b, t]:
                lr = ref[b, t].item() - logp[b, t].item()
                per_tok[b, t] += beta * (math.exp(lr) - lr - 1)
    return _aggregate_loop(per_tok, mask, agg)


@pytest.mark.parametrize("agg", ["grpo", "token_mean", "dr_grpo"])
def test_grpo_matches_loop(agg):
    logp, old, ref, adv, mask = _batch(7, dtype=torch.float64)
    loss, stats = grpo_loss(logp, old, ref, adv, mask, beta=0.04, epsilon_low=0.2, epsilon_high=0.28, loss_agg=agg)
    assert loss.item() == pytest.approx(_grpo_loop(logp, old, ref, adv, mask, 0.04, 0.2, 0.28, agg), abs=1e-12)
    assert stats["num_tokens"].item() == 15  # 5 + 3 + 0 + 1 + 4 + 2
    kl = (ref - logp.detach()).exp() - (ref - logp.detach()) - 1
    torch.testing.assert_close(stats["kl"], kl[mask].mean(), atol=1e-12, rtol=0)
    assert all(not v.requires_grad for v in stats.values())


@pytest.mark.parametrize("agg", ["grpo", "token_mean", "dr_grpo"])
def test_micro_batches_sum_to_full_batch(agg):
    # The trainer splits a rollout batch into micro-batches and accumulates gradients: with the
    # step-wide normalisers, the sum of micro-batch losses and gradients equals the full batch.
    logp, old, ref, adv, mask = _batch(8, b=6, t=5)
    norms = dict(num_sequences=6, max_len=5, total_tokens=mask.sum())
    kw = dict(beta=0.01, epsilon_low=0.2, epsilon_high=0.28, loss_agg=agg)
    full, _ = grpo_loss(logp, old, ref, adv, mask, **kw)  # defaults: B, T, this batch's tokens
    (g_full,) = torch.autograd.grad(full, logp)
    total = torch.zeros(())
    g_sum = torch.zeros_like(logp)
    for idx in (slice(0, 2), slice(2, 4), slice(4, 6)):  # 3 micro-batches; one holds the empty row
        part, _ = grpo_loss(logp[idx], old[idx], ref[idx], adv[idx], mask[idx], **kw, **norms)
        (g,) = torch.autograd.grad(part, logp)
        total, g_sum = total + part.detach(), g_sum + g
    torch.testing.assert_close(total, full.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(g_sum, g_full, atol=1e-6, rtol=0)
    # same for plain aggregate_loss
    per_tok = torch.randn(6, 5, generator=torch.Generator().manual_seed(2))
    parts = sum(aggregate_loss(per_tok[i : i + 2], mask[i : i + 2], agg, **norms) for i in (0, 2, 4))
    torch.testing.assert_close(parts, aggregate_loss(per_tok, mask, agg), atol=1e-6, rtol=0)


def test_grpo_edges():
    logp, old, ref, adv, mask = _batch(9)
    # fully masked batch: loss 0, gradient 0, stats finite
    none = torch.zeros_like(mask)
    for agg in ("grpo", "token_mean", "dr_grpo"):
        loss, stats = grpo_loss(logp, old, ref, adv, none, beta=0.1, loss_agg=agg)
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, logp)
        assert torch.equal(g, torch.zeros_like(logp))
        assert all(torch.isfinite(v).all() for v in stats.values())
    # R1 Nature settings: epsilon 10, beta 0.001, with wild ratios: finite
    wild_old = logp.detach() + torch.linspace(-5, 5, logp.numel()).view_as(logp)
    loss, _ = grpo_loss(logp, wild_old, ref, adv, mask, beta=0.001, epsilon_low=10.0, epsilon_high=10.0)
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, None, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(logp, old, ref, adv, mask, beta=-0.1)


# ================================================================ distillation


def test_kd_hand():
    # V = 2. Teacher logits [0, 0] -> p = [0.5, 0.5]; student [ln 3, 0] -> q = [0.75, 0.25]
    teacher = torch.zeros(1, 1, 2)
    student = torch.tensor([[[LN(3.0), 0.0]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    # forward KL(p||q) = .5 ln(.5/.75) + .5 ln(.5/.25) = .5(-0.405465) + .5(0.693147) = 0.143841
    loss, stats = kd_loss(student, teacher, mask, "forward_kl")
    _close(loss, 0.1438410)
    # reverse KL(q||p) = .75 ln(1.5) + .25 ln(.5) = 0.304099 - 0.173287 = 0.130812
    _close(kd_loss(student, teacher, mask, "reverse_kl")[0], 0.1308120)
    # JSD(beta .5): m = [.625, .375]; KL(p||m) = .5 ln(.8) + .5 ln(4/3) = 0.032269,
    # KL(q||m) = .75 ln(1.2) + .25 ln(2/3) = 0.035375; .5 * (0.032269 + 0.035375) = 0.033822
    _close(kd_loss(student, teacher, mask, "jsd")[0], 0.0338221)
    # temperature 2: q = softmax([ln3 / 2, 0]) = [sqrt3, 1] / (sqrt3 + 1) = [0.633975, 0.366025];
    # KL(p||q) = .5 ln(.5/.633975) + .5 ln(.5/.366025) = 0.037252
    _close(kd_loss(student, teacher, mask, "forward_kl", temperature=2.0)[0], 0.0372523)
    assert stats["top1_agreement"].item() == 1.0  # argmax: teacher tie -> index 0, student index 0


def _kd_reference(student, teacher, mask, kind, temperature=1.0, beta=0.5):
    """torch.distributions / F.kl_div per token, masked mean by loop."""
    s, t = student / temperature, teacher / temperature
    if kind == "forward_kl":
        per = kl_divergence(Categorical(logits=t), Categorical(logits=s))  # (B, T)
        if torch.isfinite(t).all():  # F.kl_div gives NaN for p = 0 entries given as log p = -inf
            per_fkl = F.kl_div(s.log_softmax(-1), t.log_softmax(-1), reduction="none", log_target=True).sum(-1)
            torch.testing.assert_close(per, per_fkl, atol=1e-12, rtol=0)  # the two built-ins agree
    elif kind == "reverse_kl":
        per = kl_divergence(Categorical(logits=s), Categorical(logits=t))
    else:
        p, q = t.softmax(-1), s.softmax(-1)
        m = Categorical(probs=beta * p + (1 - beta) * q)
        per = beta * kl_divergence(Categorical(probs=p), m) + (1 - beta) * kl_divergence(Categorical(probs=q), m)
    vals = [per[b, i].item() for b in range(mask.shape[0]) for i in range(mask.shape[1]) if mask[b, i]]
    return sum(vals) / max(len(vals), 1)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature, beta", [(1.0, 0.5), (0.7, 0.2)])
def test_kd_matches_builtins(kind, temperature, beta):
    gen = torch.Generator().manual_seed(11)
    student = torch.randn(3, 4, 9, generator=gen, dtype=torch.float64) * 2
    teacher = torch.randn(3, 4, 9, generator=gen, dtype=torch.float64) * 2
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    loss, _ = kd_loss(student, teacher, mask, kind, temperature=temperature, jsd_beta=beta)
    assert loss.item() == pytest.approx(_kd_reference(student, teacher, mask, kind, temperature, beta), abs=1e-12)


def test_kd_gradient_matches_builtin():
    # forward KL's gradient wrt student logits is softmax(s) - softmax(t), / number of tokens
    gen = torch.Generator().manual_seed(12)
    student = torch.randn(2, 3, 5, generator=gen, requires_grad=True)
    teacher = torch.randn(2, 3, 5, generator=gen, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    loss, _ = kd_loss(student, teacher, mask, "forward_kl")
    loss.backward()
    want = (student.softmax(-1) - teacher.softmax(-1)).detach() * mask[..., None] / 3
    torch.testing.assert_close(student.grad, want, atol=1e-6, rtol=0)
    assert teacher.grad is None  # the teacher is frozen


def test_kd_edges():
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(2, 3, 6, generator=gen)
    mask = torch.ones(2, 3, dtype=torch.bool)
    for kind in ("forward_kl", "reverse_kl", "jsd"):  # same distribution -> 0 (JSD: up to log(m) rounding)
        assert abs(kd_loss(logits, logits.clone(), mask, kind)[0].item()) <= (0.0 if "kl" in kind else 1e-6)
        loss, stats = kd_loss(logits, logits * 2, torch.zeros(2, 3), kind)  # fully masked
        assert loss.item() == 0.0 and stats["top1_agreement"].item() == 0.0
    # teacher with -inf logits (probability 0 tokens): forward KL ignores them, stays finite
    teacher = logits.clone()
    teacher[..., :2] = float("-inf")
    student = logits.clone().requires_grad_()
    loss, _ = kd_loss(student, teacher, mask, "forward_kl")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    # torch.distributions sets the p = 0 terms to 0 as well
    assert loss.item() == pytest.approx(_kd_reference(logits, teacher, mask, "forward_kl"), abs=1e-6)
    # bf16 logits are computed in float32; micro-batch normaliser
    loss16, _ = kd_loss(logits.bfloat16(), (logits * 2).bfloat16(), mask)
    assert loss16.dtype == torch.float32
    half, _ = kd_loss(logits, logits * 2, mask, total_tokens=12)
    _close(half, kd_loss(logits, logits * 2, mask)[0].item() / 2)  # 6 tokens of 12
    with pytest.raises(ValueError, match="kind"):
        kd_loss(logits, logits, mask, "tvd")
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(logits, logits, mask, temperature=0.0)
    with pytest.raises(ValueError, match="jsd_beta"):
        kd_loss(logits, logits, mask, "jsd", jsd_beta=1.0)
    with pytest.raises(ValueError, match="must both be"):
        kd_loss(logits, logits[..., :5], mask)
    with pytest.raises(ValueError, match="mask"):
        kd_loss(logits, logits, mask[:, :2])


# ---------------------------------------------------------------- truncated importance weights (async rollouts)
def _tis_case():
    """Two completions of 3 and 2 tokens; pi_old / pi_behaviour per token written as probabilities."""
    old = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.6, 0.7]]).log()
    beh = torch.tensor([[0.4, 0.4, 0.01], [0.3, 0.1, 0.9]]).log()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return old, beh, mask


def test_tis_weights_hand():
    old, beh, mask = _tis_case()
    w, stats = truncated_importance_weights(old, beh, mask, cap=2.0)
    # raw ratios: 0.5/0.4 = 1.25, 0.2/0.4 = 0.5, 0.1/0.01 = 10 -> cut to 2; 0.3/0.3 = 1, 0.6/0.1 = 6 -> cut to 2;
    # the third token of row 2 is padding -> 0
    _close(w, torch.tensor([[1.25, 0.5, 2.0], [1.0, 2.0, 0.0]]), atol=1e-5)
    _close(stats["tis_mean"], (1.25 + 0.5 + 2 + 1 + 2) / 5, atol=1e-6)  # 6.75 / 5 = 1.35
    _close(stats["tis_max"], 10.0, atol=1e-4)  # before truncation
    _close(stats["tis_min"], 0.5, atol=1e-6)
    _close(stats["tis_truncated"], 2 / 5)  # 10 and 6 were cut
    assert not w.requires_grad


def test_grpo_loss_with_behaviour_hand():
    old, beh, mask = _tis_case()
    logp = old.clone().requires_grad_(True)  # first pass: pi = pi_old, the PPO ratio is 1 (nothing clipped)
    adv = torch.tensor([1.0, -2.0])
    loss, stats = grpo_loss(logp, old, None, adv, mask, behaviour_logp=beh, tis_cap=2.0, loss_agg="grpo")
    # per token -w * rho * A: row 1 -(1.25 + 0.5 + 2) * 1 / 3 tokens = -1.25; row 2 -(1 + 2) * (-2) / 2 = +3
    # grpo aggregation: (-1.25 + 3) / 2 sequences = 0.875
    _close(loss, 0.875, atol=1e-5)
    _close(stats["policy_loss"], 0.875, atol=1e-5)
    loss.backward()
    # d/dlogp of -w * exp(logp - old) * A / (n_i * B) at logp = old: -w * A / (n_i * 2)
    want = torch.tensor([[-1.25 / 6, -0.5 / 6, -2.0 / 6], [2.0 / 4, 4.0 / 4, 0.0]])
    _close(logp.grad, want, atol=1e-5)
    _close(stats["tis_mean"], 1.35, atol=1e-6)


def _tis_loop(old, beh, mask, cap):
    out = torch.zeros_like(old, dtype=torch.float64)
    for b in range(old.shape[0]):
        for t in range(old.shape[1]):
            if mask[b, t]:
                out[b, t] = min(math.exp(float(old[b, t]) - float(beh[b, t])), cap)
    return out


@pytest.mark.parametrize("cap", [0.5, 1.0, 2.0, 10.0])
def test_tis_weights_match_loop(cap):
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(5, 7, generator=g, dtype=torch.float64) * 4
    beh = old + torch.randn(5, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(5, 7, generator=g) > 0.3
    w, stats = truncated_importance_weights(old, beh, mask, cap)
    want = _tis_loop(old, beh, mask, cap)
    _close(w, want, atol=1e-12)
    raw = [math.exp(float(old[b, t] - beh[b, t])) for b in range(5) for t in range(7) if mask[b, t]]
    _close(stats["tis_mean"], float(want.sum()) / len(raw), atol=1e-12)
    _close(stats["tis_max"], max(raw), atol=1e-9)
    _close(stats["tis_truncated"], sum(r > cap for r in raw) / len(raw), atol=1e-12)


def test_grpo_loss_with_behaviour_matches_loop():
    # several passes (logp != old): per token -w * min(rho A, clip(rho) A), w from the loop above
    g = torch.Generator().manual_seed(5)
    old = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 3
    logp = (old + 0.3 * torch.randn(4, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    beh = old + 0.5 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    adv = torch.randn(4, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 6, generator=g) > 0.2
    loss, _ = grpo_loss(logp, old, None, adv, mask, behaviour_logp=beh, tis_cap=1.5, loss_agg="token_mean")
    w = _tis_loop(old, beh, mask, 1.5)
    total, n = 0.0, 0
    for b in range(4):
        for t in range(6):
            if mask[b, t]:
                rho = math.exp(float(logp.detach()[b, t] - old[b, t]))
                a = float(adv[b])
                total += -w[b, t] * min(rho * a, min(max(rho, 0.8), 1.2) * a)
                n += 1
    _close(loss, total / n, atol=1e-10)


def test_tis_edges():
    old, beh, mask = _tis_case()
    # behaviour == pi_old (synchronous, matching engine): every weight 1, the loss is the unweighted one
    w, stats = truncated_importance_weights(old, old, mask)
    _close(w, mask.float())
    logp = old + 0.1
    plain, _ = grpo_loss(logp, old, None, torch.tensor([1.0, -1.0]), mask)
    weighted, _ = grpo_loss(logp, old, None, torch.tensor([1.0, -1.0]), mask, behaviour_logp=old)
    _close(weighted, plain, atol=1e-7)
    # fully masked: zero weights and zero stats, no NaN
    w, stats = truncated_importance_weights(old, beh, torch.zeros_like(mask))
    assert float(w.abs().sum()) == 0.0 and all(float(v) == 0.0 for v in stats.values())
    # garbage at padding (inf / NaN behaviour log-probs) never reaches the weights, the loss or the gradient
    beh_bad = beh.clone()
    beh_bad[1, 2] = float("-inf")
    old_bad = old.clone()
    old_bad[1, 2] = float("nan")
    w, stats = truncated_importance_weights(old_bad, beh_bad, mask, 2.0)
    assert torch.isfinite(w).all() and float(w[1, 2]) == 0.0 and math.isfinite(float(stats["tis_max"]))
    lp = old_bad.clone().requires_grad_(True)
    loss, _ = grpo_loss(lp, old_bad, None, torch.tensor([1.0, 1.0]), mask, behaviour_logp=beh_bad)
    loss.backward()
    assert math.isfinite(float(loss)) and torch.isfinite(lp.grad).all()
    # no gradient through the weights even when pi_old carries one
    w, _ = truncated_importance_weights(old.clone().requires_grad_(True), beh, mask)
    assert not w.requires_grad


def test_tis_validates():
    old, beh, mask = _tis_case()
    with pytest.raises(ValueError, match="cap"):
        truncated_importance_weights(old, beh, mask, cap=0.0)
    with pytest.raises(ValueError, match="behaviour_logp"):
        truncated_importance_weights(old, beh[:, :2], mask)


def test_tis_without_old_logp_is_the_single_pass_case():
    """Asynchronous rollouts with one update per batch skip the pi_old forward: old_logp None means pi_old is the
    current policy before its only update, so loss, gradient and weights equal passing logp.detach() explicitly."""
    old, beh, mask = _tis_case()
    adv = torch.tensor([0.7, -1.3])
    a = old.clone().requires_grad_(True)
    b = old.clone().requires_grad_(True)
    la, sa = grpo_loss(a, None, None, adv, mask, behaviour_logp=beh, tis_cap=2.0)
    lb, sb = grpo_loss(b, b.detach(), None, adv, mask, behaviour_logp=beh, tis_cap=2.0)
    la.backward()
    lb.backward()
    assert float(la) == float(lb) and torch.equal(a.grad, b.grad)
    assert float(sa["tis_mean"]) == float(sb["tis_mean"]) and float(sa["tis_max"]) == float(sb["tis_max"])
    # and the weights are really applied: without the behaviour policy the loss differs
    lc, _ = grpo_loss(old.clone().requires_grad_(True), None, None, adv, mask)
    assert float(lc) != float(la)
