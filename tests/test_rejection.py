"""Rejection sampling (R1 stage 3): the filters on hand-made completions, the tiny world's new tasks, data
mixtures, and `python -m r1lightning predict` with RejectionSamplingModule on one and two ranks."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from r1lightning.data.general_tasks import GENERAL_TASKS, NO_THINKING, long_cot
from r1lightning.data.sources import load_rows
from r1lightning.data.tasks import _arithmetic_problem, generate, split_of
from r1lightning.rejection import REASONS, RejectionFilters, failed_checks, filter_samples, summarize
from r1lightning.rewards import accuracy_reward, exact_match_reward, is_well_formatted, target_language_fraction
from r1lightning.rewards.parsing import extract_think

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

GOOD = "<think>Add left to right. 12+30=42. Correct.</think><answer>The result is \\boxed{42}.</answer>"
GOOD_LONG = ("<think>Add left to right. 12+30=42. Check by subtracting: 42-30=12. Correct.</think>"
             "<answer>The result is \\boxed{42}.</answer>")
WRONG = "<think>Add left to right. 12+30=43. Correct.</think><answer>The result is \\boxed{43}.</answer>"
NO_FORMAT = "<answer>The result is \\boxed{42}.</answer>"  # right answer, no reasoning block
CHINESE = "<think>我们从左到右相加 12+30=42 结果正确</think><answer>\\boxed{42}</answer>"
WRONG_AND_UNFORMATTED = "the answer is \\boxed{41}"


def record(completion: str, prompt_id: str = "p0", sample_index: int = 0, truncated: bool = False,
           answer: str = "42") -> dict:
    """A sample measured the way RejectionSamplingModule measures it (the real reward functions)."""
    return {
        "prompt_id": prompt_id, "sample_index": sample_index, "completion": completion, "truncated": truncated,
        "tokens": len(completion.split()),
        "correct": accuracy_reward([completion], answer=[answer], workers=0)[0] > 0.5,
        "formatted": is_well_formatted(completion),
        "language_consistency": target_language_fraction(extract_think(completion) or completion, "en"),
    }


def verdicts(records: list[dict], **filters) -> dict:
    kept, rejected = filter_samples(records, RejectionFilters(**filters))
    out = {(r["prompt_id"], r["sample_index"]): "kept" for r in kept}
    out.update({(r["prompt_id"], r["sample_index"]): r["rejected_by"] for r in rejected})
    return out


# ---------------------------------------------------------------------------------------------- filters
def test_each_check_rejects_its_own_kind_of_sample():
    recs = [record(GOOD, sample_index=0), record(WRONG, sample_index=1), record(NO_FORMAT, sample_index=2),
            record(CHINESE, sample_index=3), record(GOOD_LONG, sample_index=4, truncated=True)]
    assert verdicts(recs) == {("p0", 0): "kept", ("p0", 1): "correct", ("p0", 2): "format",
                              ("p0", 3): "language", ("p0", 4): "untruncated"}


def test_a_switched_off_check_lets_its_samples_through():
    recs = [record(GOOD, sample_index=0), record(WRONG, sample_index=1), record(NO_FORMAT, sample_index=2),
            record(CHINESE, sample_index=3), record(GOOD_LONG, sample_index=4, truncated=True)]
    assert verdicts(recs, correct=False)[("p0", 1)] == "kept"
    assert verdicts(recs, format=False)[("p0", 2)] == "kept"  # correct, no words in another script
    assert verdicts(recs, language=False)[("p0", 3)] == "kept"
    assert verdicts(recs, untruncated=False)[("p0", 4)] == "kept"
    # the threshold is a share of words: 0.0 accepts any chain of thought
    assert verdicts(recs, language_threshold=0.0)[("p0", 3)] == "kept"


def test_every_failed_check_is_listed_and_the_first_one_is_the_reason():
    r = record(WRONG_AND_UNFORMATTED, truncated=True)
    assert failed_checks(r, RejectionFilters()) == ["untruncated", "format", "correct"]
    _, (rejected,) = filter_samples([r], RejectionFilters())
    assert rejected["rejected_by"] == "untruncated" and rejected["failed"] == ["untruncated", "format", "correct"]


def test_duplicates_of_a_prompt_are_dropped_but_not_across_prompts():
    recs = [record(GOOD, "p0", 0), record("  " + GOOD.replace(". ", ".  ") + "\n", "p0", 1), record(GOOD, "p1", 0)]
    assert verdicts(recs) == {("p0", 0): "kept", ("p0", 1): "duplicate", ("p1", 0): "kept"}
    assert verdicts(recs, dedupe=False) == {("p0", 0): "kept", ("p0", 1): "kept", ("p1", 0): "kept"}


def test_shortest_correct_selection_and_the_per_prompt_cap():
    recs = [record(GOOD_LONG, "p0", 0), record(WRONG, "p0", 1), record(GOOD, "p0", 2), record(GOOD_LONG, "p1", 0)]
    assert verdicts(recs, selection="shortest") == {("p0", 0): "not_selected", ("p0", 1): "correct",
                                                    ("p0", 2): "kept", ("p1", 0): "kept"}
    # a cap without selection keeps the first samples in sample order
    assert verdicts(recs, max_per_prompt=1)[("p0", 0)] == "kept"
    assert verdicts(recs, max_per_prompt=1)[("p0", 2)] == "not_selected"


def test_the_verdicts_do_not_depend_on_the_order_ranks_wrote_the_samples_in():
    recs = [record(c, f"p{i % 3}", i) for i, c in enumerate([GOOD, WRONG, GOOD_LONG, GOOD, CHINESE, GOOD_LONG] * 2)]
    shuffled = recs[:]
    random.Random(0).shuffle(shuffled)
    assert filter_samples(recs, RejectionFilters(selection="shortest")) == \
        filter_samples(shuffled, RejectionFilters(selection="shortest"))


def test_summary_counts_by_first_reason_and_by_every_failed_check():
    recs = [record(GOOD, "p0", 0), record(GOOD, "p0", 1), record(WRONG_AND_UNFORMATTED, "p0", 2),
            record(CHINESE, "p1", 0), record(WRONG, "p1", 1, truncated=True)]
    kept, rejected = filter_samples(recs, RejectionFilters())
    s = summarize(kept, rejected)
    assert (s["samples"], s["kept"], s["rejected"], s["prompts"], s["prompts_with_kept"]) == (5, 1, 4, 2, 1)
    assert s["rejected_by"] == {"untruncated": 1, "format": 1, "correct": 0, "language": 1, "duplicate": 1,
                                "not_selected": 0}
    # WRONG_AND_UNFORMATTED fails format and correct; the truncated WRONG fails untruncated and correct
    assert s["failed_checks"] == {"untruncated": 1, "format": 1, "correct": 2, "language": 1}
    assert set(s["rejected_by"]) == set(REASONS)


@pytest.mark.parametrize("bad,match", [({"language_threshold": 1.5}, "language_threshold"),
                                       ({"selection": "longest"}, "selection"),
                                       ({"max_per_prompt": 0}, "max_per_prompt")])
def test_bad_filter_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        RejectionFilters(**bad)


# ---------------------------------------------------------------------------------------------- tiny world
def test_long_cot_wraps_the_base_models_running_sums_in_sentences():
    think, answer = long_cot([23, 45, 17], ["+", "+"])
    # the running sums exactly as the tiny base writes them (tasks.format_solution: "23+45=68, 68+17=85")
    assert think == "Add left to right, keeping a running total: 23+45=68, 68+17=85. So the total is 85."
    assert answer == "The result is \\boxed{85}."
    think, answer = long_cot([50, 20, 5], ["-", "+"])
    assert think == "Add left to right, keeping a running total: 50-20=30, 30+5=35. So the total is 35."
    assert answer == "The result is \\boxed{35}."
    # the same draw in the base's short format and as a readable CoT
    short = _arithmetic_problem(random.Random(7), 4, 4, False)
    row = GENERAL_TASKS["arithmetic_cot"](random.Random(7), 4, 4)
    assert row["prompt"] == short["prompt"] and row["answer"] == short["answer"]
    assert extract_think(short["completion"]) + "." in row["completion"]


@pytest.mark.parametrize("task,reward", [("arithmetic_cot", accuracy_reward), ("general", exact_match_reward),
                                         ("copy", exact_match_reward), ("reverse", exact_match_reward),
                                         ("uppercase", exact_match_reward), ("convert", exact_match_reward)])
def test_new_tasks_have_verified_solutions_and_disjoint_splits(task, reward):
    rows = load_rows(f"synthetic:{task}?n=60&split=train&seed=2")
    kwargs = {"workers": 0} if reward is accuracy_reward else {}
    assert reward([r["completion"] for r in rows], answer=[r["answer"] for r in rows], **kwargs) == [1.0] * 60
    assert all(is_well_formatted(r["completion"]) for r in rows)
    # a wrong answer is scored wrong (the verifier can fail)
    wrong = [r["completion"].replace("{" + r["answer"] + "}", "{" + r["answer"] + "x}") for r in rows]
    assert reward(wrong, answer=[r["answer"] for r in rows], **kwargs) == [0.0] * 60
    test = generate(task, 30, "test", seed=2)
    assert {split_of(r["prompt"]) for r in test} == {"test"} and {split_of(r["prompt"]) for r in rows} == {"train"}


def test_general_answers_are_computed_not_copied():
    rows = {r["task"]: r for r in generate("general", 200, "train", seed=0)}
    word = rows["reverse"]["prompt"].split()[-1].rstrip(".")
    assert rows["reverse"]["answer"] == word[::-1]
    assert rows["uppercase"]["answer"] == rows["uppercase"]["prompt"].split()[1].upper()
    x, src = rows["convert"]["prompt"].split()[1:3]
    factor = {"km": 1000, "m": 100, "kg": 1000, "cm": 10, "t": 1000, "dm": 10}[src]
    assert rows["convert"]["answer"] == str(int(x) * factor)
    assert rows["copy"]["completion"] == f"<think>{NO_THINKING}</think><answer>\\boxed{{{rows['copy']['answer']}}}</answer>"


def test_a_list_of_sources_is_their_concatenation(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"prompt": "q", "completion": "c", "answer": "1"}) + "\n")
    rows = load_rows([str(path), "synthetic:general?n=3&split=train"])
    assert len(rows) == 4 and rows[0]["prompt"] == "q" and rows[1]["category"] == "general"
    with pytest.raises(ValueError, match="empty list"):
        load_rows([])


# ---------------------------------------------------------------------------------------------- predict
def run_predict(out: Path, *extra: str, n_prompts: int = 24) -> subprocess.CompletedProcess:
    bench = json.dumps([{"name": "arithmetic", "source": f"synthetic:arithmetic?n={n_prompts}&split=train&seed=3",
                         "reward": "accuracy", "votes": False}])
    cmd = [sys.executable, "-m", "r1lightning", "predict", "--config",
           str(ROOT / "configs/recipe/tiny/3a_rejection_sampling.yaml"), "--data.init_args.benchmarks", bench,
           "--model.init_args.output_dir", str(out), "--model.init_args.sampling.max_new_tokens", "64",
           "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_outputs(out: Path, n_prompts: int, k: int) -> tuple[list[dict], dict]:
    data, samples = read_jsonl(out / "data.jsonl"), read_jsonl(out / "samples.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert len(samples) == n_prompts * k == summary["samples"]
    assert sorted({(s["prompt_id"], s["sample_index"]) for s in samples}) == sorted(
        (s["prompt_id"], s["sample_index"]) for s in samples)  # no sample twice
    assert len({s["prompt_id"] for s in samples}) == n_prompts
    assert summary["kept"] == len(data) == sum(s["kept"] for s in samples)
    assert sum(summary["rejected_by"].values()) == summary["rejected"]
    # every kept sample really passes every check, scored again here
    assert data, "the tiny base solves ~20% of the problems: some sample must be kept"
    assert accuracy_reward([d["completion"] for d in data], answer=[d["answer"] for d in data], workers=0) == \
        [1.0] * len(data)
    assert all(is_well_formatted(d["completion"]) for d in data)
    for d in data:
        assert set(d) >= {"prompt", "completion", "answer", "source_model", "prompt_id", "sample_index", "reward",
                          "tokens", "filters_passed"}
        assert d["prompt"].startswith("Compute ") and d["filters_passed"][:4] == ["untruncated", "format", "correct",
                                                                                 "language"]
    rejected_correct = [s for s in samples if not s["kept"] and s["rejected_by"] == "correct"]
    assert rejected_correct and all(not s["correct"] for s in rejected_correct)
    return data, summary


def test_predict_writes_an_sft_dataset_with_provenance_and_a_summary(tmp_path):
    proc = run_predict(tmp_path / "rs")
    data, summary = check_outputs(tmp_path / "rs", 24, 4)
    assert summary["source_model"] == "r1lightning/assets/tiny_base" and summary["world_size"] == 1
    assert "kept" in proc.stdout
    # the dataset feeds the SFT stage as it is
    from r1lightning.data.datamodule import SFTDataModule
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ROOT / "r1lightning/assets/tiny_base"))
    dm = SFTDataModule(train_data=[str(tmp_path / "rs" / "data.jsonl"), "synthetic:general?n=4&split=train"],
                       tokenizer=tok, batch_size=2, max_length=192)
    dm.setup("fit")
    assert len(dm.train_set) == len(data) + 4


@pytest.mark.slow
def test_predict_on_two_ranks_samples_every_prompt_once_and_rank0_merges(tmp_path):
    run_predict(tmp_path / "rs2", "--trainer.devices", "2", "--trainer.strategy", "ddp", n_prompts=15)
    _, summary = check_outputs(tmp_path / "rs2", 15, 4)
    assert summary["world_size"] == 2
    assert not list((tmp_path / "rs2").glob("*.rank*.jsonl"))  # the parts were merged and removed


# ---------------------------------------------------------------------------------------------- cold-start data
@pytest.mark.parametrize("sample,expected", [
    # a right worked solution: the same numbers in sentences
    ("<think>23+45=68, 68+17=85</think><answer>\\boxed{85}</answer>",
     "<think>Add left to right, keeping a running total: 23+45=68, 68+17=85. So the total is 85.</think>"
     "<answer>The result is \\boxed{85}.</answer>"),
    # a wrong one keeps its own (wrong) sums: the cold start teaches the format, not the skill
    ("<think>23+45=68, 68+17=84</think><answer>\\boxed{84}</answer>",
     "<think>Add left to right, keeping a running total: 23+45=68, 68+17=84. So the total is 84.</think>"
     "<answer>The result is \\boxed{84}.</answer>"),
    # a step that does not start from the previous result is not a running total: dropped
    ("<think>23+45=68, 69+17=86</think><answer>\\boxed{86}</answer>", None),
    # a boxed answer other than the last sum: dropped
    ("<think>23+45=68, 68+17=85</think><answer>\\boxed{86}</answer>", None),
    # not the worked format at all
    ("<think>85</think><answer>\\boxed{85}</answer>", None),
    ("garbage \\boxed{85}", None),
    ("", None),
])
def test_cold_start_rewrite_keeps_the_base_models_numbers(sample, expected):
    from r1lightning.data.cold_start import rewrite_readable

    assert rewrite_readable(sample) == expected


def test_the_shipped_cold_start_file_is_the_rewritten_base_samples():
    from r1lightning.data.cold_start import rewrite_readable

    rows = load_rows(str(ROOT / "r1lightning/assets/cold_start/tiny_base_rewritten.jsonl"))
    assert len(rows) == 3672
    assert all(rewrite_readable(r["base_sample"]) == r["completion"] for r in rows)
    assert all(split_of(r["prompt"]) == "train" for r in rows)
    graded = accuracy_reward([r["completion"] for r in rows], answer=[r["answer"] for r in rows], workers=0)
    assert [g > 0.5 for g in graded] == [r["correct"] for r in rows]
    assert sum(r["correct"] for r in rows) == 800  # wrong samples are kept on purpose
