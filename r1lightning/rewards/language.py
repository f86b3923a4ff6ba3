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
  mathematical alphanumerics such as 𝑥), LaTeX control words (``\\frac``, ``\\alpha``),
  ``\\begin{...}`` / ``\\end{...}`` markers with their environment names, and one-letter Latin
  or Greek words, which in a math CoT are variables (``x``, ``n``, ``π``) far more often than
  words.
* Mathematics counts for no language (see :func:`neutralize_math`): inside LaTeX math
  (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``, math environments such as ``align*``,
  ``pmatrix``, ``cases``) Latin and Greek letters are variables, function names and units
  (``$ABC$``, ``$\\sin x$``, ``$5\\,\\mathrm{cm}$``), so they are neutral; in code and diagram
  blocks (```` ``` ```` fences, ``[asy]...[/asy]``, ``asy`` / ``verbatim`` / ``lstlisting`` /
  ``tikzpicture`` environments) Latin and Greek letters are identifiers and keywords, neutral too.
  Outside math, a number's unit (``5 cm``, ``60km``) and an upper-case point name of two to four
  letters (``ABC``, ``ABCD``) are neutral as well. Letters of any other script inside math or code
  still count (``$\\text{如果}$`` is Chinese), and inside math a phrase, two or more Latin words
  of two or more letters separated only by spaces (``$\\text{if n is even}$``), counts as prose:
  a policy cannot hide a whole English CoT inside dollar signs wholesale. What remains open: a
  non-Latin-target CoT that hides one-word English fragments in math, or English prose inside a
  code fence, is not penalised.
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
    "neutralize_math",
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

# Letters that are notation inside math and code: Latin (ASCII, Latin-1 and Extended-A/B, the
# fullwidth forms) and Greek (basic and extended).
_LATIN_GREEK = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u0370-\u03ff\u1f00-\u1fff\uff21-\uff3a\uff41-\uff5a"
_LATIN_GREEK_RE = re.compile(f"[{_LATIN_GREEK}]")
_LATIN_WORD = "[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f]{2,}"
# Inside math, two or more Latin words separated only by spaces are prose, not notation.
_MATH_PHRASE_RE = re.compile(f"{_LATIN_WORD}(?:[ \t\n~]+{_LATIN_WORD})+")
_CODE_ENVS = "asy|verbatim|lstlisting|minted|tikzpicture|Verbatim|comment"
_CODE_BLOCK_RE = re.compile(
    r"```.*?(?:```|\Z)"  # fenced block; an unterminated fence runs to the end
    r"|\[asy\].*?(?:\[/asy\]|\Z)"
    rf"|\\begin\{{({_CODE_ENVS})\}}.*?(?:\\end\{{\1\}}|\Z)",
    re.DOTALL,
)
_MATH_ENVS = (
    "equation|align|alignat|aligned|alignedat|gather|gathered|multline|flalign|eqnarray|split|"
    "array|matrix|pmatrix|bmatrix|Bmatrix|vmatrix|Vmatrix|smallmatrix|cases|dcases|subarray|math|"
    "displaymath"
)
# A math region is at most _MAX_MATH characters (inline: _MAX_INLINE): an unclosed delimiter in
# model output then costs a bounded scan, not one to the end of the text per delimiter.
_MAX_MATH, _MAX_INLINE = 2000, 500
_MATH_RE = re.compile(
    rf"\\begin\{{((?:{_MATH_ENVS})\*?)\}}.{{0,{_MAX_MATH}}}?\\end\{{\1\}}"
    rf"|(?<!\\)\$\$.{{1,{_MAX_MATH}}}?(?<!\\)\$\$"
    rf"|\\\[.{{1,{_MAX_MATH}}}?\\\]"
    rf"|\\\(.{{1,{_MAX_MATH}}}?\\\)"
    # Inline $...$ as pandoc reads it: the opening $ is followed by a non-space, the closing one
    # preceded by a non-space and not followed by a digit, so "$5 and $10" is currency, not math.
    rf"|(?<![\\$])\$(?=[^\s$])(?:\\.|[^$\\]){{1,{_MAX_INLINE}}}?(?<=\S)(?<!\\)\$(?!\d)",
    re.DOTALL,
)
_ENV_MARKER_RE = re.compile(r"\\(?:begin|end)\s*\{[^{}]*\}")
# A unit after a number ("8 cm", "60km/h"), from a fixed list: common short English words
# ("42 and") must stay words. The unit may run straight into a word of another script
# ("8 cm이고"), not into more Latin letters ("3 mist" keeps its word).
_UNITS = (
    "mm|cm|dm|km|m|mg|g|kg|t|ml|mL|l|L|s|ms|min|h|hr|hrs|ft|yd|mi|lb|lbs|oz|mph|kph|Hz|kHz|MHz|"
    "W|kW|V|J|kJ|N|Pa|cal|kcal|sec|cm2|cm3|m2|m3"
)
_NOT_LATIN_AFTER = "(?![A-Za-z\u00c0-\u024f\u1e00-\u1eff])"
_UNIT_AFTER_NUMBER_RE = re.compile(
    rf"(?<=\d) ?(?:{_UNITS}){_NOT_LATIN_AFTER}(?:/(?:{_UNITS}){_NOT_LATIN_AFTER})?"
)
_POINT_NAME_RE = re.compile(r"(?<![A-Za-z])[A-Z]{2,4}(?![A-Za-z])")
# Supplementary-plane CJK ideographs: extensions B-I and the compatibility supplement.
_ASTRAL_HAN_RE = re.compile("[\U00020000-\U0002fa1f\U00030000-\U000323af]")
_NEUTRAL_LETTER_NAMES = frozenset({"FEMININE", "MASCULINE", "MICRO", "SUPERSCRIPT", "SUBSCRIPT"})
_PUA_START, _PUA_END = 0xE000, 0xF8FF
_CODEPOINT_SUFFIX_RE = re.compile(r"-[0-9A-F]{4,6}$")


def _drop_latin_greek(text: str) -> str:
    return _LATIN_GREEK_RE.sub(" ", text)


def _neutral_math(match: re.Match) -> str:
    body = _LATEX_COMMAND_RE.sub(" ", _ENV_MARKER_RE.sub(" ", match.group(0)))
    pieces, last = [], 0
    for phrase in _MATH_PHRASE_RE.finditer(body):
        pieces.append(_drop_latin_greek(body[last:phrase.start()]))
        pieces.append(f" {phrase.group(0)} ")
        last = phrase.end()
    pieces.append(_drop_latin_greek(body[last:]))
    return "".join(pieces)


def neutralize_math(text: str) -> str:
    """``text`` with the letters that are mathematical notation, not language, blanked out.

    Code and diagram blocks first (their ``$`` are not math delimiters), then LaTeX math, then
    the environment markers, units after numbers and point names left in the prose. Letters of
    scripts other than Latin and Greek are kept everywhere, and so are Latin phrases inside math
    (see the module docstring).

    >>> script_word_counts(neutralize_math(r"三角形 $ABC$ 的面积是 $5\\,\\mathrm{cm}^2$"))
    {'Han': 7.0}
    """
    text = _CODE_BLOCK_RE.sub(lambda m: _drop_latin_greek(m.group(0)), text)
    text = _MATH_RE.sub(_neutral_math, text)
    text = _ENV_MARKER_RE.sub(" ", text)
    text = _UNIT_AFTER_NUMBER_RE.sub(" ", text)
    return _POINT_NAME_RE.sub(" ", text)


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
    text = _LATEX_COMMAND_RE.sub(" ", neutralize_math(text))
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
