"""Frequency of reflective words in the completions: the R1-Zero "aha moment", tracked over training.

DeepSeek-R1 §2.2 (the "aha moment") reports that during RL R1-Zero learns, unprompted, to stop
and re-examine its work ("Wait, wait. Wait. That's an aha moment I can flag here."), and that
reflective words ("wait", "verify", "error", ...) grow more frequent as training proceeds while
responses get longer. This callback counts such words on every rollout batch:

    reflect/per_1k_tokens              matches per 1,000 completion tokens (pooled over the batch)
    reflect/share_with_any             share of completions with at least one match
    reflect/per_1k_tokens/correct      the same two, over correct completions only
    reflect/share_with_any/correct
    reflect/per_1k_tokens/incorrect    ... and over incorrect completions only
    reflect/share_with_any/incorrect
    reflect/word/<word>                matches of one word per 1,000 completion tokens
                                       (spaces in the word become "_": reflect/word/let_me)
    reflect/count_per_response         (TensorBoard histogram) matches in each completion

Matching rules (decisions the paper leaves open):

* Whole words only: a match may not touch a letter, digit or underscore on either side, so
  "check" does not count in "checking" or "recheck" (list those separately if wanted), while
  "Wait," and "(check)" do count. Spaces inside a phrase match any whitespace ("let me").
* Matches do not overlap and the longest listed word wins at a position: with both
  "double-check" and "check" listed, "double-check" counts once, as "double-check".
* The whole completion is searched (reasoning and answer), as the paper counts words in responses.
* "Per 1,000 tokens" divides by the number of generated token ids (``completion_ids``, eos
  included), so the rate is not inflated merely because responses grow longer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from r1lightning.callbacks.rollout_stats import RolloutStatsCallback
from r1lightning.rewards.parsing import as_text
from r1lightning.rollout.base import RolloutBatch

__all__ = ["DEFAULT_REFLECTIVE_WORDS", "ReflectiveTokenStats", "ReflectiveWordCounter"]

#: Reflective words of the kind R1 tracks ("wait", "verify", "error", "check", "mistake", "however",
#: "retry", ...) plus common self-correction markers of long-CoT models.
DEFAULT_REFLECTIVE_WORDS: list[str] = [
    "wait", "verify", "check", "error", "mistake", "however", "recheck", "alternatively", "retry",
    "let me", "hmm", "wrong", "double-check", "reconsider", "re-evaluate",
]


class ReflectiveWordCounter:
    """Counts whole-word, non-overlapping occurrences of a word list in text (pure; no Lightning)."""

    def __init__(self, words: Sequence[str], case_insensitive: bool = True):
        if isinstance(words, str) or not isinstance(words, Sequence):
            raise TypeError(f"words must be a list of strings, got {words!r}")
        cleaned = [" ".join(w.split()) if isinstance(w, str) else w for w in words]
        if not cleaned or any(not isinstance(w, str) or not w for w in cleaned):
            raise ValueError(f"words must be a non-empty list of non-empty strings, got {list(words)!r}")
        keys = [w.casefold() if case_insensitive else w for w in cleaned]
        dupes = sorted({w for w in keys if keys.count(w) > 1})
        if dupes:
            raise ValueError(f"duplicate reflective words {dupes} (case_insensitive={case_insensitive})")
        self.words: tuple[str, ...] = tuple(cleaned)
        # Longest first so the alternation prefers "double-check" over "check" at the same position;
        # one named group per word tells which one matched.
        order = sorted(range(len(cleaned)), key=lambda i: -len(cleaned[i]))
        alternatives = "|".join(
            f"(?P<w{i}>" + r"\s+".join(re.escape(part) for part in cleaned[i].split(" ")) + ")" for i in order
        )
        self._regex = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE if case_insensitive else 0)

    def count(self, text: object) -> dict[str, int]:
        """Matches of each word in ``text`` (every listed word present, zeros included)."""
        counts = dict.fromkeys(self.words, 0)
        for m in self._regex.finditer(as_text(text)):
            counts[self.words[int(m.lastgroup[1:])]] += 1
        return counts


class ReflectiveTokenStats(RolloutStatsCallback):
    """Logs reflective-word frequency per 1,000 completion tokens, overall, per word and by correctness."""

    def __init__(self, words: list[str] = DEFAULT_REFLECTIVE_WORDS, case_insensitive: bool = True,
                 log_histograms: bool = True, every_n_steps: int = 1, correctness_reward: str = "accuracy"):
        """
        Args:
            words: Words or phrases to count as whole words ("let me" matches any whitespace between).
            case_insensitive: Match regardless of case ("Wait" counts as "wait").
            log_histograms: Also write the histogram ``reflect/count_per_response`` (TensorBoard logger only).
            every_n_steps: Measure every N rollout batches.
            correctness_reward: Reward label whose score > 0.5 marks a correct completion.
        """
        super().__init__(correctness_reward=correctness_reward, log_histograms=log_histograms,
                         every_n_steps=every_n_steps)
        self.counter = ReflectiveWordCounter(words, case_insensitive=case_insensitive)
        self.case_insensitive = case_insensitive

    @staticmethod
    def metric_name(word: str) -> str:
        """``reflect/word/<word>`` with whitespace replaced by ``_``."""
        return "reflect/word/" + "_".join(word.split())

    def measure(self, rollout: RolloutBatch, correct: list[bool] | None) -> tuple[dict[str, float], dict[str, list[float]]]:
        per_text = [self.counter.count(t) for t in rollout.texts]
        totals = [sum(c.values()) for c in per_text]
        tokens = [len(ids) for ids in rollout.completion_ids]

        def rates(rows: list[int], suffix: str) -> dict[str, float]:
            out = {}
            if rows:
                out[f"reflect/share_with_any{suffix}"] = sum(totals[i] > 0 for i in rows) / len(rows)
                n_tokens = sum(tokens[i] for i in rows)
                if n_tokens > 0:
                    out[f"reflect/per_1k_tokens{suffix}"] = 1000.0 * sum(totals[i] for i in rows) / n_tokens
            return out

        everyone = list(range(len(per_text)))
        scalars = rates(everyone, "")
        if correct is not None:
            scalars.update(rates([i for i in everyone if correct[i]], "/correct"))
            scalars.update(rates([i for i in everyone if not correct[i]], "/incorrect"))
        n_tokens = sum(tokens)
        if n_tokens > 0:
            for word in self.counter.words:
                scalars[self.metric_name(word)] = 1000.0 * sum(c[word] for c in per_text) / n_tokens
        return scalars, {"reflect/count_per_response": [float(t) for t in totals]}
