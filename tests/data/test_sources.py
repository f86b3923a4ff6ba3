"""Data sources: every supported file form reads to the same rows; every failure names what failed."""

from __future__ import annotations

import gzip
import json

import pytest

from r1lightning.data.sources import load_rows
from r1lightning.data.tasks import generate

ROWS = [{"prompt": "Compute 1+2.", "answer": "3"}, {"prompt": "Compute 20+22.", "answer": "42"}]


def _write_jsonl(path, rows, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# formats


def test_jsonl(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", ROWS)
    with open(path, "a") as f:
        f.write("\n   \n")  # blank lines are skipped, not errors
    assert load_rows(str(path)) == ROWS


def test_jsonl_gz(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl.gz", ROWS, gzip.open)
    assert load_rows(str(path)) == ROWS


@pytest.mark.parametrize("payload", [ROWS, {"data": ROWS}], ids=["list", "data-key"])
def test_json(tmp_path, payload):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(payload))
    assert load_rows(str(path)) == ROWS


def test_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), str(path))
    assert load_rows(str(path)) == ROWS


def _dataset(rows):
    """A ``datasets.Dataset`` built with an explicit fingerprint: that skips datasets' dill hashing of
    the table, which with datasets 5.2 fails to pickle pyarrow's ``MonthDayNano`` (measured with
    pyarrow 22 and 26) -- a datasets problem, not what these tests are about."""
    datasets = pytest.importorskip("datasets")
    import pyarrow as pa
    from datasets.table import InMemoryTable

    return datasets.Dataset(InMemoryTable(pa.Table.from_pylist(rows)), fingerprint=f"rows-{len(rows)}")


def test_saved_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = _dataset(ROWS)
    ds.save_to_disk(str(tmp_path / "single"))
    assert load_rows(str(tmp_path / "single")) == ROWS

    dd = datasets.DatasetDict({"train": ds, "test": _dataset(ROWS[:1])})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert load_rows(f"{tmp_path / 'dict'}#test") == ROWS[:1]
    assert load_rows(f"{tmp_path / 'dict'}#train") == ROWS


def test_synthetic_source_matches_generate():
    rows = load_rows("synthetic:arithmetic?n=5&split=test&seed=3")
    assert rows == generate("arithmetic", n=5, split="test", seed=3)
    assert len(rows) == 5 and all(r["task"] == "arithmetic" for r in rows)


# ---------------------------------------------------------------------------------------------
# errors name the source and what is wrong


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl") as e:
        load_rows(missing)
    assert "does not exist" in str(e.value)


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"prompt": oops}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        load_rows(str(path))


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"list\.jsonl:1: expected a JSON object per line, got list"):
        load_rows(str(path))


def test_json_that_is_not_a_list_of_objects(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"a": ROWS, "b": ROWS}))  # two lists: ambiguous
    with pytest.raises(ValueError, match=r"d\.json.*expected a JSON list of objects"):
        load_rows(str(path))


def test_folder_that_is_not_a_dataset(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="folder.*not a dataset saved with save_to_disk"):
        load_rows(str(tmp_path / "folder"))


def test_dataset_dict_needs_a_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = _dataset(ROWS)
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ValueError, match=r"holds splits \['train', 'test'\]; name one as .*#<split>"):
        load_rows(str(tmp_path / "dict"))
    with pytest.raises(ValueError, match=r"has no split 'validation'; it has \['train', 'test'\]"):
        load_rows(f"{tmp_path / 'dict'}#validation")


def test_unknown_extension(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,answer\n")
    with pytest.raises(ValueError, match=r"d\.csv.*unsupported format \(use \.jsonl"):
        load_rows(str(path))


def test_unknown_synthetic_task():
    with pytest.raises(ValueError, match=r"unknown synthetic task 'sudoku'; choose one of \['arithmetic', 'arithmetic_cot', 'arithmetic_styles', 'convert', 'copy', 'countdown', 'general', 'reverse', 'search_styles', 'uppercase'\]"):
        load_rows("synthetic:sudoku?n=3")


@pytest.mark.parametrize("source", ["", "   ", None])
def test_empty_source(source):
    with pytest.raises(ValueError, match="non-empty string"):
        load_rows(source)
