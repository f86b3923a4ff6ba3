"""Language-consistency reward (DeepSeek-R1 §2.3).

R1 §2.3: R1-Zero's chain of thought often mixed languages, so the first RL stage of R1 added a
language-consistency reward, "calculated as the proportion of target language words in the CoT",
summed with the accuracy reward. The paper does not say how words or languages are identified;
this module decides, and documents it:

* The unit is the *script*, not the language (what is done in practice: cheap, deterministic,
  no model). Each letter is classified by its Unicode character name (``LATIN``, ``CYRILLIC``,
  ``CJK UNIFIED IDEOGRAPH`` -> Han, ``HIRAGANA``, ...). A target language maps to one or more
  scripts (``en`` -> Latin, ``ja`` -> Han + Hiragana + Katakana). Consequence: languages that share
  a script cannot be told apart (English vs French vs Vietnamese are all Latin; Chinese vs
  Japanese kanji are both Han). Mixing *across* scripts, the failure R1 reports (Chinese/English),
  is what this reward sees.
* Words: a maximal run of letters of one script (combining marks stay in the word; anything
  else, an apostrophe included, ends it); a change of script ends a word, so ``Aya会`` is one
  Latin word and one Han word. Han, Hiragana, Katakana (and Bopomofo) characters count one word
  each (no spaces between words). Thai, Lao, Khmer and Myanmar also write without spaces but
  their characters are letters, not words: a run of n letters there weighs n / 4 words (a rough
  word length, not a segmenter) so a Thai sentence is not outvoted by a few Latin names.
* Neutral (excluded): anything that is not a letter (digits, punctuation, math symbols,
  mathematical alphanumerics such as 𝑥), LaTeX control words (``\\frac``, ``\\alpha``), and
  one-letter Latin or Greek words, which in a math CoT are variables (``x``, ``n``, ``π``) far
  more often than words. Letters inside ``$...$`` are *not* skipped wholesale: a policy could
  otherwise hide a foreign-language CoT inside dollar signs (a reward hack).
* The CoT is the ``<think>`` content (see :func:`~r1lightning.rewards.parsing.extract_think`);
  without one, the whole completion.
* Text with no words at all scores 1.0: there is nothing inconsistent in it, and scoring it 0
  would punish pure-math CoTs. The format reward is what penalises empty reasoning.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence

from r1lightning.rewards.errors import RewardConfigError
from r1lightning.rewards.parsing import as_text, extract_think

__all__ = [
    "LANGUAGE_SCRIPTS",
    "SCRIPTS",
    "language_consistency_reward",
    "language_fractions",
    "script_word_counts",
    "scripts_for_language",
    "target_language_fraction",
]

# Unicode character-name prefix -> script label (longest prefix wins, see _script_of).
_NAME_PREFIX_TO_SCRIPT = {
    "LATIN": "Latin",
    "FULLWIDTH LATIN": "Latin",
    "GREEK": "Greek",
    "COPTIC": "Greek",
    "CYRILLIC": "Cyrillic",
    "ARMENIAN": "Armenian",
    "HEBREW": "Hebrew",
    "ARABIC": "Arabic",
    "SYRIAC": "Syriac",
    "THAANA": "Thaana",
    "DEVANAGARI": "Devanagari",
    "BENGALI": "Bengali",
    "GURMUKHI": "Gurmukhi",
    "GUJARATI": "Gujarati",
    "ORIYA": "Oriya",
    "TAMIL": "Tamil",
    "TELUGU": "Telugu",
    "KANNADA": "Kannada",
    "MALAYALAM": "Malayalam",
    "SINHALA": "Sinhala",
    "THAI": "Thai",
    "LAO": "Lao",
    "TIBETAN": "Tibetan",
    "MYANMAR": "Myanmar",
    "GEORGIAN": "Georgian",
    "HANGUL": "Hangul",
    "HALFWIDTH HANGUL": "Hangul",
    "ETHIOPIC": "Ethiopic",
    "KHMER": "Khmer",
    "MONGOLIAN": "Mongolian",
    "HIRAGANA": "Hiragana",
    "KATAKANA": "Katakana",
    "HALFWIDTH KATAKANA": "Katakana",
    "KATAKANA-HIRAGANA": "Katakana",  # ー, the long-vowel mark, written almost only in katakana
    "CJK UNIFIED IDEOGRAPH": "Han",
    "CJK COMPATIBILITY IDEOGRAPH": "Han",
    "IDEOGRAPHIC ITERATION MARK": "Han",  # 々
    "VERTICAL IDEOGRAPHIC ITERATION MARK": "Han",
    "BOPOMOFO": "Bopomofo",
}

#: Every script label this module can report.
SCRIPTS: tuple[str, ...] = tuple(sorted({*_NAME_PREFIX_TO_SCRIPT.values(), "Other"}))

# Scripts whose every character is a word (no spaces between words, one character = one
# morpheme or syllable).
_CHAR_IS_WORD = frozenset({"Han", "Hiragana", "Katakana", "Bopomofo"})
# Scripts written without spaces whose characters are letters: a run of n letters weighs
# n / _CHARS_PER_WORD words.
_UNSPACED_ALPHABETIC = frozenset({"Thai", "Lao", "Khmer", "Myanmar"})
_CHARS_PER_WORD = 4.0
# One-letter words of these scripts are math variables in a CoT, hence neutral.
_SINGLE_LETTER_NEUTRAL = frozenset({"Latin", "Greek"})

#: Target language code (ISO 639-1, lower case; a region suffix like ``zh-CN`` is ignored) ->
#: the scripts whose words count as "target language". Script labels (``"Latin"``, ``"Han"``,
#: ...) are accepted as languages too.
LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    **{
        code: frozenset({"Latin"})
        for code in (
            "en fr de es pt it nl vi id ms tr pl cs sk sl hr ro hu sv da no nb nn fi et lv lt "
            "is ga cy eu ca gl sq af sw tl uz az"
        ).split()
    },
    **{code: frozenset({"Cyrillic"}) for code in "ru uk be bg mk sr kk ky tg mn".split()},
    **{code: frozenset({"Arabic"}) for code in "ar fa ur ps".split()},
    **{code: frozenset({"Devanagari"}) for code in "hi mr ne sa".split()},
    "zh": frozenset({"Han", "Bopomofo"}),
    # Japanese mixes kanji with both kana; a kanji-only CoT is indistinguishable from Chinese.
    "ja": frozenset({"Han", "Hiragana", "Katakana"}),
    # Modern Korean is written in Hangul; Han (hanja) is deliberately not counted, so drifting
    # into Chinese is penalised.
    "ko": frozenset({"Hangul"}),
    "el": frozenset({"Greek"}),
    "he": frozenset({"Hebrew"}),
    "yi": frozenset({"Hebrew"}),
    "hy": frozenset({"Armenian"}),
    "ka": frozenset({"Georgian"}),
    "th": frozenset({"Thai"}),
    "lo": frozenset({"Lao"}),
    "km": frozenset({"Khmer"}),
    "my": frozenset({"Myanmar"}),
    "bn": frozenset({"Bengali"}),
    "pa": frozenset({"Gurmukhi"}),
    "gu": frozenset({"Gujarati"}),
    "or": frozenset({"Oriya"}),
    "ta": frozenset({"Tamil"}),
    "te": frozenset({"Telugu"}),
    "kn": frozenset({"Kannada"}),
    "ml": frozenset({"Malayalam"}),
    "si": frozenset({"Sinhala"}),
    "am": frozenset({"Ethiopic"}),
    "bo": frozenset({"Tibetan"}),
    "dv": frozenset({"Thaana"}),
    **{script.lower(): frozenset({script}) for script in SCRIPTS},
}

_LATEX_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
# Supplementary-plane CJK ideographs: extensions B-I and the compatibility supplement.
_ASTRAL_HAN_RE = re.compile("[\U00020000-\U0002fa1f\U00030000-\U000323af]")
_NEUTRAL_LETTER_NAMES = frozenset({"FEMININE", "MASCULINE", "MICRO", "SUPERSCRIPT", "SUBSCRIPT"})
_PUA_START, _PUA_END = 0xE000, 0xF8FF
_CODEPOINT_SUFFIX_RE = re.compile(r"-[0-9A-F]{4,6}$")


def scripts_for_language(language: str) -> frozenset[str]:
    """Scripts that count as ``language``; raises ``ValueError`` for an unknown code."""
    if not isinstance(language, str):
        raise RewardConfigError(
            f"language must be a language code string such as 'en' or 'zh', got {language!r}"
        )
    key = language.strip().lower().replace("_", "-")
    scripts = LANGUAGE_SCRIPTS.get(key) or LANGUAGE_SCRIPTS.get(key.split("-")[0])
    if scripts is None:
        raise RewardConfigError(
            f"unknown language {language!r} for the language-consistency reward; known codes: "
            f"{', '.join(sorted(LANGUAGE_SCRIPTS))}"
        )
    return scripts


def _script_of(ch: str) -> str | None:
    """Script label of one character, ``"Inherited"`` for a mark that joins any word, else None."""
    category = unicodedata.category(ch)
    if category[0] not in "LM":
        return None
    # "CJK UNIFIED IDEOGRAPH-4E00": drop the code-point suffix so the prefix lookup sees words.
    name = _CODEPOINT_SUFFIX_RE.sub("", unicodedata.name(ch, ""))
    words = name.split(" ")
    # Longest prefix first, so "HALFWIDTH KATAKANA" is not read as anything shorter.
    for n_words in (4, 3, 2, 1):
        script = _NAME_PREFIX_TO_SCRIPT.get(" ".join(words[:n_words]))
        if script is not None:
            return script
    if category[0] == "M":
        return "Inherited"  # combining accents, variation selectors, marks of unlisted scripts
    if category == "Lm" or words[0] in _NEUTRAL_LETTER_NAMES or 0x2100 <= ord(ch) <= 0x214F:
        return None  # modifier letters, ª º µ, letterlike math symbols (ℝ, ℏ, ℵ)
    return "Other"  # a real script this table does not name (Yi, Cherokee, ...)


@functools.cache
def _tables() -> tuple[dict[int, str | None], dict[str, str]]:
    """A ``str.translate`` table (letter -> one-character script code) and code -> script.

    Built from the Unicode database on first use (~0.3 s). Translating first keeps the
    per-character work in C: a 100k-character CoT is counted in a few milliseconds.
    Codes are private-use characters; private-use input is mapped to a space so it cannot pose
    as a code.
    """
    labels = sorted(SCRIPTS)
    code_of = {label: chr(_PUA_START + i) for i, label in enumerate(labels)}
    table: dict[int, str | None] = {cp: " " for cp in range(_PUA_START, _PUA_END + 1)}
    for cp in range(0x10000):
        script = _script_of(chr(cp))
        if script == "Inherited":
            table[cp] = None  # deleted, so "e" + U+0301 stays one word
        elif script is not None:
            table[cp] = code_of[script]
    return table, {code: label for label, code in code_of.items()}


def script_word_counts(text: str) -> dict[str, float]:
    """Word count per script in ``text`` (neutral tokens excluded; see the module docstring)."""
    if not isinstance(text, str) or not text:
        return {}
    table, script_of_code = _tables()
    text = _LATEX_COMMAND_RE.sub(" ", text)
    if _ASTRAL_HAN_RE.search(text):  # supplementary-plane CJK ideographs (rare) -> a BMP ideograph
        text = _ASTRAL_HAN_RE.sub("\u4e00", text)
    codes = text.translate(table)
    counts: dict[str, float] = {}
    for code in set(codes).intersection(script_of_code):
        script = script_of_code[code]
        if script in _CHAR_IS_WORD:
            n = float(codes.count(code))
        elif script in _UNSPACED_ALPHABETIC:
            n = codes.count(code) / _CHARS_PER_WORD
        else:
            n = float(len(re.findall(f"{code}+", codes)))
            if script in _SINGLE_LETTER_NEUTRAL:
                n -= len(re.findall(f"(?<!{code}){code}(?!{code})", codes))
        if n > 0:
            counts[script] = n
    return counts


def language_fractions(text: str) -> dict[str, float]:
    """Fraction of the words of ``text`` in each script; ``{}`` when there are no words.

    >>> language_fractions("The answer is 42, 答案")
    {'Latin': 0.6, 'Han': 0.4}
    """
    counts = script_word_counts(text)
    total = sum(counts.values())
    return {script: n / total for script, n in counts.items()} if total > 0 else {}


def target_language_fraction(text: str, language: str) -> float:
    """Proportion of the words of ``text`` written in ``language``'s script(s), in [0, 1].

    Returns 1.0 when ``text`` has no words at all (only math, numbers or nothing): nothing there
    is inconsistent. Raises ``ValueError`` for an unknown ``language`` (a configuration error).
    """
    scripts = scripts_for_language(language)
    counts = script_word_counts(text)
    total = sum(counts.values())
    if total <= 0:
        return 1.0
    return sum(n for script, n in counts.items() if script in scripts) / total


def language_consistency_reward(
    completions: Sequence[str],
    language: str | Sequence[str] = "en",
    **kwargs: object,
) -> list[float]:
    """R1 §2.3 language-consistency reward: proportion of target-language words in the CoT.

    Args:
        completions: model outputs; the CoT is the ``<think>`` content, or the whole completion
            when there is no ``</think>``.
        language: target language code for every sample (``"en"``, ``"zh"``, ...), or a
            per-sample list (a dataset column named ``language``). A list must be as long as
            ``completions``.
        **kwargs: other dataset columns, ignored.

    Returns:
        One score in [0, 1] per completion (1.0 for a CoT with no words).
    """
    n = len(completions)
    if isinstance(language, str):
        languages: Sequence[str] = [language] * n
    elif isinstance(language, Sequence):
        if len(language) != n:
            raise RewardConfigError(
                f"language column has {len(language)} entries for {n} completions"
            )
        languages = language
    else:
        raise RewardConfigError(
            f"language must be a code such as 'en' or a per-sample list of codes, got {language!r}"
        )
    for code in languages:
        scripts_for_language(code)  # fail fast, before scoring, on a bad code
    scores = []
    for completion, code in zip(completions, languages):
        text = as_text(completion)
        cot = extract_think(text)
        scores.append(target_language_fraction(text if cot is None else cot, code))
    return scores
