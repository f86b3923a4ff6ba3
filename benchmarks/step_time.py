"""GRPO step time of the main job, this checkout against another (e.g. an earlier commit), alternating.

Each run is ``python -m r1lightning fit --config configs/r1.yaml`` for ``--steps`` rollout steps in its own
checkout (so each side runs its own code and configs, callbacks included), without held-out evaluation; the
per-step times of each part (rollout, rewards, train, engine push and verification) are read back from
TensorBoard and the medians of the steps after ``--skip`` warm-up steps are compared (their sum is the step). Runs alternate A, B, A, B, ... so drift of the shared
machine hits both sides alike.

    git worktree add /tmp/r1l_base 4be3727
    python benchmarks/step_time.py --other /tmp/r1l_base --steps 40 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
# the step's parts as both sides log them: rollout, rewards, prepare + optimize, engine push and its verification
TAGS = ("train/time/rollout", "train/time/reward", "train/time/train", "vllm/refresh_s", "vllm/verify_s")


def run(repo: Path, steps: int, extra: list[str]) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = Path(tempfile.mkdtemp(prefix="r1l_step_"))
    cmd = [sys.executable, "-m", "r1lightning", "fit", "--config", str(repo / "configs" / "r1.yaml"),
           "--model.init_args.policy.model_name_or_path", str(repo / "r1lightning" / "assets" / "tiny_base"),
           "--trainer.max_steps", str(steps), "--trainer.max_time", "null", "--trainer.val_check_interval", "100000",
           "--trainer.logger.init_args.save_dir", str(out), "--trainer.default_root_dir", str(out),
           "--model.init_args.eval_sampling", "null", "--model.init_args.export_dir", "none", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"run in {repo} failed:\n{proc.stderr[-3000:]}")
    series: dict[str, list[float]] = {}
    for path in out.rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in TAGS:
            if tag in acc.Tags()["scalars"]:
                series[tag] = [e.value for e in acc.Scalars(tag)]
    return {"wall_s": wall, **series}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other", required=True, type=Path, help="checkout to compare with (e.g. a git worktree)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the medians")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "benchmarks" / "results" / "step_time.json")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more CLI overrides for both sides")
    args = ap.parse_args()
    sides = {"this": HERE, "other": args.other.resolve()}
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    for r in range(args.repeats):
        for name, repo in sides.items():
            res = run(repo, args.steps, args.extra)
            runs[name].append(res)
            print(f"repeat {r} {name}: wall {res['wall_s']:.1f} s, median train "
                  f"{statistics.median(res['train/time/train'][args.skip:]):.3f} s", flush=True)
    summary = {}
    for name, rs in runs.items():
        summary[name] = {tag: statistics.median([v for res in rs for v in res.get(tag, [])[args.skip:]] or [0.0])
                         for tag in TAGS}
        summary[name]["step"] = sum(summary[name].values())
    summary["ratio_this_over_other"] = {k: summary["this"][k] / summary["other"][k] for k in summary["this"]}
    summary["settings"] = {"steps": args.steps, "skip": args.skip, "repeats": args.repeats, "extra": args.extra,
                           "other": str(sides["other"])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
