"""Lightning callbacks for R1-style training: the paper's emergent behaviours, measured, and its length schedule.

* :class:`LanguageConsistencyTracker`: target-language fraction of each CoT, language-mixing rate (R1 §2.3).
* :class:`ReflectiveTokenStats`: reflective words ("wait", "verify", ...) per 1,000 tokens (the "aha moment").
* :class:`GenerationLengthScheduler`: step-indexed ``max_new_tokens`` (R1: 32,768 -> 65,536 at step 8,200).
* :class:`VLLMRolloutRefresh`: verifies each push of the policy into a colocated vLLM engine (the module pushes).
* :class:`~r1lightning.preemption.Preemption`: SIGTERM / SIGUSR1 -> checkpoint at the next batch boundary, non-zero exit
  (added to every CLI run).

Ready-made sets for the command line live in the top-level ``callbacks/`` folder::

    python -m r1lightning fit --config configs/r1.yaml --trainer.callbacks callbacks/r1_monitoring.yaml
"""

from r1lightning.callbacks.language import LanguageConsistencyTracker
from r1lightning.callbacks.length_schedule import GenerationLengthScheduler
from r1lightning.callbacks.reflection import DEFAULT_REFLECTIVE_WORDS, ReflectiveTokenStats, ReflectiveWordCounter
from r1lightning.callbacks.rollout_stats import RolloutStatsCallback
from r1lightning.callbacks.vllm_refresh import VLLMRolloutRefresh
from r1lightning.preemption import Preemption

__all__ = [
    "DEFAULT_REFLECTIVE_WORDS",
    "GenerationLengthScheduler",
    "LanguageConsistencyTracker",
    "Preemption",
    "ReflectiveTokenStats",
    "ReflectiveWordCounter",
    "RolloutStatsCallback",
    "VLLMRolloutRefresh",
]
