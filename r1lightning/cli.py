"""``python -m r1lightning`` -- one LightningCLI for every stage (SFT, GRPO, distillation).

The LightningModule and DataModule are chosen by ``class_path`` in the YAML, so a config such as
``configs/r1.yaml`` fully describes a run and any value can be overridden on the command line:

    python -m r1lightning fit --config configs/r1.yaml --model.init_args.lr 5e-5 --trainer.max_steps 200

What R1CLI adds to LightningCLI, all so that a run survives a shared cluster (README "Reliability"):

- ``--ckpt_path``: model arguments that differ from the checkpoint's hyperparameters are applied when they
  are in :data:`r1lightning.resume.SAFE_ON_RESUME` (each one reported) and refused otherwise, with the list
  -- LightningCLI alone silently replaces them by the checkpoint's;
- ``--ckpt_path`` without a fixed logger version: the run logs into the checkpoint's TensorBoard/CSV version
  folder (recorded in the checkpoint), so the resumed curve continues the interrupted one;
- a fixed logger version whose folder already holds files is refused, unless resuming from that run;
- a dotted key below the free-form ``rewards`` mapping (``--model.init_args.rewards.reward_model.path X``) sets
  that one entry of the mapping the config gives (:func:`merge_reward_overrides`); jsonargparse alone would
  silently replace the whole mapping by ``['reward_model.path', 'X']``;
- callbacks added to every run that does not list them: :class:`r1lightning.preemption.Preemption`
  (SIGTERM/SIGUSR1 -> checkpoint + exit 143/138), :class:`r1lightning.resume.RunRecord`,
  :class:`r1lightning.resume.OptimizerFromHparams`.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from r1lightning.resume import RUN_KEY, SAFE_ON_RESUME, model_differences, split_safe

_FILE_LOGGERS = ("TensorBoardLogger", "CSVLogger")  # loggers with save_dir / name / version folders


def _is_launching_process() -> bool:
    """False in the extra ranks of a multi-process launch, which see the folder rank 0 just created."""
    return all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"))


def checkpoint_file(path: Any) -> Optional[Path]:
    """The file holding a checkpoint's hyperparameters and loop state: the checkpoint itself, or the ``meta.pt``
    of a distributed (sharded) checkpoint folder as ModelParallelStrategy (FSDP2) writes; None if neither."""
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir() and (p / "meta.pt").is_file():
        return p / "meta.pt"
    return None


# --model.init_args.rewards.<key>[.<key>...] [=]VALUE (also --model.rewards.<...>): one entry of the rewards mapping
_REWARD_KEY = re.compile(r"^--model\.(?:init_args\.)?rewards\.([A-Za-z0-9_][A-Za-z0-9_.]*)(?:=(.*))?$", re.S)


def split_reward_overrides(args: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """``args`` without the dotted reward keys, and those keys as ``(path below rewards, raw value)`` in order."""
    rest, overrides, i = [], [], 0
    while i < len(args):
        m = _REWARD_KEY.match(args[i]) if isinstance(args[i], str) else None
        if m is None:
            rest.append(args[i])
            i += 1
            continue
        if m.group(2) is not None:
            value, i = m.group(2), i + 1
        elif i + 1 < len(args) and not str(args[i + 1]).startswith("--"):  # a value starting with -- needs KEY=VALUE
            value, i = args[i + 1], i + 2
        else:
            raise ValueError(f"{args[i]} expects a value")
        overrides.append((m.group(1), value))
    return rest, overrides


def merge_reward_overrides(rewards: Any, overrides: list[tuple[str, str]]) -> dict:
    """A copy of the ``rewards`` mapping with each ``(dotted path, YAML value)`` set in it (missing mappings on the
    path are created; an existing entry that is not a mapping is refused rather than silently replaced)."""
    if not isinstance(rewards, dict):
        raise ValueError(f"--model.init_args.rewards.{overrides[0][0]}: the config's rewards is {rewards!r}, not a "
                         "mapping to set an entry of; give the whole mapping instead, e.g. --model.init_args.rewards "
                         "'{accuracy: 1.0, format: 1.0}'")
    merged = copy.deepcopy(rewards)
    for path, raw in overrides:
        value = yaml.safe_load(raw) if raw.strip() else raw
        parts = path.split(".")
        if not all(parts):
            raise ValueError(f"--model.init_args.rewards.{path}: empty key in the dotted path")
        node = merged
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ValueError(f"--model.init_args.rewards.{path}: rewards.{where} is {child!r}, not a mapping; "
                                 f"write it as one (e.g. --model.init_args.rewards.{where} '{{weight: {child!r}}}') "
                                 "or give the whole rewards mapping")
            node = child
        node[parts[-1]] = value
    return merged


def _version_dir(save_dir: str, name: Optional[str], version: Any) -> Path:
    sub = version if isinstance(version, str) else f"version_{version}"
    return Path(save_dir, name, sub) if name else Path(save_dir, sub)


class R1CLI(LightningCLI):
    """LightningCLI with r1lightning's defaults (seeded runs, config saved next to the logs, honest resumes)."""

    ckpt_run: Optional[dict] = None  # the checkpoint's RunRecord entry
    resume_applied: dict = {}  # {model key: (checkpoint value, applied value)}

    # ---------------------------------------------------------------- dotted keys below `rewards`
    def parse_arguments(self, parser, args) -> None:
        """LightningCLI's parsing, with dotted keys below ``model.init_args.rewards`` merged into the mapping the
        rest of the command line (configs included) gives, then passed on as the whole mapping (so
        ``--print_config`` and the saved config show the result)."""
        if isinstance(args, dict) or (args is not None and not isinstance(args, (list, tuple))):
            return super().parse_arguments(parser, args)
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        if any(a in ("-h", "--help") for a in argv):
            return super().parse_arguments(parser, args)
        try:
            rest, overrides = split_reward_overrides(argv)
        except ValueError as e:
            parser.error(str(e))
        if not overrides:
            return super().parse_arguments(parser, args)
        # the mapping the command line gives without the dotted keys (no --print_config: it would print and exit)
        probe = parser.parse_args([a for a in rest if not a.startswith("--print_config")])
        sub = probe.get("subcommand")
        model = (probe[sub] if sub else probe).get("model")
        init = model.get("init_args") if model is not None and "init_args" in model else model
        if init is None or "rewards" not in init:
            name = model.get("class_path") if model is not None and "class_path" in model else "this model"
            parser.error(f"--model.init_args.rewards.{overrides[0][0]}: {name} takes no rewards argument")
        current = init["rewards"]
        current = current.as_dict() if hasattr(current, "as_dict") else current
        try:
            merged = merge_reward_overrides(current, overrides)
        except ValueError as e:
            parser.error(str(e))
        self.config = parser.parse_args([*rest, "--model.init_args.rewards", yaml.safe_dump(merged,
                                                                                           default_flow_style=True)])

    # ---------------------------------------------------------------- --ckpt_path and the model arguments
    def _model_dump(self, sub: str) -> dict:
        dumped = yaml.safe_load(self.parser.dump(self.config, skip_link_targets=False, skip_none=False, format="yaml"))
        return dumped[sub]["model"] or {}

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's merge of the checkpoint's hyperparameters, with SAFE_ON_RESUME kept from the command line."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        ckpt_path = self.config[sub].get("ckpt_path")
        meta = checkpoint_file(ckpt_path)
        if meta is None:
            return  # 'last' / 'hpc' / a missing file: Lightning reports it
        # mmap: only the small entries are read, not a multi-GB state dict
        ckpt = torch.load(meta, weights_only=True, map_location="cpu", mmap=True)
        self.ckpt_run = ckpt.get(RUN_KEY)
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if str(self.config[sub].get("model", {}).get("class_path", "")).endswith((".EvalModule",
                                                                                  ".RejectionSamplingModule")):
            self._eval_checkpoint(sub, ckpt_path, hparams)
            return
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        requested_ns = copy.deepcopy(self.config)
        requested = self._model_dump(sub)
        try:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise
        safe, refused = split_safe(model_differences(requested, self._model_dump(sub)))
        if refused:
            lines = "\n".join(f"  model.init_args.{k}: checkpoint {old!r}, command line/config {new!r}"
                              for k, (old, new) in sorted(refused.items()))
            self.parser.error(
                f"--ckpt_path {ckpt_path}: these model arguments differ from the checkpoint's and cannot change on "
                f"resume:\n{lines}\nOnly {', '.join(SAFE_ON_RESUME)} (beta while it stays > 0) may change. Use the "
                "checkpoint's values, or start a new run from its weights instead of resuming it.")
        for key in {k.split(".", 1)[0] for k in safe}:
            name = f"{sub}.model.init_args.{key}"
            self.config[name] = requested_ns[name]
        self.resume_applied = safe
        if safe:
            rank_zero_warn("resuming with model arguments that differ from the checkpoint's (the command line wins): "
                           + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in sorted(safe.items())))

    def _eval_checkpoint(self, sub: str, ckpt_path: str, hparams: dict) -> None:
        """Evaluating (or sampling from) a training checkpoint: its hyperparameters belong to another module (GRPO, SFT, ...), so
        only its policy settings are taken, and only when the config names no policy of its own."""
        import dataclasses

        if self.config[sub]["model"]["init_args"].get("policy") is not None:
            return
        policy = hparams.get("policy")
        if policy is None:
            self.parser.error(f"--ckpt_path {ckpt_path}: the checkpoint records no policy settings; give "
                              "--model.init_args.policy.model_name_or_path for the model it was trained from")
        if dataclasses.is_dataclass(policy):
            policy = dataclasses.asdict(policy)
        model = {"class_path": self.config[sub]["model"]["class_path"], "init_args": {"policy": policy}}
        self.config = self.parser.parse_object({sub: {"model": model}}, self.config)

    # ---------------------------------------------------------------- logger folder
    def _logger_configs(self, sub: str) -> list:
        cfg = self.config[sub].get("trainer", {}).get("logger")
        items = cfg if isinstance(cfg, list) else [cfg]
        return [c for c in items if hasattr(c, "get") and str(c.get("class_path", "")).rsplit(".", 1)[-1] in _FILE_LOGGERS]

    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        if sub is None:
            return
        ckpt_path = self.config[sub].get("ckpt_path")
        # a file, or a distributed checkpoint's folder (FSDP2)
        ckpt_file = Path(ckpt_path).resolve() if checkpoint_file(ckpt_path) is not None else None
        for logger in self._logger_configs(sub):
            args = logger["init_args"]
            save_dir, name, version = args.get("save_dir"), args.get("name"), args.get("version")
            if save_dir is None:
                continue
            if version is not None:  # fixed by the user: it must be a new folder or the run being resumed
                folder = _version_dir(save_dir, name, version).resolve()
                if folder.is_dir() and any(folder.iterdir()) and _is_launching_process():
                    run = self.ckpt_run or {}
                    same = ckpt_file is not None and (
                        (run.get("log_dir") and Path(run["log_dir"]).resolve() == folder) or folder in ckpt_file.parents)
                    if not same:
                        files = sorted(p.name for p in folder.iterdir())[:5]
                        self.parser.error(
                            f"logger version {version!r}: {folder} already holds another run's files ({', '.join(files)}"
                            "...); their checkpoints and event files would interleave. Choose a new version, remove "
                            "the folder, or resume that run with --ckpt_path <one of its checkpoints>.")
            elif ckpt_file is not None:
                resumed = self._checkpoint_version(ckpt_file, save_dir, name)
                if resumed is not None:
                    args["version"] = resumed

    def _checkpoint_version(self, ckpt_file: Path, save_dir: str, name: Optional[str]) -> Any:
        """The logger version the checkpoint's run wrote to, when it used this save_dir and name."""
        run = self.ckpt_run
        base = (Path(save_dir, name) if name else Path(save_dir)).resolve()
        if run and run.get("version") is not None and run.get("save_dir") is not None:
            run_base = Path(run["save_dir"], run["name"]) if run.get("name") else Path(run["save_dir"])
            return run["version"] if run_base.resolve() == base else None
        # older checkpoints: the ModelCheckpoint default <save_dir>/<name>/version_N/checkpoints/x.ckpt
        if ckpt_file.parent.name == "checkpoints" and ckpt_file.parent.parent.parent == base:
            folder = ckpt_file.parent.parent.name
            return int(folder[len("version_"):]) if folder.startswith("version_") and folder[8:].isdigit() else folder
        return None

    # ---------------------------------------------------------------- default callbacks
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> pl.Trainer:
        from r1lightning.preemption import Preemption
        from r1lightning.resume import OptimizerFromHparams, RunRecord

        listed = [*(config.get("callbacks") or []), *callbacks]
        for cls in (Preemption, RunRecord, OptimizerFromHparams):
            if not any(isinstance(c, cls) for c in listed):
                callbacks.append(cls())
        return super()._instantiate_trainer(config, callbacks)


def _deepspeed_logs_to_stderr() -> None:
    """DeepSpeed logs its accelerator detection to stdout when first imported, and transformers (through
    accelerate) imports it whenever it is installed: import it here with stdout pointed at stderr, which its
    log handler keeps, so that stdout (``--print_config``) stays pure YAML."""
    import contextlib
    import importlib.util

    if "deepspeed" in sys.modules or importlib.util.find_spec("deepspeed") is None:
        return
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed  # noqa: F401


def main(args: list[str] | None = None) -> R1CLI:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _deepspeed_logs_to_stderr()
    return R1CLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        parser_kwargs={"description": "Train reasoning LLMs the DeepSeek-R1 way (GRPO, SFT, distillation)."},
    )


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
