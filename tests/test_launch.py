"""configs/slurm/train.sbatch: valid bash, and the command it would srun parses through the CLI with the
world size spread over nodes (FSDP2 data-parallel size = nodes x GPUs)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from r1l_testing import print_config

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "configs" / "slurm" / "train.sbatch"


def test_sbatch_is_valid_bash():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)


def dry_run(config: str, nodes: int, *extra: str) -> list[str]:
    env = {**os.environ, "DRY_RUN": "1", "SLURM_NNODES": str(nodes), "MASTER_ADDR": "node0", "CONFIG": config}
    out = subprocess.run(["bash", str(SBATCH), *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    words = shlex.split(out)
    assert words[:5] == ["srun", "--kill-on-bad-exit=1", "python", "-m", "r1lightning"]
    return words[5:]


def test_fsdp_recipe_on_four_nodes(capsys, monkeypatch):
    args = dry_run("configs/r1_zero_7b_fsdp.yaml", 4, "--model.init_args.lr", "1e-6")
    cfg = print_config(args, capsys, monkeypatch)
    tr = cfg["trainer"]
    assert (tr["num_nodes"], int(tr["devices"])) == (4, 8)  # devices parses as a str ("auto" | N)
    assert tr["strategy"]["init_args"]["data_parallel_size"] == 32  # every rank of every node holds a shard
    assert cfg["model"]["init_args"]["lr"] == 1e-6  # overrides after the script name reach the CLI


def test_deepspeed_recipe_on_two_nodes(capsys, monkeypatch):
    args = dry_run("configs/distill_1p5b_zero3.yaml", 2)
    assert "--trainer.strategy.init_args.data_parallel_size" not in args  # DeepSpeed shards over the world itself
    cfg = print_config(args, capsys, monkeypatch)
    assert (cfg["trainer"]["num_nodes"], int(cfg["trainer"]["devices"])) == (2, 8)
    assert cfg["trainer"]["strategy"]["class_path"] == "lightning.pytorch.strategies.DeepSpeedStrategy"


def test_sbatch_requests_one_task_per_gpu():
    lines = [ln.split()[1] for ln in SBATCH.read_text().splitlines() if ln.startswith("#SBATCH")]
    assert "--ntasks-per-node=8" in lines and "--gpus-per-node=8" in lines  # Lightning: ntasks-per-node = devices
