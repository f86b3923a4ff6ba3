"""Where rows come from: local files, saved ``datasets`` folders, offline benchmarks, synthetic tasks.

A source is one string, so it reads well in YAML and on the command line:

- ``path/to/file.jsonl`` (also ``.jsonl.gz``), ``.json`` (a list of objects), ``.parquet``
- ``path/to/folder`` saved with ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` needs ``#split``,
  e.g. ``data/gsm8k#test``)
- ``synthetic:arithmetic?n=20000&split=train&seed=0`` -- offline tasks with exact verifiers; also
  ``synthetic:preferences`` / ``general_prompts`` / ``mixed_prompts`` (:mod:`r1lightning.data.preferences`)
- ``benchmark:gsm8k`` / ``benchmark:mmath?language=zh`` -- real benchmark data shipped in packages
- a list of any of these: their rows concatenated (data mixtures)
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl

from r1lightning.policy import resolve_path


def _parse_query(query: str) -> dict:
    out = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        if value in ("true", "false"):
            value = value == "true"
        out[key] = value
    return out


def iter_jsonl(path: Path, opener=open) -> Iterator[tuple[str, Any]]:
    """(``"<path>:<line>"``, parsed value) for every non-blank line; a line that is not JSON is refused by name."""
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def _read_jsonl(path: Path, opener) -> list[dict]:
    rows = []
    for where, row in iter_jsonl(path, opener):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
        rows.append(row)
    return rows


def load_rows(source: str | list[str]) -> list[dict]:
    """All rows of ``source`` as plain dicts. Raises a clear error naming the source when it cannot.

    A list of sources is their concatenation, in order (how R1's SFT stage mixes reasoning samples with
    non-reasoning data: ``[rejection_sampling/data.jsonl, "synthetic:general?n=2000"]``)."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("data source: an empty list of sources")
        rows: list[dict] = []
        for part in source:
            rows.extend(load_rows(part))
        return rows
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"data source must be a non-empty string, got {source!r}")
    if source.startswith("synthetic:"):
        from r1lightning.data.preferences import SYNTHETIC
        from r1lightning.data.tasks import generate

        name, _, query = source[len("synthetic:") :].partition("?")
        kwargs = _parse_query(query)
        n = kwargs.pop("n", 1000)
        if name in SYNTHETIC:  # preference pairs, general and mixed RL prompts (reward models, R1 stage 4)
            return SYNTHETIC[name](n=n, **kwargs)
        return generate(name, n=n, **kwargs)
    if source.startswith("benchmark:"):
        from r1lightning.data.benchmarks import load_benchmark

        name, _, query = source[len("benchmark:") :].partition("?")
        return load_benchmark(name, **_parse_query(query))

    raw, _, split = source.partition("#")
    path = resolve_path(raw)
    if not path.exists():
        raise FileNotFoundError(f"data file {raw!r} does not exist")
    name = path.name.lower()
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as e:
            raise ValueError(f"{raw!r} is a folder but not a dataset saved with save_to_disk ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            if not split:
                raise ValueError(f"{raw!r} holds splits {list(ds)}; name one as '{raw}#<split>'")
            if split not in ds:
                raise ValueError(f"{raw!r} has no split {split!r}; it has {list(ds)}")
            ds = ds[split]
        return [dict(r) for r in ds]
    if name.endswith(".jsonl"):
        return _read_jsonl(path, open)
    if name.endswith(".jsonl.gz"):
        return _read_jsonl(path, gzip.open)
    if name.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{raw!r}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, dict):  # {"data": [...]} or {"train": [...]} style
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise ValueError(f"{raw!r}: expected a JSON list of objects")
            data = lists[0]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{raw!r}: expected a JSON list of objects")
        return data
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(str(path)).to_pylist()
    raise ValueError(f"data file {raw!r}: unsupported format (use .jsonl, .jsonl.gz, .json, .parquet or a saved dataset folder)")
