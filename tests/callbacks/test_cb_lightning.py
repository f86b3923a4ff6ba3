"""The callbacks inside a real Lightning Trainer: metrics, TensorBoard histograms, checkpoint resume,
and the shipped callback YAMLs."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from r1lightning.callbacks import GenerationLengthScheduler, LanguageConsistencyTracker, ReflectiveTokenStats
from r1lightning.rollout.base import RolloutBatch, SamplingSettings

REPO = Path(__file__).resolve().parents[2]
CALLBACK_YAMLS = sorted((REPO / "callbacks").glob("*.yaml"))


class FakeRolloutModule(pl.LightningModule):
    """Stands in for GRPOModule: returns a fixed rollout as ``outputs["trajectory"]`` from each step and
    records the ``max_new_tokens`` it would have sampled with."""

    TEXTS = ("<think>Wait, let me check 答案</think><answer>4</answer>",  # lang 4/6 (Wait let me check / 答 案); 3 reflective
             "<think>The sum is four</think><answer>5</answer>")           # lang 1.0; 0 reflective

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.sampling = SamplingSettings(max_new_tokens=32)
        self.engine = None
        self.seen_lengths: list[int] = []
        self.length_at_train_start: int | None = None

    def on_train_start(self):
        # module hooks run after the callbacks' hooks: this is what the first rollout would use
        self.length_at_train_start = self.sampling.max_new_tokens

    def training_step(self, batch, batch_idx):
        self.seen_lengths.append(self.sampling.max_new_tokens)
        rollout = RolloutBatch(prompt_ids=[[1]], completion_ids=[[0] * 10, [0] * 10],
                               texts=list(self.TEXTS), truncated=[False, False], n=2)
        trajectory = SimpleNamespace(rollout=rollout, per_fn={"accuracy": [1.0, 0.0], "format": [1.0, 1.0]})
        return {"loss": self.layer(batch).pow(2).mean(), "trajectory": trajectory}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(torch.ones(16, 1), batch_size=2)


def trainer(tmp_path, callbacks, max_steps, logger=None, **kwargs):
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, callbacks=callbacks,
                      logger=logger if logger is not None else TensorBoardLogger(tmp_path, name="tb"),
                      log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, **kwargs)


def test_metrics_reach_callback_metrics_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = FakeRolloutModule()
    sched = GenerationLengthScheduler(schedule="steps", milestones=[(0, 64), (1, 128)])
    t = trainer(tmp_path, [LanguageConsistencyTracker(), ReflectiveTokenStats(), sched], max_steps=2,
                enable_checkpointing=False)
    t.fit(module)
    m = {k: float(v) for k, v in t.callback_metrics.items()}
    assert m["lang/consistency_mean"] == pytest.approx((4 / 6 + 1.0) / 2, abs=1e-6)
    assert m["lang/mixing_rate"] == pytest.approx(0.5, abs=1e-6)
    assert m["lang/consistency_correct"] == pytest.approx(4 / 6, abs=1e-6)
    assert m["lang/consistency_incorrect"] == pytest.approx(1.0, abs=1e-6)
    assert m["reflect/per_1k_tokens"] == pytest.approx(1000 * 3 / 20, abs=1e-4)  # wait, let me, check / 20 tokens
    assert m["reflect/share_with_any"] == pytest.approx(0.5, abs=1e-6)
    assert m["reflect/per_1k_tokens/correct"] == pytest.approx(1000 * 3 / 10, abs=1e-4)
    assert m["reflect/share_with_any/incorrect"] == pytest.approx(0.0, abs=1e-6)
    assert m["reflect/word/let_me"] == pytest.approx(1000 * 1 / 20, abs=1e-4)
    assert m["gen/max_new_tokens"] == 128
    assert module.seen_lengths == [64, 128]

    acc = EventAccumulator(str(Path(t.logger.log_dir)), size_guidance={"histograms": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert {"lang/consistency", "reflect/count_per_response"} <= set(tags["histograms"])
    assert [e.step for e in acc.Histograms("lang/consistency")] == [0, 1]  # one per rollout batch
    assert [e.step for e in acc.Scalars("lang/mixing_rate")] == [0, 1]    # same step axis as the scalars
    hist = acc.Histograms("reflect/count_per_response")[-1].histogram_value
    assert (hist.num, hist.min, hist.max, hist.sum) == (2, 0.0, 3.0, 3.0)


def test_non_tensorboard_logger_skips_histograms(tmp_path):
    t = trainer(tmp_path, [LanguageConsistencyTracker(), ReflectiveTokenStats()], max_steps=1,
                logger=CSVLogger(tmp_path), enable_checkpointing=False)
    t.fit(FakeRolloutModule())
    assert "lang/consistency_mean" in t.callback_metrics


class ManualTwoStepModule(FakeRolloutModule):
    """GRPO-like manual optimisation: two optimizer steps (mini-batches) per rollout batch."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        opt = self.optimizers()
        for _ in range(2):
            opt.zero_grad()
            self.manual_backward(self.layer(batch).pow(2).mean())
            opt.step()
        return {"trajectory": out["trajectory"]}  # as GRPOModule: the rollout goes to the callbacks as outputs


def test_manual_optimisation_steps(tmp_path):
    # global_step counts optimizer steps (0, 2, 4 at the starts of the three rollout batches), as
    # the paper's steps do; the logged scalars and histograms use the rollout-batch axis (0, 1, 2).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = ManualTwoStepModule()
    t = trainer(tmp_path, [LanguageConsistencyTracker(),
                           GenerationLengthScheduler(schedule="steps", milestones=[(0, 64), (3, 128)])],
                max_steps=6, enable_checkpointing=False)
    t.fit(module)
    assert t.global_step == 6
    assert module.seen_lengths == [64, 64, 128]  # step 3 is reached inside the second batch
    acc = EventAccumulator(str(Path(t.logger.log_dir)), size_guidance={"histograms": 0, "scalars": 0}).Reload()
    assert [e.step for e in acc.Histograms("lang/consistency")] == [0, 1, 2]
    assert [e.step for e in acc.Scalars("lang/consistency_mean")] == [0, 1, 2]
    assert [e.value for e in acc.Scalars("gen/max_new_tokens")] == [64, 64, 128]


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_length_schedule_checkpoint_resume(tmp_path):
    milestones = [(0, 64), (2, 128), (4, 256)]
    first = FakeRolloutModule()
    t1 = trainer(tmp_path, [GenerationLengthScheduler(schedule="steps", milestones=milestones)], max_steps=3,
                 enable_checkpointing=False)
    t1.fit(first)
    assert first.seen_lengths == [64, 64, 128]  # steps 0, 1, 2
    ckpt = tmp_path / "step3.ckpt"
    t1.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["callbacks"]["GenerationLengthScheduler"]
    assert state == {"last_length": 128, "last_step": 2}

    resumed = FakeRolloutModule()  # starts at max_new_tokens=32 like any fresh module
    sched = GenerationLengthScheduler(schedule="steps", milestones=milestones)
    t2 = trainer(tmp_path, [sched], max_steps=5, enable_checkpointing=False)
    t2.fit(resumed, ckpt_path=ckpt)
    assert resumed.length_at_train_start == 128  # restored at step 3, before the first resumed rollout
    assert resumed.seen_lengths == [128, 256]    # steps 3, 4
    assert sched.state_dict() == {"last_length": 256, "last_step": 4}


@pytest.mark.parametrize("path", CALLBACK_YAMLS, ids=lambda p: p.name)
def test_shipped_callback_yaml_instantiates(path):
    spec = yaml.safe_load(path.read_text())
    assert isinstance(spec, list) and spec, "a callbacks YAML is a list usable as --trainer.callbacks"
    for entry in spec:
        module_name, _, cls_name = entry["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name)
        assert isinstance(cls(**entry.get("init_args", {})), pl.Callback)


def test_callback_yamls_parse_through_the_cli(capsys, monkeypatch):
    from r1lightning.cli import main

    monkeypatch.setattr("sys.argv", ["r1lightning"])  # only `args` reaches the parser

    args = (["fit", "--config", str(REPO / "configs" / "sft_tiny_base.yaml")]
            + [f"--trainer.callbacks+={path}" for path in CALLBACK_YAMLS] + ["--print_config"])
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    paths = [c["class_path"] for c in printed["trainer"]["callbacks"]]
    assert paths == ["lightning.pytorch.callbacks.EarlyStopping",  # `+=` keeps the config's callbacks
                     "r1lightning.callbacks.GenerationLengthScheduler",
                     "r1lightning.callbacks.LanguageConsistencyTracker",
                     "r1lightning.callbacks.ReflectiveTokenStats",
                     "r1lightning.callbacks.VLLMRolloutRefresh"]
    by_class = {c["class_path"].rsplit(".", 1)[1]: c["init_args"] for c in printed["trainer"]["callbacks"]}
    assert by_class["GenerationLengthScheduler"]["at_step"] == 8200
    assert by_class["GenerationLengthScheduler"]["end"] == 65536
    assert by_class["LanguageConsistencyTracker"]["threshold"] == 0.9
    assert "let me" in by_class["ReflectiveTokenStats"]["words"]
