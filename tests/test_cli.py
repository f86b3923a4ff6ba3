"""The CLI: every shipped config and callback list parses (found by glob, so new files are covered
without touching this test), and command-line overrides reach the config.

Parsing runs in-process through ``r1lightning.cli.main`` (about 0.5 s a config, against 10-20 s for
a fresh interpreter that imports torch); only ``--help`` runs as a real ``python -m r1lightning``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r1lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
CALLBACKS = sorted((ROOT / "callbacks").glob("*.yaml"))
BASE = ROOT / "configs" / "sft_tiny_base.yaml"  # the config callback lists are checked against


def print_config(args: list[str], capsys, monkeypatch) -> dict:
    """``main(args + ['--print_config'])`` from the repository root; the printed config, parsed."""
    monkeypatch.chdir(ROOT)  # configs may name repository-relative paths
    monkeypatch.setattr(sys, "argv", ["r1lightning"])  # pytest's own arguments are not the CLI's
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, f"{args} exited with {exit_info.value.code}:\n{err}"
    return yaml.safe_load(out)


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
    cfg = print_config(["fit", "--config", str(config)], capsys, monkeypatch)
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
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["r1lightning"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(BASE), "--model.init_args.learning_rate", "0.1", "--print_config"])
    assert exit_info.value.code != 0
    assert "learning_rate" in capsys.readouterr().err
