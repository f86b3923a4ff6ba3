"""The whole DeepSeek-R1 recipe as one command: stages run in order, each reading the previous one's export.

    python -m r1lightning.recipe run configs/recipe/tiny.yaml --out outputs/recipe      # the miniature
    python -m r1lightning.recipe run configs/recipe/tiny.yaml --out /tmp/r --short      # a few steps per stage (CI)
    python -m r1lightning.recipe table --out outputs/recipe                              # the results table again

A *recipe* (YAML) names a base model, a tokenizer every handed-over model must share, an evaluation config and
the stages. Each stage is one ordinary r1lightning run (``python -m r1lightning fit|predict --config ...``)
whose config is the stage's YAML with the ``set:`` values written in (dotted keys; ``{base}``,
``{<stage>.model}`` = that stage's HF export, ``{<stage>.data}`` = its rejection-sampling dataset); the runner
writes the resolved config to ``<out>/<stage>/config.yaml`` and also points the export / output folder and
the logger into ``<out>/<stage>``. Before a stage runs, every input is checked, and a missing or mismatched
one stops the chain with a message naming the stage and the path: a model folder without config, weights or
tokenizer, a tokenizer whose vocabulary differs from the recipe's, an empty or missing dataset.

Restarts: a stage is done when ``<out>/<stage>/DONE.json`` exists, written only after its outputs were
checked; a done stage is skipped unless its resolved config or an input stage's result changed since (then it
reruns, and so does everything downstream). A stage killed half-way has no marker. A training (``fit``) stage
resumes from the newest complete checkpoint in its folder -- ``last.ckpt`` or any other ModelCheckpoint file,
the ``preempted.ckpt`` that SIGTERM leaves (:mod:`r1lightning.preemption`), SLURM's ``hpc_ckpt_*.ckpt``, a
sharded (FSDP2) or DeepSpeed checkpoint folder; one cut off by the kill is passed over -- when its resolved
config and inputs are the ones it started with (``<out>/<stage>/STARTED.json``): ``fit --config ...
--ckpt_path <checkpoint>``, into the same TensorBoard folder, with optimizer, schedules, callbacks and data
position restored. Otherwise (no complete checkpoint, a changed config or input, a ``predict`` stage) its folder
is cleared and the stage runs again from its start.

Every stage that produces a model is evaluated on held-out data with the recipe's ``eval`` config
(``python -m r1lightning test``; ``<out>/<stage>/eval/summary.json``), and the run ends with one markdown table
(``<out>/results.md``): held-out pass@1, format rate, language consistency, response length, the reward model's
pairwise accuracy and the wall-clock of every stage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

MARKER = "DONE.json"
STARTED = "STARTED.json"  # config hash and inputs of the run a stage folder holds, written before it starts
PRODUCTS = ("model", "data", None)
_REF_RE = re.compile(r"\{([A-Za-z0-9_]+)(?:\.(model|data))?\}")


class RecipeError(RuntimeError):
    """A recipe that cannot run: a bad spec, a missing or mismatched hand-over, a failed stage."""


@dataclass
class Stage:
    name: str
    command: str  # fit | predict
    config: str
    title: str = ""
    produces: Optional[str] = None  # model | data | None
    set: dict = field(default_factory=dict)
    short: dict = field(default_factory=dict)
    evaluate: bool = True
    metrics: dict = field(default_factory=dict)  # {table column: TensorBoard tag} read from the stage's logs
    tokenizer: Any = None  # the vocabulary its export must have: None = the recipe's, false = any, or a folder


@dataclass
class Recipe:
    base: str
    stages: list[Stage]
    eval_config: Optional[str] = None
    tokenizer: Optional[str] = None
    short: dict = field(default_factory=dict)
    eval_short: dict = field(default_factory=dict)
    path: str = ""


# ------------------------------------------------------------------------------------------------ spec


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and check a recipe YAML; every error names the file and the stage."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe {str(path)!r} does not exist")
    spec = yaml.safe_load(p.read_text()) or {}
    if not isinstance(spec, dict) or "stages" not in spec or "base" not in spec:
        raise RecipeError(f"recipe {p}: expected a mapping with 'base' and 'stages'")
    stages: list[Stage] = []
    for i, raw in enumerate(spec["stages"]):
        if not isinstance(raw, dict) or "name" not in raw or "config" not in raw:
            raise RecipeError(f"recipe {p}: stage #{i + 1} needs 'name' and 'config'")
        raw = dict(raw)
        if "eval" in raw:
            raw["evaluate"] = raw.pop("eval")
        raw.setdefault("command", "fit")
        unknown = set(raw) - set(Stage.__dataclass_fields__)
        if unknown:
            raise RecipeError(f"recipe {p}: stage {raw['name']!r} has unknown keys {sorted(unknown)}")
        stage = Stage(**raw)
        if stage.command not in ("fit", "predict"):
            raise RecipeError(f"recipe {p}: stage {stage.name!r}: command must be fit or predict, got {stage.command!r}")
        if stage.produces not in PRODUCTS:
            raise RecipeError(f"recipe {p}: stage {stage.name!r}: produces must be model, data or null")
        if stage.name in {s.name for s in stages} or stage.name == "base":
            raise RecipeError(f"recipe {p}: stage name {stage.name!r} is used twice (or is 'base')")
        if not Path(stage.config).is_file():
            raise RecipeError(f"recipe {p}: stage {stage.name!r}: config {stage.config!r} does not exist")
        for key, value in stage.set.items():  # references only to earlier stages, of what they produce
            for ref, kind in _refs(value):
                if ref == "base":
                    continue
                earlier = {s.name: s for s in stages}
                if ref not in earlier:
                    raise RecipeError(f"recipe {p}: stage {stage.name!r} ({key}) refers to {{{ref}.{kind}}}, which is "
                                      "not an earlier stage")
                if earlier[ref].produces != kind:
                    raise RecipeError(f"recipe {p}: stage {stage.name!r} ({key}) wants the {kind} of stage {ref!r}, "
                                      f"which produces {earlier[ref].produces or 'nothing'}")
        stages.append(stage)
    eval_config = spec.get("eval")
    if eval_config is not None and not Path(eval_config).is_file():
        raise RecipeError(f"recipe {p}: eval config {eval_config!r} does not exist")
    return Recipe(base=spec["base"], stages=stages, eval_config=eval_config, tokenizer=spec.get("tokenizer"),
                  short=spec.get("short") or {}, eval_short=spec.get("eval_short") or {}, path=str(p))


def _refs(value: Any) -> list[tuple[str, Optional[str]]]:
    if isinstance(value, str):
        return [(m.group(1), m.group(2)) for m in _REF_RE.finditer(value)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs(v)]
    return []


def set_dotted(config: dict, key: str, value: Any) -> None:
    """``config['a']['b']['c'] = value`` for ``key = 'a.b.c'``, creating mappings on the way."""
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


# ------------------------------------------------------------------------------------------------ hand-over checks


def check_model(path: str | os.PathLike, stage: str, what: str, tokenizer: Optional[str] = None) -> None:
    """An HF model folder fit to hand over: config, weights, tokenizer, and the recipe's vocabulary."""
    from r1lightning.policy import resolve_path

    p = resolve_path(path)
    where = f"stage {stage!r}: {what} = {str(path)!r}"
    if not p.is_dir():
        raise RecipeError(f"{where} does not exist (no export: did the stage that makes it finish?)")
    if not (p / "config.json").is_file():
        raise RecipeError(f"{where} is not a Hugging Face model folder (no config.json)")
    if not any(p.glob("*.safetensors")) and not any(p.glob("pytorch_model*.bin")):
        raise RecipeError(f"{where} holds no weights (*.safetensors / pytorch_model.bin)")
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise RecipeError(f"{where} holds no tokenizer (tokenizer.json / tokenizer_config.json)")
    if tokenizer is not None:
        mine, ref = _vocab(p), _vocab(resolve_path(tokenizer))
        if mine != ref:
            only = sorted(set(mine) ^ set(ref))[:5]
            raise RecipeError(f"{where}: its tokenizer's vocabulary ({len(mine)} tokens) differs from the recipe's "
                              f"tokenizer {tokenizer!r} ({len(ref)} tokens; e.g. {only}); every stage must hand over "
                              "models with the same tokenizer")


def _vocab(folder: Path) -> dict:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True).get_vocab()


def check_data(path: str | os.PathLike, stage: str, what: str) -> int:
    """A jsonl dataset fit to hand over (exists, at least one row); returns its row count."""
    p = Path(path)
    where = f"stage {stage!r}: {what} = {str(path)!r}"
    if not p.is_file():
        raise RecipeError(f"{where} does not exist (did the stage that makes it finish?)")
    with open(p, encoding="utf-8") as f:
        rows = sum(1 for line in f if line.strip())
    if rows == 0:
        summary = p.parent / "summary.json"
        hint = f"; see {summary} for why every sample was rejected" if summary.is_file() else ""
        raise RecipeError(f"{where} is empty (0 rows){hint}")
    return rows


# ------------------------------------------------------------------------------------------------ running

Runner = Callable[[list[str], Path], int]


def checkpoint_written(path: Path) -> Optional[float]:
    """When the checkpoint at ``path`` was completely written, or None if it is not one or was cut off.

    A checkpoint file (torch's zip format: a file killed half-way through its write has no central directory at
    its end, so ``zipfile`` rejects it), a sharded folder (FSDP2 / torch.distributed.checkpoint) whose ``meta.pt``
    is whole, or a DeepSpeed folder, whose ``latest`` file DeepSpeed writes after every shard."""
    import zipfile

    from r1lightning.cli import checkpoint_file

    stored = checkpoint_file(path)  # the file itself, or a sharded folder's meta.pt
    if stored is not None:
        return stored.stat().st_mtime if zipfile.is_zipfile(stored) else None
    if (path / "latest").is_file():
        return (path / "latest").stat().st_mtime
    return None


def subprocess_runner(args: list[str], log: Path) -> int:
    """``python -m r1lightning ARGS`` with its output in ``log``; returns the exit code."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {sys.executable} -m r1lightning {' '.join(args)}\n")
        f.flush()
        return subprocess.call([sys.executable, "-m", "r1lightning", *args], stdout=f, stderr=subprocess.STDOUT,
                               env=env)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class RecipeRun:
    """One run of a recipe into ``out`` (see the module docstring)."""

    def __init__(self, recipe: Recipe, out: str | os.PathLike, short: bool = False, runner: Runner = subprocess_runner,
                 echo: Callable[[str], None] = print):
        self.recipe, self.out, self.short = recipe, Path(out).resolve(), short
        self.runner, self.echo = runner, echo

    # paths
    def stage_dir(self, name: str) -> Path:
        return self.out / name

    def product(self, name: str, kind: str) -> Path:
        return self.stage_dir(name) / ("hf_model" if kind == "model" else "data.jsonl")

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if not isinstance(value, str):
            return value

        def sub(m: re.Match) -> str:
            return self.recipe.base if m.group(1) == "base" else str(self.product(m.group(1), m.group(2)))

        return _REF_RE.sub(sub, value)

    def tokenizer_of(self, stage: Stage) -> Optional[str]:
        if stage.tokenizer is None:
            return self.recipe.tokenizer
        return stage.tokenizer or None

    # the stage's config
    def stage_config(self, stage: Stage) -> dict:
        config = yaml.safe_load(Path(stage.config).read_text()) or {}
        folder = self.stage_dir(stage.name)
        values = {**stage.set}
        if self.short:
            values.update(self.recipe.short if stage.command == "fit" else {})
            values.update(stage.short)
        for key, value in values.items():
            set_dotted(config, key, self.resolve(value))
        trainer = config.setdefault("trainer", {})
        trainer["default_root_dir"] = str(folder)
        if trainer.get("logger", True) not in (False, None):
            trainer["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                 "init_args": {"save_dir": str(folder), "name": "logs", "version": "run"}}
        init = config.setdefault("model", {}).setdefault("init_args", {})
        if stage.command == "fit":
            init["export_dir"] = str(folder / "hf_model")
        else:
            init["output_dir"] = str(folder)
        return config

    def inputs(self, stage: Stage) -> list[tuple[str, str, str, Optional[str]]]:
        """(key, path, kind, source stage) of every handed-over model / dataset of ``stage``."""
        found = []
        for key, value in stage.set.items():
            values = value if isinstance(value, list) else [value]
            for v in values:
                for ref, kind in _refs(v):
                    if ref == "base":
                        found.append((key, self.recipe.base, "model", None))
                    else:
                        found.append((key, str(self.product(ref, kind)), kind, ref))
        return found

    def check_inputs(self, stage: Stage) -> dict:
        """Refuse a missing or mismatched input (naming the stage and the path); the upstream stages' markers."""
        upstream = {}
        for key, path, kind, source in self.inputs(stage):
            if source is not None and not (self.stage_dir(source) / MARKER).is_file():
                raise RecipeError(f"stage {stage.name!r}: {key} needs the {kind} of stage {source!r} ({path}), which "
                                  "has not finished (no DONE.json); run the recipe from the start")
            if kind == "model":
                check_model(path, stage.name, key, self.tokenizer_of(stage))
            else:
                check_data(path, stage.name, key)
            if source is not None:
                upstream[source] = json.loads((self.stage_dir(source) / MARKER).read_text())["finished"]
        return upstream

    def _fingerprint(self, config: dict) -> str:
        return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def is_done(self, stage: Stage, config: dict, upstream: dict) -> tuple[bool, str]:
        marker = self.stage_dir(stage.name) / MARKER
        if not marker.is_file():
            return False, "not run yet" if not self.stage_dir(stage.name).exists() else "interrupted (no DONE.json)"
        done = json.loads(marker.read_text())
        if done.get("config_hash") != self._fingerprint(config):
            return False, "its resolved config changed"
        if done.get("upstream") != upstream:
            return False, "an input stage ran again"
        if stage.produces and not self.product(stage.name, stage.produces).exists():
            return False, f"its {stage.produces} is missing"
        return True, "done"

    def resume_point(self, stage: Stage, config: dict, upstream: dict) -> tuple[Optional[Path], str]:
        """The checkpoint an interrupted ``fit`` stage continues from, or None and why it starts again.

        Only a folder started with the same resolved config and inputs (its STARTED.json) is continued; of its
        complete checkpoints (:func:`checkpoint_written`) anywhere under it, the newest is taken."""
        folder = self.stage_dir(stage.name)
        if stage.command != "fit":
            return None, "a predict stage has no checkpoints"
        try:
            started = json.loads((folder / STARTED).read_text())
        except (OSError, ValueError):
            return None, f"no readable {STARTED}"
        if started.get("config_hash") != self._fingerprint(config) or started.get("upstream") != upstream:
            return None, "its resolved config or an input changed since it started"
        found = [(t, p) for p in folder.rglob("*.ckpt") if (t := checkpoint_written(p)) is not None]
        if not found:
            return None, "no complete checkpoint was saved"
        return max(found)[1], ""

    def run_stage(self, stage: Stage) -> None:
        upstream = self.check_inputs(stage)
        config = self.stage_config(stage)
        done, why = self.is_done(stage, config, upstream)
        folder = self.stage_dir(stage.name)
        if done:
            self.echo(f"[recipe] {stage.name}: done already, skipped ({folder / MARKER})")
            return
        ckpt, why_not = self.resume_point(stage, config, upstream) if folder.exists() else (None, "")
        if ckpt is not None:
            self.echo(f"[recipe] {stage.name}: {why}; resumes from {ckpt}")
        else:
            if folder.exists():
                self.echo(f"[recipe] {stage.name}: {why} ({why_not}); its folder is cleared and the stage runs from "
                          "its start")
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            (folder / STARTED).write_text(json.dumps({"config_hash": self._fingerprint(config), "upstream": upstream,
                                                      "started": f"{time.time():.6f}"}, indent=2))
        cfg_path = folder / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
        args = [stage.command, "--config", str(cfg_path)] + (["--ckpt_path", str(ckpt)] if ckpt is not None else [])
        self.echo(f"[recipe] {stage.name}: python -m r1lightning {' '.join(args)}")
        t0 = time.time()
        log = folder / "stage.log"
        code = self.runner(args, log)
        seconds = time.time() - t0
        if code != 0:
            raise RecipeError(f"stage {stage.name!r} failed (exit code {code}); log {log}:\n{_tail(log)}")
        products = {}
        if stage.produces == "model":
            check_model(self.product(stage.name, "model"), stage.name, "its export", self.tokenizer_of(stage))
        elif stage.produces == "data":
            products["rows"] = check_data(self.product(stage.name, "data"), stage.name, "its dataset")
        if stage.produces:
            products[stage.produces] = str(self.product(stage.name, stage.produces))
        marker = {"stage": stage.name, "command": stage.command, "config": stage.config,
                  "config_hash": self._fingerprint(config), "upstream": upstream, "seconds": seconds,
                  "finished": f"{time.time():.6f}",  # identifies this run of the stage for the ones downstream
                  "resumed_from": str(ckpt) if ckpt is not None else None,  # seconds: this last attempt only
                  "outputs": products, "metrics": self._read_metrics(stage)}
        (folder / MARKER).write_text(json.dumps(marker, indent=2))
        self.echo(f"[recipe] {stage.name}: finished in {seconds / 60:.1f} min")

    def _read_metrics(self, stage: Stage) -> dict:
        if not stage.metrics:
            return {}
        from r1lightning.analysis import load_scalars

        logs = self.stage_dir(stage.name) / "logs"
        try:
            df = load_scalars(logs)
        except Exception:  # noqa: BLE001 - no event file: the metric is reported missing, not the stage failed
            return {}
        out = {}
        for column, tag in stage.metrics.items():
            rows = df[df["tag"] == tag] if "tag" in df else []
            if len(rows):
                out[column] = float(rows.sort_values("step")["value"].iloc[-1])
        return out

    # evaluation
    def evaluate(self, name: str, model: str) -> None:
        if self.recipe.eval_config is None:
            return
        folder = self.stage_dir(name) / "eval"
        if (folder / "summary.json").is_file():
            return
        folder.mkdir(parents=True, exist_ok=True)
        args = ["test", "--config", self.recipe.eval_config, "--model.init_args.policy.model_name_or_path", model,
                "--model.init_args.output_dir", str(folder), "--model.init_args.label", name,
                "--trainer.default_root_dir", str(folder)]  # LightningCLI saves the resolved config there
        if self.short:
            for key, value in self.recipe.eval_short.items():
                args += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
        self.echo(f"[recipe] {name}: held-out evaluation")
        t0 = time.time()
        log = folder / "eval.log"
        code = self.runner(args, log)
        if code != 0 or not (folder / "summary.json").is_file():
            raise RecipeError(f"evaluation of {name!r} ({model}) failed (exit code {code}); log {log}:\n{_tail(log)}")
        (folder / "seconds.json").write_text(json.dumps({"seconds": time.time() - t0}))

    def run(self) -> str:
        self.out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        check_model(self.recipe.base, "base", "base", self.recipe.tokenizer)
        self.evaluate("base", self.recipe.base)
        for stage in self.recipe.stages:
            self.run_stage(stage)
            if stage.produces == "model" and stage.evaluate:
                self.evaluate(stage.name, str(self.product(stage.name, "model")))
        table = write_results(self.recipe, self.out)
        self.echo(f"\n[recipe] all stages done ({(time.time() - t0) / 60:.1f} min this run); {self.out / 'results.md'}:\n")
        self.echo(table)
        return table


# ------------------------------------------------------------------------------------------------ the table


def _fmt(value: Optional[float], pct: bool = True, digits: int = 1) -> str:
    if value is None or value != value:
        return "–"
    return f"{100 * value:.{digits}f}%" if pct else f"{value:.{digits}f}"


def stage_rows(recipe: Recipe, out: Path) -> list[dict]:
    """One row per stage (and the base): its held-out metrics, rejection-sampling counts, RM metrics, time."""
    rows = []
    names = [("base", "base model", None)] + [(s.name, s.title or s.name, s) for s in recipe.stages]
    for name, title, stage in names:
        folder = out / name
        row: dict[str, Any] = {"stage": name, "title": title}
        marker = folder / MARKER
        done = json.loads(marker.read_text()) if marker.is_file() else {}
        row["seconds"] = done.get("seconds")
        row.update(done.get("metrics", {}))
        if stage is not None and stage.produces == "data" and (folder / "summary.json").is_file():
            s = json.loads((folder / "summary.json").read_text())
            row["kept"], row["samples"] = s["kept"], s["samples"]
        summary = folder / "eval" / "summary.json"
        if summary.is_file():
            bench = json.loads(summary.read_text())["benchmarks"]
            seconds = folder / "eval" / "seconds.json"
            row["eval_seconds"] = json.loads(seconds.read_text())["seconds"] if seconds.is_file() else None
            for b, entry in bench.items():
                row[f"{b}/pass@1"] = entry["metrics"].get("pass@1")
            total = sum(e["metrics"].get("samples", 0) for e in bench.values()) or 1
            for key in ("format_rate", "language_consistency"):
                row[key] = sum(e["metrics"].get(key, 0) * e["metrics"].get("samples", 0) for e in bench.values()) / total
            first = next(iter(bench.values()))["metrics"]  # the reasoning set: its length is the CoT's
            row["completion_length"] = first.get("completion_length")
            row["reasoning_set"] = next(iter(bench))
        if done or summary.is_file():
            rows.append(row)
    return rows


def results_table(rows: list[dict]) -> str:
    sets = []
    for r in rows:
        for k in r:
            if k.endswith("/pass@1") and k[: -len("/pass@1")] not in sets:
                sets.append(k[: -len("/pass@1")])
    reasoning = next((r["reasoning_set"] for r in rows if "reasoning_set" in r), "reasoning")
    head = ["stage", *[f"{s} pass@1" for s in sets], "format rate", "language consistency",
            f"response length ({reasoning}, tokens)", "RM pairwise acc.", "kept by rejection sampling", "minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        minutes = sum(v for v in (r.get("seconds"), r.get("eval_seconds")) if v) / 60
        kept = f"{r['kept']} / {r['samples']} ({100 * r['kept'] / max(r['samples'], 1):.0f}%)" if "kept" in r else "–"
        cells = [r["title"], *[_fmt(r.get(f"{s}/pass@1")) for s in sets], _fmt(r.get("format_rate")),
                 _fmt(r.get("language_consistency"), digits=1), _fmt(r.get("completion_length"), pct=False),
                 _fmt(r.get("rm_pairwise_accuracy")), kept, f"{minutes:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(recipe: Recipe, out: Path) -> str:
    rows = stage_rows(recipe, out)
    table = results_table(rows)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return table


# ------------------------------------------------------------------------------------------------ command line


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m r1lightning.recipe", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the stages in order (skipping those done), evaluate, print the table")
    run.add_argument("recipe", help="recipe YAML, e.g. configs/recipe/tiny.yaml")
    run.add_argument("--out", required=True, help="folder of the stages' outputs")
    run.add_argument("--short", action="store_true", help="apply the recipe's `short` values (a few steps per stage)")
    table = sub.add_parser("table", help="print the results table of a run")
    table.add_argument("recipe")
    table.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe)
        if args.command == "run":
            RecipeRun(recipe, args.out, short=args.short).run()
        else:
            print(write_results(recipe, Path(args.out).resolve()))
    except RecipeError as e:
        print(f"[recipe] error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
