"""Rejection sampling's filters (DeepSeek-R1 §2.3.3): which sampled completions become SFT data.

R1 samples several responses per prompt from the reasoning-RL checkpoint and "retains only the correct
ones", filtering out "chain-of-thought with mixed languages, long paragraphs, and code blocks". Here every
sample is a record (a plain dict) that already holds the measurements, and :func:`filter_samples` decides:

1. ``untruncated`` -- the completion ended by itself (a cut one has no final answer to trust);
2. ``format``      -- exactly ``<think>...</think><answer>...</answer>`` (:func:`r1lightning.rewards.is_well_formatted`);
3. ``correct``     -- the verifier scored it correct (reward > 0.5);
4. ``language``    -- the chain of thought is in the target language (share of its words >= a threshold);
5. ``duplicate``   -- (optional) the same text as an earlier kept sample of the same prompt;
6. ``not_selected``-- (optional) ``selection: shortest`` keeps only the shortest survivor of each prompt (R1's
   preference for concise, readable outputs), ``max_per_prompt`` caps how many survive per prompt.

Each filter can be switched off. A rejected record says which check rejected it first (``rejected_by``) and
lists every check it failed (``failed``); :func:`summarize` counts both.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Literal, Optional

#: the per-sample checks, in the order a rejection is attributed to
CHECKS = ("untruncated", "format", "correct", "language")
#: every reason a sample can be rejected for
REASONS = CHECKS + ("duplicate", "not_selected")


@dataclass
class RejectionFilters:
    """Which completions survive rejection sampling (every check can be switched off)."""

    correct: bool = True
    """Keep only completions the verifier scores correct (reward > 0.5)."""
    format: bool = True
    """Keep only completions in the exact ``<think>...</think><answer>...</answer>`` format."""
    language: bool = True
    """Keep only completions whose chain of thought is in the target language."""
    language_threshold: float = 0.95
    """Smallest share of target-language words in the chain of thought (1.0 when it has no words)."""
    untruncated: bool = True
    """Drop completions cut at ``max_new_tokens``."""
    dedupe: bool = True
    """Keep one copy of identical completions (whitespace-normalised) of the same prompt."""
    selection: Literal["all", "shortest"] = "all"
    """'all' survivors, or only the 'shortest' one (fewest tokens) of each prompt."""
    max_per_prompt: Optional[int] = None
    """At most this many samples per prompt (the shortest first when selection is 'shortest', else by index)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.language_threshold <= 1.0:
            raise ValueError(f"language_threshold must be in [0, 1], got {self.language_threshold}")
        if self.selection not in ("all", "shortest"):
            raise ValueError(f"selection must be 'all' or 'shortest', got {self.selection!r}")
        if self.max_per_prompt is not None and (isinstance(self.max_per_prompt, bool) or self.max_per_prompt < 1):
            raise ValueError(f"max_per_prompt must be None or >= 1, got {self.max_per_prompt!r}")

    def enabled(self) -> list[str]:
        return [c for c in CHECKS if getattr(self, c)]


def failed_checks(record: dict, filters: RejectionFilters) -> list[str]:
    """The enabled per-sample checks that ``record`` fails, in :data:`CHECKS` order.

    The record needs ``truncated`` (bool), ``formatted`` (bool), ``correct`` (bool) and
    ``language_consistency`` (float in [0, 1])."""
    failed = []
    if filters.untruncated and record["truncated"]:
        failed.append("untruncated")
    if filters.format and not record["formatted"]:
        failed.append("format")
    if filters.correct and not record["correct"]:
        failed.append("correct")
    if filters.language and not record["language_consistency"] >= filters.language_threshold:  # NaN fails
        failed.append("language")
    return failed


def _normalised(text: str) -> str:
    return " ".join(text.split())


def filter_samples(records: list[dict], filters: RejectionFilters) -> tuple[list[dict], list[dict]]:
    """(kept, rejected): copies of ``records`` with the verdict added.

    Records are grouped by ``prompt_id`` and ordered by ``sample_index`` within a prompt (so the result does
    not depend on the order ranks wrote them in). Kept records get ``filters_passed`` (the enabled checks, plus
    ``dedupe`` / ``selection`` when those ran); rejected ones get ``rejected_by`` (the first reason) and
    ``failed`` (every per-sample check failed; a duplicate or unselected sample passed them all).
    """
    by_prompt: dict[object, list[dict]] = defaultdict(list)
    for r in records:
        by_prompt[r["prompt_id"]].append(r)
    passed_names = filters.enabled() + (["dedupe"] if filters.dedupe else []) + (
        ["selection"] if filters.selection != "all" or filters.max_per_prompt is not None else [])
    kept: list[dict] = []
    rejected: list[dict] = []
    for pid in sorted(by_prompt, key=str):
        survivors = []
        seen: set[str] = set()
        for r in sorted(by_prompt[pid], key=lambda x: x["sample_index"]):
            failed = failed_checks(r, filters)
            if failed:
                rejected.append({**r, "rejected_by": failed[0], "failed": failed})
                continue
            key = _normalised(r["completion"])
            if filters.dedupe and key in seen:
                rejected.append({**r, "rejected_by": "duplicate", "failed": []})
                continue
            seen.add(key)
            survivors.append(r)
        order = survivors
        if filters.selection == "shortest":
            order = sorted(survivors, key=lambda x: (x["tokens"], x["sample_index"]))
        limit = filters.max_per_prompt
        if limit is None and filters.selection == "shortest":
            limit = 1
        chosen = order if limit is None else order[:limit]
        chosen_ids = {id(r) for r in chosen}
        for r in survivors:  # kept in sample order
            if id(r) in chosen_ids:
                kept.append({**r, "filters_passed": list(passed_names)})
            else:
                rejected.append({**r, "rejected_by": "not_selected", "failed": []})
    return kept, rejected


def summarize(kept: list[dict], rejected: list[dict], filters: Optional[RejectionFilters] = None) -> dict:
    """Counts of the verdicts: kept / rejected, rejected by first reason, every failed check, per prompt."""
    total = len(kept) + len(rejected)
    prompts = {r["prompt_id"] for r in kept} | {r["prompt_id"] for r in rejected}
    by_reason = Counter(r["rejected_by"] for r in rejected)
    failed = Counter(c for r in rejected for c in r["failed"])
    out = {
        "samples": total,
        "kept": len(kept),
        "rejected": len(rejected),
        "kept_ratio": len(kept) / total if total else 0.0,
        "rejected_by": {reason: by_reason.get(reason, 0) for reason in REASONS},
        "failed_checks": {check: failed.get(check, 0) for check in CHECKS},
        "prompts": len(prompts),
        "prompts_with_kept": len({r["prompt_id"] for r in kept}),
        "kept_mean_tokens": sum(r["tokens"] for r in kept) / len(kept) if kept else 0.0,
    }
    if filters is not None:
        from dataclasses import asdict

        out["filters"] = asdict(filters)
    return out
