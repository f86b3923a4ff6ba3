"""ReflectiveTokenStats / ReflectiveWordCounter: hand-counted matches and rates."""

from __future__ import annotations

import pytest
from cb_fakes import FakeModule, fake_trainer, make_rollout

from r1lightning.callbacks import DEFAULT_REFLECTIVE_WORDS, ReflectiveTokenStats, ReflectiveWordCounter

WORDS = ["wait", "check", "recheck", "double-check", "let me", "verify", "error", "however", "hmm"]


@pytest.mark.parametrize("text, expected", [
    ("Wait, wait. Wait.", {"wait": 3}),                        # R1's aha moment: case-insensitive, punctuation is a boundary
    ("waiting awaits await", {}),                              # no partial words
    ("check checking checked rechecked", {"check": 1}),        # only the bare word
    ("recheck it", {"recheck": 1}),                            # "check" inside "recheck" does not count
    ("let me double-check.", {"let me": 1, "double-check": 1}),  # longest word wins: not also "check"
    ("Let\n  me see", {"let me": 1}),                          # any whitespace inside a phrase
    ("letme", {}),                                             # ... but some whitespace
    ("(check) [verify] error_code", {"check": 1, "verify": 1}),  # brackets bound words; "_" is a word character
    ("Hmm... however, HMM", {"hmm": 2, "however": 1}),
    ("", {}),                                                  # empty completion
    (None, {}),                                                # garbage in -> zero counts, no crash
])
def test_counter_table(text, expected):
    counts = ReflectiveWordCounter(WORDS).count(text)
    assert counts == {w: expected.get(w, 0) for w in WORDS}


def test_counter_case_sensitive():
    counts = ReflectiveWordCounter(["wait", "Let me"], case_insensitive=False).count("Wait wait Let me let me")
    assert counts == {"wait": 1, "Let me": 1}


@pytest.mark.parametrize("words, match", [
    ([], "non-empty"),
    (["wait", ""], "non-empty"),
    (["Wait", "wait"], "duplicate"),
    (["let me", "let  me"], "duplicate"),  # same phrase after whitespace normalisation
])
def test_counter_config_errors(words, match):
    with pytest.raises(ValueError, match=match):
        ReflectiveWordCounter(words)


def test_counter_rejects_a_bare_string():
    with pytest.raises(TypeError, match="list of strings"):
        ReflectiveWordCounter("wait")  # would otherwise be read as the words "w", "a", "i", "t"


def test_differently_cased_words_allowed_when_case_sensitive():
    assert ReflectiveWordCounter(["Wait", "wait"], case_insensitive=False).words == ("Wait", "wait")


def test_callback_hand_computed():
    texts = [
        "<think>Wait, let me check. 2+2=4. Hmm, wait... Let  me verify.</think><answer>4</answer>",
        "<think>Checking is not recheck; the double-check.</think><answer>5</answer>",
        "<think>The answer is 4.</think><answer>4</answer>",
        "WAIT! However, that is an ERROR, not errors.",
    ]
    # per-response matches: 0: wait 2, let me 2, check 1, hmm 1, verify 1 = 7
    #                       1: recheck 1, double-check 1 = 2 ("Checking" is not "check")
    #                       2: 0
    #                       3: wait 1, however 1, error 1 = 3 ("errors" is not "error")
    tokens = [20, 10, 10, 20]  # 60 completion tokens
    module = FakeModule(last_rollout=make_rollout(texts, tokens), last_rewards={"accuracy": [1.0, 0.0, 1.0, 0.0]})
    cb = ReflectiveTokenStats(words=WORDS)
    cb.on_train_batch_end(fake_trainer(), module, module.outputs, None, 0)
    got = module.logged
    assert got["reflect/per_1k_tokens"] == pytest.approx(1000 * 12 / 60, abs=1e-9)           # 12 matches / 60 tokens = 200
    assert got["reflect/share_with_any"] == pytest.approx(3 / 4, abs=1e-12)                  # rows 0, 1, 3
    assert got["reflect/per_1k_tokens/correct"] == pytest.approx(1000 * 7 / 30, abs=1e-9)    # rows 0, 2: 7 / (20 + 10)
    assert got["reflect/share_with_any/correct"] == pytest.approx(1 / 2, abs=1e-12)
    assert got["reflect/per_1k_tokens/incorrect"] == pytest.approx(1000 * 5 / 30, abs=1e-9)  # rows 1, 3: 5 / (10 + 20)
    assert got["reflect/share_with_any/incorrect"] == pytest.approx(1.0, abs=1e-12)
    per_word = {"wait": 3, "check": 1, "recheck": 1, "double-check": 1, "let_me": 2, "verify": 1, "error": 1,
                "however": 1, "hmm": 1}
    for word, n in per_word.items():
        assert got[f"reflect/word/{word}"] == pytest.approx(1000 * n / 60, abs=1e-9), word
    assert sum(got[f"reflect/word/{w}"] for w in per_word) == pytest.approx(got["reflect/per_1k_tokens"], abs=1e-9)
    assert set(got) == {f"reflect/word/{w}" for w in per_word} | {
        "reflect/per_1k_tokens", "reflect/share_with_any", "reflect/per_1k_tokens/correct",
        "reflect/share_with_any/correct", "reflect/per_1k_tokens/incorrect", "reflect/share_with_any/incorrect"}
    assert cb.measure(module.last_rollout, None)[1] == {"reflect/count_per_response": [7.0, 2.0, 0.0, 3.0]}


def test_callback_without_correctness_and_with_empty_completions():
    module = FakeModule(last_rollout=make_rollout(["", "wait"], [0, 0]), last_rewards={"format": [1.0, 0.0]})
    ReflectiveTokenStats().on_train_batch_end(fake_trainer(), module, module.outputs, None, 0)
    # no tokens at all: per-1k rates undefined and not logged; share 1/2 still is; no accuracy -> no splits
    assert module.logged == {"reflect/share_with_any": 0.5}


def test_default_words_and_metric_names():
    assert "wait" in DEFAULT_REFLECTIVE_WORDS and "let me" in DEFAULT_REFLECTIVE_WORDS
    cb = ReflectiveTokenStats()
    assert cb.counter.words == tuple(DEFAULT_REFLECTIVE_WORDS)  # an immutable copy of the default
    assert ReflectiveTokenStats.metric_name("let me") == "reflect/word/let_me"
