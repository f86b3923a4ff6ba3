"""Rollouts with Hugging Face ``generate`` on the live training model (no weight copy, no sync)."""

from __future__ import annotations

import time

import torch

from r1lightning.rollout.base import EngineSettings, RolloutBatch, RolloutEngine, SamplingSettings


class HFRolloutEngine(RolloutEngine):
    """Samples with the policy's own model, in chunks of ``max_batch_size`` sequences.

    The model is put in eval mode for generation (no dropout) and restored afterwards.
    """

    def __init__(self, policy, max_batch_size: int = 256):
        self.policy = policy
        self.max_batch_size = max_batch_size

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingSettings) -> RolloutBatch:
        tok = self.policy.tokenizer
        model = self.policy.build()
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        rows = [p for p in prompt_ids for _ in range(sampling.n)]  # group-contiguous
        completions: list[list[int]] = []
        truncated: list[bool] = []
        logprobs: list[list[float]] = [] if sampling.logprobs else None
        eos = tok.eos_token_id
        gen = None
        if sampling.seed is not None:
            gen = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
            gen.__enter__()
            torch.manual_seed(sampling.seed)
        t0 = time.perf_counter()
        try:
            for start in range(0, len(rows), self.max_batch_size):
                chunk = rows[start : start + self.max_batch_size]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
                attn = torch.zeros_like(ids)
                for i, p in enumerate(chunk):  # left padding
                    ids[i, width - len(p) :] = torch.tensor(p)
                    attn[i, width - len(p) :] = 1
                kwargs = dict(
                    do_sample=sampling.temperature > 0,
                    max_new_tokens=sampling.max_new_tokens,
                    eos_token_id=eos,
                    pad_token_id=tok.pad_token_id,
                    return_dict_in_generate=True,
                    output_scores=sampling.logprobs,
                )
                if sampling.temperature > 0:
                    kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None)
                if sampling.stop:
                    kwargs.update(stop_strings=sampling.stop, tokenizer=tok)
                out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **kwargs)
                new = out.sequences[:, width:].cpu()
                if sampling.logprobs:
                    # scores are the processed (temperature / top-p) logits the sampler drew from
                    step_lp = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1).cpu()
                for i in range(new.shape[0]):
                    seq = new[i].tolist()
                    cut, stopped = len(seq), False
                    for j, t in enumerate(seq):
                        if t == eos:
                            cut, stopped = j + 1, True
                            break
                    else:
                        # trailing pads after an early stop-string finish
                        while cut > 0 and seq[cut - 1] == tok.pad_token_id:
                            cut -= 1
                            stopped = True
                    completions.append(seq[:cut])
                    truncated.append(not stopped and cut >= sampling.max_new_tokens)
                    if sampling.logprobs:
                        lp = step_lp[i, torch.arange(cut), torch.tensor(seq[:cut], dtype=torch.long)]
                        logprobs.append(lp.tolist())
        finally:
            if gen is not None:
                gen.__exit__(None, None, None)
            if was_training:
                model.train()
        elapsed = time.perf_counter() - t0
        texts = tok.batch_decode(completions, skip_special_tokens=True)
        ntok = sum(len(c) for c in completions)
        return RolloutBatch(
            prompt_ids=list(prompt_ids), completion_ids=completions, texts=texts, truncated=truncated,
            n=sampling.n, logprobs=logprobs,
            stats={"generate_s": elapsed, "tokens": ntok, "tokens_per_s": ntok / max(elapsed, 1e-9)},
        )


class HFEngineSettings(EngineSettings):
    """Sample with transformers ``generate`` on the training model itself (no weight copy, no sync)."""

    def __init__(self, max_batch_size: int = 256):
        """
        Args:
            max_batch_size: Sequences generated at once (prompts x G are split into chunks of this size).
        """
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        self.max_batch_size = max_batch_size

    def build(self, policy) -> HFRolloutEngine:
        return HFRolloutEngine(policy, max_batch_size=self.max_batch_size)
