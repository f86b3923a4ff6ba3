"""`python -m r1lightning test`: paper-style evaluation of the tiny model on every benchmark preset through the
CLI, of a training checkpoint, sharded over 2 ranks; the data module's presets and exact shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1l_testing import read_scalars
from r1lightning.data.evaluation import PRESETS, EvalDataModule, EvalSet, ExactShardSampler

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
ALL_SETS = ["arithmetic", "gsm8k", "math500", "aime2024", "aime2025", "cnmo", "mmath_zh", "humaneval", "mbpp"]


def run_test_cli(tmp_path: Path, *args: str, name: str = "eval", timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "r1lightning", "test", "--config", str(ROOT / "configs/eval/tiny.yaml"),
           "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--trainer.logger.init_args.name", name,
           *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def summary_of(tmp_path: Path, name: str = "eval") -> tuple[dict, Path]:
    (path,) = sorted((tmp_path / "logs" / name).glob("version_*/eval/summary.json"))
    return json.loads(path.read_text()), path.parent


def samples_of(folder: Path, benchmark: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{benchmark}.samples.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- presets, shards
def test_presets_resolve_and_can_be_overridden():
    aime = EvalSet("aime2024").resolved()
    assert (aime.source, aime.reward, aime.votes, aime.answer_column) == ("benchmark:aime2024", "accuracy", True, "answer")
    code = EvalSet("humaneval", n=3).resolved()
    assert (code.reward, code.votes, code.answer_column, code.n) == ("code", False, None, 3)
    assert "{prompt}" in code.prompt_format
    zh = EvalSet("mmath_ja").resolved()
    assert (zh.source, zh.language) == ("benchmark:mmath?language=ja", "ja")
    mine = EvalSet("mine", source="data.jsonl").resolved()
    assert (mine.reward, mine.prompt_format, mine.votes) == ("accuracy", "{prompt}", True)
    assert set(ALL_SETS) - {"mmath_zh"} <= set(PRESETS)


@pytest.mark.parametrize("spec,match", [
    (EvalSet("nope"), "no source given and no preset"),
    (EvalSet("gsm8k", limit=0), "limit must be a positive integer"),
    (EvalSet("gsm8k", n=-1), "n must be a positive integer"),
    (EvalSet("x", source="a.jsonl", prompt_format="no placeholder"), "prompt_format must contain"),
])
def test_bad_sets_are_refused_naming_the_set(spec, match):
    with pytest.raises(ValueError, match=match):
        spec.resolved()


def test_set_names_must_be_unique_and_present():
    with pytest.raises(ValueError, match="unique"):
        EvalDataModule([EvalSet("gsm8k"), EvalSet("gsm8k", limit=3)])
    with pytest.raises(ValueError, match="at least one"):
        EvalDataModule([])


@pytest.mark.parametrize("size", [0, 1, 7, 10])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_exact_shards_cover_every_row_once(size, world):
    shards = [list(ExactShardSampler(size, world, r)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(size))  # nothing padded, nothing repeated
    assert [len(ExactShardSampler(size, world, r)) for r in range(world)] == [len(s) for s in shards]


def test_a_missing_benchmark_source_names_the_set(tiny_tokenizer, tmp_path):
    dm = EvalDataModule([EvalSet("mine", source=str(tmp_path / "missing.jsonl"))], template="plain",
                        tokenizer=tiny_tokenizer)
    with pytest.raises(FileNotFoundError, match="benchmark 'mine'"):
        dm.setup("test")


# ---------------------------------------------------------------------------------------------- the CLI
def test_every_benchmark_through_the_cli(tmp_path):
    """A short real evaluation (a few problems, k = 2) of the tiny base on every preset, one run."""
    sets = ", ".join(f"{{name: {n}, limit: {20 if n == 'arithmetic' else 2}}}" for n in ALL_SETS)
    proc = run_test_cli(tmp_path, "--data.init_args.benchmarks", f"[{sets}]", "--model.init_args.sampling.n", "2",
                        "--model.init_args.pass_k", "[1, 2]", "--model.init_args.sampling.max_new_tokens", "48")
    summary, folder = summary_of(tmp_path)
    assert list(summary["benchmarks"]) == ALL_SETS
    assert summary["sampling"]["temperature"] == 0.6 and summary["sampling"]["top_p"] == 0.95  # R1's protocol
    scalars = read_scalars(tmp_path / "logs")
    for name in ALL_SETS:
        m = summary["benchmarks"][name]["metrics"]
        questions = 20 if name == "arithmetic" else 2
        assert (m["questions"], m["samples"]) == (questions, 2 * questions), name
        rows = samples_of(folder, name)
        assert len(rows) == 2 * questions
        assert {"id", "sample", "completion", "answer", "score", "correct", "tokens", "finish_reason"} <= set(rows[0])
        # the summary is the per-sample file, aggregated: pass@1 = mean over questions of the share correct
        by_q: dict = {}
        for r in rows:
            by_q.setdefault(r["row"], []).append(r["correct"])
        assert m["pass@1"] == pytest.approx(sum(sum(v) / len(v) for v in by_q.values()) / len(by_q))
        assert m["completion_length"] == pytest.approx(sum(r["tokens"] for r in rows) / len(rows))
        assert m["truncated_ratio"] == pytest.approx(sum(r["finish_reason"] == "length" for r in rows) / len(rows))
        assert m["pass@1_ci_low"] <= m["pass@1"] <= m["pass@1_ci_high"]
        assert ("cons@2" in m) == (name not in ("humaneval", "mbpp")), name  # code does not vote
        assert f"test/{name}/pass@1" in scalars and f"test/{name}/pass@2" in scalars
    assert summary["benchmarks"]["arithmetic"]["metrics"]["pass@1"] > 0  # the base solves some sums (~20%)
    assert summary["benchmarks"]["humaneval"]["settings"]["reward"] == "code"
    assert "| arithmetic |" in proc.stdout and "pass@1 % [CI]" in proc.stdout  # the markdown table at the end
    # the table rebuilds from the JSON files
    table = subprocess.run([sys.executable, "-m", "r1lightning.analysis", "table", str(folder / "summary.json"),
                            str(folder / "summary.json")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert table.returncode == 0, table.stderr
    header, _, row, again = table.stdout.strip().splitlines()
    assert header.split(" | ")[1:3] == ["arithmetic", "gsm8k"] and row == again


def make_checkpoint(path: Path, perturb: bool) -> None:
    """A GRPO-like training checkpoint: the policy (the tiny base, or the base with its weights scrambled),
    a reference model beside it, and hyperparameters of another module, policy settings included."""
    from r1lightning.policy import Policy, PolicyConfig

    cfg = PolicyConfig(model_name_or_path="r1lightning/assets/tiny_base")
    policy = Policy(cfg)
    policy.build()
    gen = torch.Generator().manual_seed(0)
    state = {}
    for k, v in policy.state_dict().items():  # the keys a LightningModule's `self.policy` writes
        if perturb and v.ndim == 2:
            v = v[torch.randperm(v.shape[0], generator=gen)]  # same shapes, a different model
        state[f"policy.{k}"] = v.clone()
        state[f"ref_model.{k.split('.', 1)[1]}"] = v.clone()
    hparams = {"policy": cfg, "beta": 0.001,
               "_class_path": "r1lightning.modules.GRPOModule"}
    torch.save({"state_dict": state, "hyper_parameters": hparams, "epoch": 0, "global_step": 7,
                "pytorch-lightning_version": "2.6.0"}, path)


def test_a_training_checkpoint_is_evaluated_with_its_own_weights(tmp_path):
    greedy = ["--model.init_args.sampling.n", "1", "--model.init_args.sampling.temperature", "0",
              "--data.init_args.benchmarks", "[{name: arithmetic, limit: 30}]", "--model.init_args.policy", "null"]
    scores = {}
    for perturb in (False, True):
        ckpt = tmp_path / f"grpo_{perturb}.ckpt"
        make_checkpoint(ckpt, perturb)
        name = f"eval_{perturb}"
        run_test_cli(tmp_path, *greedy, "--ckpt_path", str(ckpt), name=name)
        summary, _ = summary_of(tmp_path, name)
        assert summary["checkpoint"] == str(ckpt)
        assert summary["policy"] == "r1lightning/assets/tiny_base"  # taken from the checkpoint's hyperparameters
        scores[perturb] = summary["benchmarks"]["arithmetic"]["metrics"]["pass@1"]
    # the base's own weights solve some sums greedily; scrambled weights none -- so the weights were loaded
    assert scores[False] > 0.1 and scores[True] == 0.0


def test_a_checkpoint_without_policy_weights_is_refused(tmp_path):
    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"head.weight": torch.zeros(2)}, "hyper_parameters": {}, "epoch": 0,
                "global_step": 0, "pytorch-lightning_version": "2.6.0"}, ckpt)
    cmd = [sys.executable, "-m", "r1lightning", "test", "--config", str(ROOT / "configs/eval/tiny.yaml"),
           "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--ckpt_path", str(ckpt),
           "--data.init_args.benchmarks", "[{name: arithmetic, limit: 2}]"]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "holds no policy.* weights" in proc.stderr


@pytest.mark.slow
def test_two_ranks_evaluate_exact_shards_and_match_one_process(tmp_path):
    """25 questions over 2 ranks (13 + 12, nothing repeated): the same metrics and samples as one process."""
    args = ["--model.init_args.sampling.n", "1", "--model.init_args.sampling.temperature", "0",
            "--data.init_args.benchmarks", "[{name: arithmetic, limit: 25}]"]
    run_test_cli(tmp_path, *args, name="one")
    run_test_cli(tmp_path, *args, "--trainer.devices", "2", "--trainer.strategy", "ddp", name="two")
    (one, f1), (two, f2) = summary_of(tmp_path, "one"), summary_of(tmp_path, "two")
    assert two["world_size"] == 2
    m1, m2 = one["benchmarks"]["arithmetic"]["metrics"], two["benchmarks"]["arithmetic"]["metrics"]
    assert m2["questions"] == 25 and m2["samples"] == 25
    for key in ("pass@1", "cons@1", "completion_length", "format_rate"):
        assert m2[key] == pytest.approx(m1[key]), key
    s1, s2 = samples_of(f1, "arithmetic"), samples_of(f2, "arithmetic")
    assert [r["row"] for r in s2] == list(range(25))
    assert [r["completion"] for r in s2] == [r["completion"] for r in s1]
    assert not list(f2.glob("*.rank*.jsonl"))  # the per-rank parts were merged and removed


@pytest.mark.slow
def test_the_default_engine_is_vllm_where_installed(tmp_path):
    pytest.importorskip("vllm")
    env_args = ["--model.init_args.rollout", "null", "--model.init_args.sampling.n", "2",
                "--data.init_args.benchmarks", "[{name: arithmetic, limit: 10}]"]
    run_test_cli(tmp_path, *env_args, name="vllm")
    summary, folder = summary_of(tmp_path, "vllm")
    assert summary["engine"] == "VLLMRolloutEngine"
    m = summary["benchmarks"]["arithmetic"]["metrics"]
    assert (m["questions"], m["samples"]) == (10, 20)
    assert len(samples_of(folder, "arithmetic")) == 20


class ScriptedEngine:
    """Answers each prompt with a scripted text (keyed by the prompt's token ids), n times."""

    holds_weights = False

    def __init__(self, answers: dict):
        self.answers = answers

    def generate(self, prompt_ids, sampling):
        from r1lightning.rollout.base import RolloutBatch

        texts = [self.answers[tuple(p)] for p in prompt_ids for _ in range(sampling.n)]
        ids = [[5] * (3 + len(t) % 7) for t in texts]
        return RolloutBatch(prompt_ids=prompt_ids, completion_ids=ids, texts=texts, truncated=[False] * len(texts),
                            n=sampling.n)


def scripted_eval(tmp_path, sets, answer_of) -> dict:
    """Evaluate with an engine that answers every question with ``answer_of(row columns)``; the summary."""
    import lightning.pytorch as pl

    from r1lightning.modules.evaluate import EvalModule
    from r1lightning.policy import PolicyConfig
    from r1lightning.rollout.base import SamplingSettings

    module = EvalModule(PolicyConfig(model_name_or_path="r1lightning/assets/tiny_base"),
                        SamplingSettings(n=2, temperature=0.6, top_p=0.95, max_new_tokens=64), pass_k=[2],
                        output_dir=str(tmp_path / "out"), bootstrap_resamples=100)
    dm = EvalDataModule(sets, template="plain", max_prompt_length=100_000)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    dm.trainer = trainer
    dm._tokenizer = module.tokenizer
    dm.setup("test")
    answers = {}
    for ds in dm.datasets:
        for item in ds.items:
            answers[tuple(item["prompt_ids"])] = answer_of(item["columns"])
    module.engine = ScriptedEngine(answers)
    trainer.test(module, datamodule=dm)
    return module.summary


def test_right_answers_score_one_and_wrong_ones_zero_on_real_rows(tmp_path, monkeypatch):
    """End to end on real rows: the reference answers (math: the gold boxed in the R1 format; code: the canonical
    solution in a fenced block, scored in the sandbox against the row's tests) score pass@1 = cons@2 = 1; answers
    of the wrong question score 0."""
    monkeypatch.chdir(ROOT)
    sets = [EvalSet("gsm8k", limit=4), EvalSet("math500", limit=4), EvalSet("humaneval", limit=3),
            EvalSet("mbpp", limit=3)]

    def right(cols):
        if cols.get("tests") is not None:
            return f"<think>here it is</think><answer>```python\n{cols['solution']}\n```</answer>"
        return f"<think>done</think><answer>\\boxed{{{cols['answer']}}}</answer>"

    summary = scripted_eval(tmp_path / "right", sets, right)
    for name in ("gsm8k", "math500", "humaneval", "mbpp"):
        m = summary["benchmarks"][name]["metrics"]
        assert m["pass@1"] == 1.0 and m["pass@2"] == 1.0, (name, m)
        assert m["format_rate"] == 1.0
        if name in ("gsm8k", "math500"):
            assert m["cons@2"] == 1.0

    def wrong(cols):  # another question's reference: a right-looking answer to the wrong problem
        if cols.get("tests") is not None:
            return "<answer>```python\ndef f():\n    return None\n```</answer>"
        return "<think>done</think><answer>\\boxed{-98765}</answer>"

    summary = scripted_eval(tmp_path / "wrong", sets, wrong)
    for name in ("gsm8k", "math500", "humaneval", "mbpp"):
        m = summary["benchmarks"][name]["metrics"]
        assert m["pass@1"] == 0.0, (name, m)
