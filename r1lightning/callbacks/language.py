"""Language consistency of the chain of thought, measured on every rollout batch (DeepSeek-R1 §2.3).

R1-Zero's CoTs "often mix languages"; R1's first RL stage therefore adds a language-consistency
reward, the proportion of target-language words in the CoT (§2.3), and the paper reports that
language mixing falls. This callback measures exactly that quantity on the rollouts, whether or
not the reward is switched on, so the mixing trend and its relation to correctness are visible:

    lang/consistency_mean       mean target-language fraction of the CoTs
    lang/mixing_rate            share of CoTs whose fraction is below ``threshold``
    lang/consistency_correct    mean fraction over correct completions
    lang/consistency_incorrect  mean fraction over incorrect completions
    lang/consistency            (TensorBoard histogram) the per-completion fractions

The fraction is :func:`~r1lightning.rewards.language.target_language_fraction` (script-based word
counting; see that module for what counts as a word) of the ``<think>`` content, or of the whole
completion when there is none, the same text the reward scores. A CoT without any word counts as
fully consistent (1.0).
"""

from __future__ import annotations

from r1lightning.callbacks.rollout_stats import RolloutStatsCallback, mean
from r1lightning.rewards.language import scripts_for_language, target_language_fraction
from r1lightning.rewards.parsing import as_text, extract_think
from r1lightning.rollout.base import RolloutBatch

__all__ = ["LanguageConsistencyTracker", "cot_text"]


def cot_text(completion: object) -> str:
    """The chain of thought the language-consistency reward scores: ``<think>`` content, else everything."""
    text = as_text(completion)
    cot = extract_think(text)
    return text if cot is None else cot


class LanguageConsistencyTracker(RolloutStatsCallback):
    """Logs how much of each CoT is in the target language and how often CoTs mix languages (R1 §2.3)."""

    def __init__(self, language: str = "en", threshold: float = 0.9, log_histograms: bool = True,
                 every_n_steps: int = 1, correctness_reward: str = "accuracy"):
        """
        Args:
            language: Target language code ('en', 'zh', 'ja', ...); its scripts are what counts as consistent.
            threshold: A CoT whose target-language fraction is below this counts as mixing.
            log_histograms: Also write the histogram ``lang/consistency`` (TensorBoard logger only).
            every_n_steps: Measure every N rollout batches (counting a 100k-character CoT takes milliseconds).
            correctness_reward: Reward label whose score > 0.5 marks a correct completion.
        """
        super().__init__(correctness_reward=correctness_reward, log_histograms=log_histograms,
                         every_n_steps=every_n_steps)
        scripts_for_language(language)  # an unknown code is a configuration error, raised now
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.language = language
        self.threshold = threshold

    def fractions(self, completions: list[str]) -> list[float]:
        """Target-language fraction of each completion's CoT, in [0, 1]."""
        return [target_language_fraction(cot_text(c), self.language) for c in completions]

    def measure(self, rollout: RolloutBatch, correct: list[bool] | None) -> tuple[dict[str, float], dict[str, list[float]]]:
        fracs = self.fractions(rollout.texts)
        scalars = {
            "lang/consistency_mean": mean(fracs),
            "lang/mixing_rate": mean([float(f < self.threshold) for f in fracs]),
        }
        if correct is not None:
            scalars["lang/consistency_correct"] = mean([f for f, ok in zip(fracs, correct) if ok])
            scalars["lang/consistency_incorrect"] = mean([f for f, ok in zip(fracs, correct) if not ok])
        return {k: v for k, v in scalars.items() if v is not None}, {"lang/consistency": fracs}
