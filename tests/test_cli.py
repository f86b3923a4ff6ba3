"""The CLI: every shipped config and callback list parses (found by glob, so new files are covered
without touching this test), and command-line overrides reach the config.

Parsing runs in-process through ``r1lightning.cli.main`` (about 0.5 s a config, against 10-20 s for
a fresh interpreter that imports torch); only ``--help`` runs as a real ``python -m r1lightning``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r1l_testing import print_config, print_config_error

from r1lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
# run configs; the recipe specs (configs/recipe/*.yaml) chain them and are checked in tests/test_recipe.py
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent != ROOT / "configs" / "recipe")
CALLBACKS = sorted((ROOT / "callbacks").glob("*.yaml"))
BASE = ROOT / "configs" / "sft_tiny_base.yaml"  # the config callback lists are checked against


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "r1lightning", "--help"], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out.stdout


def test_configs_are_found():
    assert BASE in CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses(config, capsys, monkeypatch):
    sub = "test" if config.parent.name == "eval" else "fit"  # evaluation configs are run with `test`
    if "RejectionSamplingModule" in config.read_text():
        sub = "predict"
    cfg = print_config([sub, "--config", str(config)], capsys, monkeypatch)
    assert {"trainer", "model", "data"} <= set(cfg)
    assert cfg["model"]["class_path"].startswith("r1lightning.")


@pytest.mark.parametrize("callbacks", CALLBACKS, ids=lambda p: p.name)
def test_callback_list_parses(callbacks, capsys, monkeypatch):
    cfg = print_config(["fit", "--config", str(BASE), "--trainer.callbacks", str(callbacks)], capsys, monkeypatch)
    listed = yaml.safe_load(callbacks.read_text())
    assert isinstance(listed, list), f"{callbacks.name} must be a list of callbacks"
    assert [c["class_path"] for c in cfg["trainer"]["callbacks"]] == [c["class_path"] for c in listed]


def test_callback_list_file_is_applied(tmp_path, capsys, monkeypatch):
    """The ``--trainer.callbacks FILE`` form itself works (callbacks/ may be empty)."""
    path = tmp_path / "cbs.yaml"
    path.write_text("- class_path: lightning.pytorch.callbacks.LearningRateMonitor\n"
                    "  init_args:\n    logging_interval: step\n")
    cfg = print_config(["fit", "--config", str(BASE), "--trainer.callbacks", str(path)], capsys, monkeypatch)
    (cb,) = cfg["trainer"]["callbacks"]
    assert cb["class_path"] == "lightning.pytorch.callbacks.LearningRateMonitor"
    assert cb["init_args"]["logging_interval"] == "step"


def test_command_line_overrides_show_in_config(capsys, monkeypatch):
    cfg = print_config(["fit", "--config", str(BASE), "--model.init_args.lr", "0.123",
                        "--model.init_args.policy.tiny.hidden_size", "32", "--trainer.max_steps", "7"],
                       capsys, monkeypatch)
    assert cfg["model"]["init_args"]["lr"] == 0.123
    assert cfg["model"]["init_args"]["policy"]["tiny"]["hidden_size"] == 32
    assert cfg["trainer"]["max_steps"] == 7


def test_unknown_option_fails(capsys, monkeypatch):
    err = print_config_error(["fit", "--config", str(BASE), "--model.init_args.learning_rate", "0.1"], capsys,
                             monkeypatch)
    assert "learning_rate" in err


# ---------------------------------------------------------------------------------------------
# resuming: command-line model arguments against the checkpoint's, and the logger folder

ZERO = ROOT / "configs" / "r1_zero.yaml"
TINY_ARGS = ["--model.init_args.policy", '{"model_name_or_path": null, "tiny": {"hidden_size": 32, '
             '"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}}',
             "--model.init_args.rollout", "r1lightning.rollout.HFEngineSettings"]


def _fake_checkpoint(tmp_path, capsys, monkeypatch, run=None, name="stored.ckpt", **changes):
    """A checkpoint holding only what LightningCLI reads: the hyperparameters of r1_zero.yaml (+ changes)."""
    import torch

    from r1lightning.resume import RUN_KEY

    cfg = print_config(["fit", "--config", str(ZERO), *TINY_ARGS], capsys, monkeypatch)
    hparams = {"_class_path": cfg["model"]["class_path"], **cfg["model"]["init_args"], **changes}
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": hparams, **({RUN_KEY: run} if run else {})}, path)
    return path


def _resume(args, monkeypatch):
    """Parse and instantiate like ``fit`` would, without fitting."""
    from r1lightning.cli import R1CLI

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["r1lightning"])
    monkeypatch.setattr(R1CLI, "_run_subcommand", lambda self, sub: None)
    return main(["fit", "--config", str(ZERO), *TINY_ARGS, *args])


def test_resume_applies_safe_command_line_changes_and_says_so(tmp_path, capsys, monkeypatch):
    ckpt = _fake_checkpoint(tmp_path, capsys, monkeypatch)
    with pytest.warns(UserWarning, match=r"lr 0.0001 -> 5e-05.*max_grad_norm 1.0 -> 0.5"):
        cli = _resume(["--ckpt_path", str(ckpt), "--model.init_args.lr", "5e-5", "--model.init_args.max_grad_norm",
                       "0.5", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")], monkeypatch)
    assert cli.model.hparams.lr == 5e-5 and cli.model.hparams.max_grad_norm == 0.5  # LightningCLI alone: 1e-4, 1.0
    assert cli.model.hparams.beta == 0.001  # unchanged arguments still come from the checkpoint


def test_resume_uses_the_checkpoints_values_where_the_command_line_agrees(tmp_path, capsys, monkeypatch):
    ckpt = _fake_checkpoint(tmp_path, capsys, monkeypatch, lr=2e-4)
    with pytest.warns(UserWarning, match=r"lr 0.0002 -> 0.0001"):  # the config's lr differs too: reported
        cli = _resume(["--ckpt_path", str(ckpt), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")],
                      monkeypatch)
    assert cli.model.hparams.lr == 1e-4


@pytest.mark.parametrize("args, listed", [
    (["--model.init_args.epsilon_low", "0.3"], "model.init_args.epsilon_low: checkpoint 0.2, command line/config 0.3"),
    (["--model.init_args.sampling.seed", "7"], "model.init_args.sampling.seed: checkpoint 0"),
    (["--model.init_args.beta", "0.0"], "model.init_args.beta: checkpoint 0.001"),  # no reference model: unsafe
])
def test_resume_refuses_other_changes_with_the_list(tmp_path, capsys, monkeypatch, args, listed):
    ckpt = _fake_checkpoint(tmp_path, capsys, monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        _resume(["--ckpt_path", str(ckpt), *args], monkeypatch)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "cannot change on resume" in err and listed in err


def test_resume_continues_the_checkpoints_logger_version(tmp_path, capsys, monkeypatch):
    logs = tmp_path / "logs"
    run = {"logger": "TensorBoardLogger", "save_dir": str(logs), "name": "r1_zero", "version": 3,
           "log_dir": str(logs / "r1_zero" / "version_3")}
    ckpt = _fake_checkpoint(tmp_path, capsys, monkeypatch, run=run)
    (logs / "r1_zero" / "version_3").mkdir(parents=True)
    (logs / "r1_zero" / "version_4").mkdir()  # a later run: Lightning alone would log into version_5
    cli = _resume(["--ckpt_path", str(ckpt), "--trainer.logger.init_args.save_dir", str(logs)], monkeypatch)
    assert cli.trainer.logger.version == 3 and Path(cli.trainer.log_dir) == logs / "r1_zero" / "version_3"
    # without a record, the ModelCheckpoint default layout <save_dir>/<name>/version_N/checkpoints/ names it
    old = _fake_checkpoint(tmp_path, capsys, monkeypatch, name="logs/r1_zero/version_4/checkpoints/x.ckpt")
    cli = _resume(["--ckpt_path", str(old), "--trainer.logger.init_args.save_dir", str(logs)], monkeypatch)
    assert cli.trainer.logger.version == 4


def test_fixed_logger_version_holding_another_run_is_refused(tmp_path, capsys, monkeypatch):
    logs = tmp_path / "logs"
    (logs / "r1_zero" / "shared").mkdir(parents=True)
    (logs / "r1_zero" / "shared" / "events.out.tfevents.1.host").write_text("")
    args = ["--trainer.logger.init_args.save_dir", str(logs), "--trainer.logger.init_args.version", "shared"]
    with pytest.raises(SystemExit):
        _resume(args, monkeypatch)
    assert "already holds another run's files (events.out.tfevents.1.host" in capsys.readouterr().err
    # resuming that very run from its own checkpoint is fine
    run = {"logger": "TensorBoardLogger", "save_dir": str(logs), "name": "r1_zero", "version": "shared",
           "log_dir": str(logs / "r1_zero" / "shared")}
    ckpt = _fake_checkpoint(tmp_path, capsys, monkeypatch, run=run)
    cli = _resume([*args, "--ckpt_path", str(ckpt)], monkeypatch)
    assert cli.trainer.logger.version == "shared"
    # a fresh version is fine too
    cli = _resume(["--trainer.logger.init_args.save_dir", str(logs), "--trainer.logger.init_args.version", "new"],
                  monkeypatch)
    assert cli.trainer.logger.version == "new"


def test_every_run_gets_the_preemption_and_resume_callbacks(tmp_path, monkeypatch):
    from r1lightning.preemption import Preemption
    from r1lightning.resume import OptimizerFromHparams, RunRecord

    cli = _resume(["--trainer.logger.init_args.save_dir", str(tmp_path / "logs")], monkeypatch)
    kinds = [type(c) for c in cli.trainer.callbacks]
    for cls in (Preemption, RunRecord, OptimizerFromHparams):
        assert kinds.count(cls) == 1, cls


def test_optimizer_takes_the_hparams_after_restore():
    """The restored optimizer had lr 1e-4 at half of its schedule; the module now says 5e-5: lr becomes 2.5e-5."""
    from types import SimpleNamespace

    import torch

    from r1lightning.resume import OptimizerFromHparams

    w, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.0}, {"params": [b], "weight_decay": 0.0}], lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)  # the schedule's factor at the restored step
    module = SimpleNamespace(hparams={"lr": 5e-5, "betas": (0.9, 0.99), "weight_decay": 0.1})
    trainer = SimpleNamespace(ckpt_path="x.ckpt", optimizers=[opt], lr_scheduler_configs=[SimpleNamespace(scheduler=sched)])
    OptimizerFromHparams().on_train_start(trainer, module)
    assert [g["lr"] for g in opt.param_groups] == [2.5e-5, 2.5e-5]  # 5e-5 x 0.5
    assert sched.base_lrs == [5e-5, 5e-5]
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # only the >= 2-d weights decay


# ---------------------------------------------------------------------------------------------
# dotted keys below the free-form rewards mapping

RL_ALL = ROOT / "configs" / "recipe" / "tiny" / "4b_rl_all.yaml"


def test_a_dotted_reward_key_sets_that_entry_and_keeps_the_rest(capsys, monkeypatch):
    cfg = print_config(["fit", "--config", str(RL_ALL), "--model.init_args.rewards.reward_model.path", "/tmp/rm",
                        "--model.init_args.rewards.format=0.5",
                        "--model.init_args.rewards.language_consistency.language", "zh"], capsys, monkeypatch)
    rewards = cfg["model"]["init_args"]["rewards"]
    # jsonargparse alone turned the first key into rewards = ['reward_model.path', '/tmp/rm'], dropping the mapping
    assert rewards == {"exact_match": 1.0, "format": 0.5,
                       "language_consistency": {"weight": 0.1, "language": "zh"},
                       "reward_model": {"path": "/tmp/rm", "weight": 1.0, "normalize": "sigmoid", "batch_size": 64}}


def test_a_dotted_reward_key_applies_after_a_whole_mapping(capsys, monkeypatch):
    cfg = print_config(["fit", "--config", str(RL_ALL), "--model.init_args.rewards.accuracy", "2.0",
                        "--model.init_args.rewards", "{accuracy: 1.0, format: 1.0}"], capsys, monkeypatch)
    assert cfg["model"]["init_args"]["rewards"] == {"accuracy": 2.0, "format": 1.0}


@pytest.mark.parametrize("args,message", [
    # format is a bare weight: setting a key inside it would silently drop the weight
    (["--model.init_args.rewards.format.weight", "2"], r"rewards\.format is 1\.0, not a mapping"),
    (["--model.init_args.rewards.reward_model.path"], r"expects a value"),
], ids=["entry-not-a-mapping", "no-value"])
def test_a_dotted_reward_key_that_cannot_apply_fails_clearly(args, message, capsys, monkeypatch):
    assert re.search(message, print_config_error(["fit", "--config", str(RL_ALL), *args], capsys, monkeypatch))


def test_a_dotted_reward_key_on_a_module_without_rewards_fails_clearly(capsys, monkeypatch):
    err = print_config_error(["fit", "--config", str(BASE), "--model.init_args.rewards.accuracy", "1.0"], capsys,
                             monkeypatch)
    assert "r1lightning.modules.SFTModule takes no rewards argument" in err
