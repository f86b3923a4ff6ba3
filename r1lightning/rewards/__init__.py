"""Rule-based rewards (DeepSeek-R1 §2.2 accuracy + format for R1-Zero; §2.3 language consistency;
§2.2's test-case reward for code, run in :mod:`r1lightning.sandbox`).

Every reward is a plain function ``fn(completions: list[str], **columns) -> list[float]``:
dataset columns (``answer=[...]``, ``language=[...]``) arrive as per-sample lists, unknown
columns are ignored, and model output never raises (garbage scores, it does not crash).
:class:`WeightedReward` combines them from a plain-data spec (YAML-friendly). :mod:`.voting`
groups equivalent answers for cons@k (majority vote).

This package imports no torch / lightning, so reward worker processes start fast.
"""

from r1lightning.rewards.accuracy import (
    accuracy_reward,
    exact_match_reward,
    math_verify_reward,
    normalize_answer,
    parse_number,
    shutdown_pool,
    warmup_pool,
)
from r1lightning.rewards.code import build_program, code_reward, extract_code, split_tests
from r1lightning.rewards.combine import (
    REWARD_FUNCS,
    RewardFn,
    RewardTerm,
    WeightedReward,
    get_reward_fn,
)
from r1lightning.rewards.errors import RewardConfigError, RewardFailedError
from r1lightning.rewards.format import format_reward, is_well_formatted
from r1lightning.rewards.language import (
    LANGUAGE_SCRIPTS,
    SCRIPTS,
    language_consistency_reward,
    language_fractions,
    script_word_counts,
    scripts_for_language,
    target_language_fraction,
)
from r1lightning.rewards.parsing import (
    as_text,
    extract_answer,
    extract_boxed,
    extract_final_answer,
    extract_think,
)
from r1lightning.rewards.reward_model import reward_device, reward_model_reward
from r1lightning.rewards.voting import (
    group_equivalent,
    group_equivalent_batch,
    majority_answer,
    majority_answers,
)

__all__ = [
    "LANGUAGE_SCRIPTS",
    "REWARD_FUNCS",
    "SCRIPTS",
    "RewardConfigError",
    "RewardFailedError",
    "RewardFn",
    "RewardTerm",
    "WeightedReward",
    "accuracy_reward",
    "as_text",
    "build_program",
    "code_reward",
    "exact_match_reward",
    "extract_answer",
    "extract_boxed",
    "extract_code",
    "extract_final_answer",
    "extract_think",
    "format_reward",
    "get_reward_fn",
    "group_equivalent",
    "group_equivalent_batch",
    "is_well_formatted",
    "language_consistency_reward",
    "language_fractions",
    "majority_answer",
    "majority_answers",
    "math_verify_reward",
    "normalize_answer",
    "parse_number",
    "reward_device",
    "reward_model_reward",
    "script_word_counts",
    "scripts_for_language",
    "shutdown_pool",
    "split_tests",
    "target_language_fraction",
    "warmup_pool",
]
