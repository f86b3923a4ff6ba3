"""`python -m r1lightning.recipe`: the spec, the hand-over checks, skipping and rerunning stages, the table,
the full-scale configs, and (slow) the short chain through the real command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from r1l_testing import read_scalars

from r1lightning.recipe import MARKER, RecipeError, RecipeRun, check_data, check_model, load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY_BASE = ROOT / "r1lightning/assets/tiny_base"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # stage configs are named relative to the repository


# ---------------------------------------------------------------------------------------------- hand-over checks
def test_a_missing_export_is_refused_naming_the_stage_and_the_path(tmp_path):
    with pytest.raises(RecipeError, match=r"stage 'sft': model.init_args.policy.model_name_or_path = '.*nowhere' "
                                          r"does not exist"):
        check_model(tmp_path / "nowhere", "sft", "model.init_args.policy.model_name_or_path")


def test_a_folder_without_config_weights_or_tokenizer_is_refused(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(TINY_BASE, folder)
    check_model(folder, "s", "x", str(TINY_BASE))  # the complete folder passes
    for name, match in [("model.safetensors", "holds no weights"), ("tokenizer.json", None),
                        ("config.json", "no config.json")]:
        broken = tmp_path / f"without_{name}"
        shutil.copytree(TINY_BASE, broken)
        (broken / name).unlink()
        if match is None:  # tokenizer_config.json is left: the tokenizer check is then the vocabulary's
            (broken / "tokenizer_config.json").unlink()
            match = "holds no tokenizer"
        with pytest.raises(RecipeError, match=match):
            check_model(broken, "s", "x")


def test_a_tokenizer_with_another_vocabulary_is_refused(tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "other_vocab"
    shutil.copytree(TINY_BASE, folder)
    tok = AutoTokenizer.from_pretrained(str(TINY_BASE))
    tok.add_tokens(["<extra_token>"])
    tok.save_pretrained(str(folder))
    with pytest.raises(RecipeError, match=r"stage 'reasoning_rl': .*vocabulary \(495 tokens\) differs from the "
                                          r"recipe's tokenizer .*\(494 tokens; e\.g\. \['<extra_token>'\]\)"):
        check_model(folder, "reasoning_rl", "model.init_args.policy.model_name_or_path", str(TINY_BASE))


def test_a_missing_or_empty_dataset_is_refused_with_the_summary_to_read(tmp_path):
    with pytest.raises(RecipeError, match="stage 'sft': train = .* does not exist"):
        check_data(tmp_path / "data.jsonl", "sft", "train")
    (tmp_path / "data.jsonl").write_text("\n")
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(RecipeError, match=r"is empty \(0 rows\); see .*summary.json"):
        check_data(tmp_path / "data.jsonl", "sft", "train")
    (tmp_path / "data.jsonl").write_text('{"prompt": "q", "completion": "c"}\n')
    assert check_data(tmp_path / "data.jsonl", "sft", "train") == 1


# ---------------------------------------------------------------------------------------------- spec
def write_recipe(tmp_path: Path, stages: list[dict], **top) -> Path:
    spec = {"base": str(TINY_BASE), "tokenizer": str(TINY_BASE), "eval": "configs/recipe/tiny/eval.yaml",
            "stages": stages, **top}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


SFT = "configs/recipe/tiny/1_cold_start.yaml"
RS = "configs/recipe/tiny/3a_rejection_sampling.yaml"
THREE = [
    {"name": "a", "config": SFT, "produces": "model", "set": {"model.init_args.policy.model_name_or_path": "{base}"}},
    {"name": "b", "command": "predict", "config": RS, "produces": "data",
     "set": {"model.init_args.policy.model_name_or_path": "{a.model}"}},
    {"name": "c", "config": SFT, "produces": "model",
     "set": {"model.init_args.policy.model_name_or_path": "{base}",
             "data.init_args.train_data": ["{b.data}", "synthetic:general?n=8"]}},
]


@pytest.mark.parametrize("stages,match", [
    ([{"name": "a", "config": SFT, "set": {"x": "{zzz.model}"}}], r"refers to \{zzz.model\}, which is not an earlier"),
    ([{"name": "a", "config": SFT, "produces": "data"}, {"name": "b", "config": SFT, "set": {"x": "{a.model}"}}],
     "wants the model of stage 'a', which produces data"),
    ([{"name": "a", "config": "configs/nope.yaml"}], "config 'configs/nope.yaml' does not exist"),
    ([{"name": "a", "config": SFT}, {"name": "a", "config": SFT}], "used twice"),
    ([{"name": "a", "config": SFT, "command": "test"}], "command must be fit or predict"),
    ([{"name": "a", "config": SFT, "epochs": 3}], r"unknown keys \['epochs'\]"),
])
def test_bad_recipes_are_refused_naming_the_stage(tmp_path, stages, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(write_recipe(tmp_path, stages))


def test_the_stage_config_binds_inputs_and_points_outputs_into_the_stage_folder(tmp_path):
    run = RecipeRun(load_recipe(write_recipe(tmp_path, THREE)), tmp_path / "out")
    recipe = run.recipe
    c = run.stage_config(recipe.stages[2])
    assert c["model"]["init_args"]["policy"]["model_name_or_path"] == str(TINY_BASE)
    assert c["data"]["init_args"]["train_data"] == [str(tmp_path / "out/b/data.jsonl"), "synthetic:general?n=8"]
    assert c["model"]["init_args"]["export_dir"] == str(tmp_path / "out/c/hf_model")
    assert c["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "out/c")
    b = run.stage_config(recipe.stages[1])
    assert b["model"]["init_args"]["output_dir"] == str(tmp_path / "out/b")
    assert b["model"]["init_args"]["policy"]["model_name_or_path"] == str(tmp_path / "out/a/hf_model")
    assert b["trainer"]["logger"] is False  # the stage's own choice is kept


# ---------------------------------------------------------------------------------------------- running, restarts
def write_checkpoint(path: Path) -> Path:
    """A checkpoint as Lightning leaves it at ``path``; returns the file whose time says when it was written.
    ``x.ckpt`` a file (torch's zip format); ``x.ckpt/`` a sharded folder with ``meta.pt`` (FSDP2);
    ``x.ckpt/ds`` a DeepSpeed folder (its ``latest`` written last); ``x.ckpt~cut`` a file whose write was killed."""
    name = str(path)
    kind = "ds" if name.endswith("/ds") else "cut" if name.endswith("~cut") else "file"
    path = Path(name.removesuffix("/ds").removesuffix("~cut"))
    if kind == "ds":
        (path / "checkpoint").mkdir(parents=True, exist_ok=True)
        torch.save({"module": {}}, path / "checkpoint" / "mp_rank_00_model_states.pt")
        (path / "latest").write_text("checkpoint")
        return path / "latest"
    target = path / "meta.pt" if name.endswith("/") else path
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": 4}, target)
    if kind == "cut":
        target.write_bytes(target.read_bytes()[:-40])  # the end of the zip never reached the disk
    return target


class FakeRunner:
    """Stands in for ``python -m r1lightning``: writes what each command would (an export, a dataset, an
    evaluation summary) and records the calls; ``fail`` names a stage folder whose command fails half-way."""

    def __init__(self, rows: int = 3, fail: str | None = None, checkpoints: tuple[str, ...] = ()):
        self.calls: list[str] = []
        self.args: dict[str, list[str]] = {}  # the command line of each stage's last call
        self.rows, self.fail, self.checkpoints = rows, fail, checkpoints

    def __call__(self, args: list[str], log: Path) -> int:
        cmd = args[0]
        if cmd == "test":
            out = Path(args[args.index("--model.init_args.output_dir") + 1])
            self.calls.append(f"eval:{out.parent.name}")
            summary = {"benchmarks": {"arithmetic": {"metrics": {"pass@1": 0.5, "samples": 10, "format_rate": 1.0,
                                                                 "language_consistency": 1.0,
                                                                 "completion_length": 40.0}}}}
            (out / "summary.json").write_text(json.dumps(summary))
            return 0
        config = yaml.safe_load(Path(args[2]).read_text())
        folder = Path(config["trainer"]["default_root_dir"])
        self.calls.append(folder.name)
        self.args[folder.name] = list(args)
        (folder / "partial.txt").write_text("work in progress")
        if self.fail == folder.name:
            for i, rel in enumerate(self.checkpoints):  # written in this order, one second apart
                path = write_checkpoint(folder / rel)
                os.utime(path, (1e9 + i, 1e9 + i))
            return 1
        if cmd == "fit":
            shutil.copytree(TINY_BASE, config["model"]["init_args"]["export_dir"])
        else:
            out = Path(config["model"]["init_args"]["output_dir"])
            (out / "data.jsonl").write_text("".join('{"prompt": "q", "completion": "c"}\n' for _ in range(self.rows)))
            (out / "summary.json").write_text(json.dumps({"kept": self.rows, "samples": 8}))
        return 0


def run_recipe(tmp_path: Path, runner: FakeRunner, stages=THREE) -> RecipeRun:
    run = RecipeRun(load_recipe(write_recipe(tmp_path, stages)), tmp_path / "out", runner=runner, echo=lambda _: None)
    run.run()
    return run


def test_done_stages_are_skipped_and_a_killed_stage_reruns_with_everything_downstream(tmp_path):
    first = FakeRunner()
    run_recipe(tmp_path, first)
    assert first.calls == ["eval:base", "a", "eval:a", "b", "c", "eval:c"]
    again = FakeRunner()
    run_recipe(tmp_path, again)
    assert again.calls == []  # every stage done, every evaluation written
    # a kill in the middle of stage b: its marker is gone (it is written last), a partial file is left
    (tmp_path / "out/b" / MARKER).unlink()
    resumed = FakeRunner()
    run_recipe(tmp_path, resumed)
    assert resumed.calls == ["b", "c", "eval:c"]  # a is kept; c reran because its input was made again
    assert not (tmp_path / "out/b/partial.txt").exists() or (tmp_path / "out/b" / MARKER).is_file()


def test_a_changed_stage_config_reruns_that_stage(tmp_path):
    run_recipe(tmp_path, FakeRunner())
    stages = [dict(s) for s in THREE]
    stages[2] = {**stages[2], "set": {**stages[2]["set"], "trainer.max_steps": 7}}
    runner = FakeRunner()
    run_recipe(tmp_path, runner, stages)
    assert runner.calls == ["c", "eval:c"]


def test_a_failed_stage_stops_the_chain_without_a_marker(tmp_path):
    runner = FakeRunner(fail="b")
    with pytest.raises(RecipeError, match=r"stage 'b' failed \(exit code 1\); log .*stage.log"):
        run_recipe(tmp_path, runner)
    assert not (tmp_path / "out/b" / MARKER).exists() and "c" not in runner.calls
    # the next run clears b's half-done folder and runs it from its start
    runner = FakeRunner()
    run_recipe(tmp_path, runner)
    assert runner.calls == ["b", "c", "eval:c"]


def resume_arg(runner: FakeRunner, stage: str) -> str | None:
    args = runner.args[stage]
    return args[args.index("--ckpt_path") + 1] if "--ckpt_path" in args else None


@pytest.mark.parametrize("checkpoints,newest", [
    (("logs/run/checkpoints/step=2.ckpt", "logs/run/checkpoints/preempted.ckpt"),
     "logs/run/checkpoints/preempted.ckpt"),
    (("logs/run/checkpoints/last.ckpt", "checkpoints/step=4.ckpt"), "checkpoints/step=4.ckpt"),
    (("ckpt/step=4.ckpt/", "ckpt/step=2.ckpt"), "ckpt/step=2.ckpt"),  # a sharded folder (meta.pt), then a file
    (("ckpt/step=2.ckpt", "ckpt/step=4.ckpt/"), "ckpt/step=4.ckpt"),
    (("ckpt/step=2.ckpt", "ckpt/step=4.ckpt/ds"), "ckpt/step=4.ckpt"),  # DeepSpeed
    (("ckpt/step=2.ckpt", "ckpt/preempted.ckpt~cut"), "ckpt/step=2.ckpt"),  # killed while saving: passed over
])
def test_a_killed_training_stage_resumes_from_its_newest_checkpoint(tmp_path, checkpoints, newest):
    killed = FakeRunner(fail="c", checkpoints=checkpoints)
    with pytest.raises(RecipeError, match="stage 'c' failed"):
        run_recipe(tmp_path, killed)
    assert resume_arg(killed, "c") is None  # its first attempt starts from the beginning
    again = FakeRunner()
    run_recipe(tmp_path, again)
    assert again.calls == ["c", "eval:c"]
    assert resume_arg(again, "c") == str(tmp_path / "out/c" / newest)
    assert (tmp_path / "out/c/partial.txt").is_file()  # the folder was kept: its logs continue
    assert json.loads((tmp_path / "out/c" / MARKER).read_text())["resumed_from"] == str(tmp_path / "out/c" / newest)


def test_a_killed_stage_starts_again_when_it_cannot_resume(tmp_path):
    ckpt = ("logs/run/checkpoints/last.ckpt",)
    # no checkpoint, or a sharded-looking folder without meta.pt: nothing to resume from
    run_recipe(tmp_path, FakeRunner())
    (tmp_path / "out/c" / MARKER).unlink()
    (tmp_path / "out/c/ckpt/step=2.ckpt").mkdir(parents=True)
    runner = FakeRunner()
    run_recipe(tmp_path, runner)
    assert runner.calls == ["c", "eval:c"] and resume_arg(runner, "c") is None
    # a changed config: the checkpoint belongs to another run
    (tmp_path / "out/c" / MARKER).unlink()
    with pytest.raises(RecipeError):
        run_recipe(tmp_path, FakeRunner(fail="c", checkpoints=ckpt))
    stages = [dict(s) for s in THREE]
    stages[2] = {**stages[2], "set": {**stages[2]["set"], "trainer.max_steps": 7}}
    runner = FakeRunner()
    run_recipe(tmp_path, runner, stages)
    assert runner.calls == ["c", "eval:c"] and resume_arg(runner, "c") is None
    assert not (tmp_path / "out/c/logs/run/checkpoints/last.ckpt").exists()  # cleared
    # an input stage that ran again: c's checkpoint was trained on the old data
    (tmp_path / "out/c" / MARKER).unlink()
    with pytest.raises(RecipeError):
        run_recipe(tmp_path, FakeRunner(fail="c", checkpoints=ckpt), stages)
    (tmp_path / "out/b" / MARKER).unlink()
    runner = FakeRunner()
    run_recipe(tmp_path, runner, stages)
    assert runner.calls == ["b", "c", "eval:c"] and resume_arg(runner, "c") is None
    # a predict stage has no checkpoints to continue from, even if a file looks like one
    (tmp_path / "out/b" / MARKER).unlink()
    with pytest.raises(RecipeError):
        run_recipe(tmp_path, FakeRunner(fail="b", checkpoints=ckpt), stages)
    runner = FakeRunner()
    run_recipe(tmp_path, runner, stages)
    assert runner.calls == ["b", "c", "eval:c"] and resume_arg(runner, "b") is None


def test_an_empty_dataset_is_refused_before_the_next_stage_runs(tmp_path):
    runner = FakeRunner(rows=0)
    with pytest.raises(RecipeError, match=r"stage 'b': its dataset = '.*out/b/data.jsonl' is empty \(0 rows\); "
                                          r"see .*summary.json"):
        run_recipe(tmp_path, runner)
    assert "c" not in runner.calls


def test_an_export_with_the_wrong_vocabulary_is_refused_at_hand_over(tmp_path):
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    shutil.copytree(TINY_BASE, other)
    tok = AutoTokenizer.from_pretrained(str(TINY_BASE))
    tok.add_tokens(["<x>"])
    tok.save_pretrained(str(other))
    stages = [{"name": "a", "config": SFT, "produces": "model",
               "set": {"model.init_args.policy.model_name_or_path": str(other)}},
              {"name": "b", "config": SFT, "produces": "model",
               "set": {"model.init_args.policy.model_name_or_path": "{base}"}}]
    # a literal path is the user's choice; a model handed over from a stage is checked
    run_recipe(tmp_path, FakeRunner(), stages)
    stages[1]["set"]["model.init_args.policy.model_name_or_path"] = "{a.model}"
    shutil.rmtree(tmp_path / "out/a/hf_model")
    shutil.copytree(other, tmp_path / "out/a/hf_model")
    with pytest.raises(RecipeError, match="stage 'b': model.init_args.policy.model_name_or_path = .*differs"):
        run_recipe(tmp_path, FakeRunner(), stages)


def test_the_table_has_a_row_per_stage(tmp_path):
    run_recipe(tmp_path, FakeRunner())
    table = (tmp_path / "out/results.md").read_text().splitlines()
    assert table[0].startswith("| stage | arithmetic pass@1 | format rate | language consistency |")
    rows = [line.split(" | ")[0].lstrip("| ") for line in table[2:]]
    assert rows == ["base model", "a", "b", "c"]
    assert "3 / 8 (38%)" in table[4] and "50.0%" in table[3]


# ---------------------------------------------------------------------------------------------- shipped recipes
@pytest.mark.parametrize("name", ["tiny", "full"])
def test_shipped_recipes_and_every_stage_config_parse(name, capsys, monkeypatch, tmp_path):
    from r1lightning.cli import main

    monkeypatch.setattr(sys, "argv", ["r1lightning"])

    recipe = load_recipe(ROOT / f"configs/recipe/{name}.yaml")
    assert [s.name for s in recipe.stages][:4] == ["cold_start", "reasoning_rl", "rejection_sampling", "sft"]
    run = RecipeRun(recipe, "/tmp/unused")
    for stage in recipe.stages:
        config = run.stage_config(stage)
        path = tmp_path / f"{stage.name}.yaml"
        path.write_text(yaml.safe_dump(config))
        with pytest.raises(SystemExit) as exit_:
            main([stage.command, "--config", str(path), "--print_config"])
        assert exit_.value.code in (0, None), stage.name
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"].startswith("r1lightning.modules."), stage.name


def test_full_scale_configs_carry_the_papers_values():
    rl = yaml.safe_load((ROOT / "configs/recipe/full/2_reasoning_rl.yaml").read_text())["model"]["init_args"]
    assert (rl["lr"], rl["beta"], rl["sampling"]["n"], rl["epsilon_low"], rl["ref_refresh_steps"]) == \
        (3.0e-6, 0.001, 16, 10.0, 400)
    sft = yaml.safe_load((ROOT / "configs/recipe/full/3b_sft.yaml").read_text())
    assert (sft["model"]["init_args"]["lr"], sft["trainer"]["max_epochs"], sft["data"]["init_args"]["max_length"]) == \
        (5.0e-6, 2, 32768)
    distill = yaml.safe_load((ROOT / "configs/recipe/full/5c_student_distill.yaml").read_text())
    assert distill["model"]["init_args"]["kd_weight"] == 0.0


# ---------------------------------------------------------------------------------------------- a real resume
def sigterm_runner(folder: Path, after: str):
    """``python -m r1lightning ARGS`` as the recipe runs it, sent SIGTERM (a scheduler's preemption) as soon as a
    checkpoint named ``after`` appears under ``folder``; returns the exit code."""
    def run(args: list[str], log: Path) -> int:
        with open(log, "a", encoding="utf-8") as f:
            proc = subprocess.Popen([sys.executable, "-m", "r1lightning", *args], cwd=ROOT, env=ENV, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                deadline = time.time() + 400
                while proc.poll() is None and time.time() < deadline and not any(folder.rglob(after)):
                    time.sleep(0.2)
                proc.send_signal(signal.SIGTERM)
                return proc.wait(timeout=300)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
    return run


@pytest.mark.slow
def test_a_preempted_stage_resumes_and_ends_exactly_where_an_uninterrupted_one_does(tmp_path):
    every = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"every_n_train_steps": 3, "save_top_k": -1}}
    stage = {"name": "sft", "config": SFT, "produces": "model", "eval": False,
             "set": {"model.init_args.policy.model_name_or_path": "{base}", "trainer.max_steps": 12,
                     "trainer.log_every_n_steps": 1, "trainer.enable_checkpointing": True,
                     "trainer.callbacks": [every], "data.init_args.batch_size": 8}}
    whole = RecipeRun(load_recipe(write_recipe(tmp_path, [stage], eval=None)), tmp_path / "whole", echo=lambda _: None)
    whole.run()
    folder = tmp_path / "cut" / "sft"
    cut = RecipeRun(whole.recipe, tmp_path / "cut", runner=sigterm_runner(folder, "*step=6.ckpt"), echo=lambda _: None)
    with pytest.raises(RecipeError, match=r"exit code 143"):  # 128 + SIGTERM: preempted, r1lightning.preemption
        cut.run()
    (preempted,) = folder.rglob("preempted.ckpt")
    stopped_at = torch.load(preempted, map_location="cpu", weights_only=False)["global_step"]
    assert 6 <= stopped_at < 12
    lines: list[str] = []
    RecipeRun(whole.recipe, tmp_path / "cut", echo=lines.append).run()
    assert any(f"resumes from {preempted}" in line for line in lines), lines
    assert f"--ckpt_path {preempted}" in (folder / "stage.log").read_text()
    # every step trained and logged once, in the same TensorBoard run
    steps = sorted(step for step, _ in read_scalars(folder / "logs")["train/loss"])
    assert steps == sorted(step for step, _ in read_scalars(tmp_path / "whole/sft/logs")["train/loss"])
    assert len(steps) == len(set(steps)) == 12
    # and the exported policy is the uninterrupted run's, bit for bit
    want = load_file(tmp_path / "whole/sft/hf_model/model.safetensors")
    got = load_file(folder / "hf_model/model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


# ---------------------------------------------------------------------------------------------- the short chain
@pytest.mark.slow
def test_the_short_chain_runs_through_the_documented_command_and_restarts_by_skipping(tmp_path):
    cmd = [sys.executable, "-m", "r1lightning.recipe", "run", "configs/recipe/tiny.yaml", "--out", str(tmp_path / "r"),
           "--short"]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    recipe = load_recipe(ROOT / "configs/recipe/tiny.yaml")
    for stage in recipe.stages:
        assert (tmp_path / "r" / stage.name / MARKER).is_file(), stage.name
        if stage.produces == "model" and stage.evaluate:  # not the reward model: a scorer, no policy
            assert (tmp_path / "r" / stage.name / "eval/summary.json").is_file(), stage.name
    rows = json.loads((tmp_path / "r/results.json").read_text())
    assert [r["stage"] for r in rows] == ["base"] + [s.name for s in recipe.stages]
    assert all(0.0 <= r["arithmetic/pass@1"] <= 1.0 for r in rows if "arithmetic/pass@1" in r)
    assert 0.0 <= next(r for r in rows if r["stage"] == "reward_model")["rm_pairwise_accuracy"] <= 1.0
    assert "| stage |" in proc.stdout
    again = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done already, skipped") == len(recipe.stages)
    assert "python -m r1lightning fit" not in again.stdout
