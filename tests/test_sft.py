"""SFT: the loss by hand, the module's loss against a naive cross-entropy, and a CLI smoke run
(fit -> TensorBoard metrics -> exported model -> validate / test / predict on the export)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from r1lightning.data import SFTDataModule
from r1lightning.modules import SFTModule
from r1lightning.modules.sft import masked_nll
from r1lightning.policy import Policy, PolicyConfig, TinyModelSettings, position_ids_from_mask

SMALL = TinyModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# masked_nll


def test_masked_nll_hand_computed():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.125]]))  # (B=1, K=3): -ln2, -2 ln2, -3 ln2
    loss, stats = masked_nll(logp, torch.tensor([[1, 1, 0]]))
    # -(ln 0.5 + ln 0.25) / 2 = (ln2 + ln4) / 2 = 1.5 ln2 = 1.0397208
    assert float(loss) == pytest.approx((LN2 + math.log(4.0)) / 2, abs=1e-6)
    assert float(loss) == pytest.approx(1.0397208, abs=1e-6)
    assert float(stats["tokens"]) == 2


def test_masked_nll_is_a_token_mean_over_the_batch():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.125], [0.5, 0.25, 0.125]]))  # (2, 3)
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]])
    loss, stats = masked_nll(logp, mask)
    # three tokens: (ln2 + 2 ln2 + 3 ln2) / 3 = 2 ln2 = 1.3862944
    # (a mean of row means would be (1.5 ln2 + 3 ln2) / 2 = 2.25 ln2 = 1.5595812)
    assert float(loss) == pytest.approx(2 * LN2, abs=1e-6)
    assert float(stats["tokens"]) == 3


def test_masked_nll_gradient_and_fully_masked():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.125]])).requires_grad_()
    loss, _ = masked_nll(logp, torch.tensor([[1, 0, 1]]))
    loss.backward()
    # d/dlogp of -(sum m logp) / sum m = -m / 2
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, 0.0, -0.5]]), atol=1e-7, rtol=0)
    # nothing to learn from: zero loss and zero gradient, not 0/0 = NaN
    logp.grad = None
    loss, stats = masked_nll(logp, torch.zeros(1, 3, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(stats["tokens"]) == 0
    assert torch.equal(logp.grad, torch.zeros(1, 3))


# ---------------------------------------------------------------------------------------------
# the module's loss against a naive cross-entropy


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("packing", [False, True])
def test_sft_loss_equals_naive_cross_entropy(packing):
    module = SFTModule(PolicyConfig(tiny=SMALL), export_dir="none")
    module.configure_model()
    model = module.policy.model
    dm = SFTDataModule(train_data="synthetic:arithmetic?n=3&seed=2", tokenizer=module.tokenizer, max_length=128,
                       packing=packing)
    dm.setup("fit")
    batch = dm.collate(dm.train_set.items)
    loss = module.training_step(batch, 0)

    # reference: every example on its own, full logits, cross-entropy on the masked targets
    examples = SFTDataModule(train_data="synthetic:arithmetic?n=3&seed=2", tokenizer=module.tokenizer,
                             max_length=128)
    examples.setup("fit")
    logits, targets = [], []
    for ex in examples.train_set.items:
        ids = torch.tensor([ex["input_ids"]])  # (1, T)
        mask = torch.tensor(ex["loss_mask"][1:]).bool()  # (T-1,) aligned with targets ids[1:]
        out = model(input_ids=ids).logits[0, :-1]  # (T-1, V)
        logits.append(out[mask])
        targets.append(ids[0, 1:][mask])
    want = F.cross_entropy(torch.cat(logits), torch.cat(targets))
    assert batch["input_ids"].shape[0] == 3 if not packing else batch["input_ids"].shape[0] < 3
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=0)


def test_sft_loss_on_padded_batch_equals_naive(tiny_tokenizer):
    """One collated, right-padded batch: ``F.cross_entropy(logits[:, :-1][mask], targets[mask])``."""
    module = SFTModule(PolicyConfig(tiny=SMALL), export_dir="none")
    module.configure_model()
    dm = SFTDataModule(train_data="synthetic:arithmetic?n=4&seed=5", tokenizer=module.tokenizer, max_length=128)
    dm.setup("fit")
    batch = dm.collate(dm.train_set.items)
    assert (batch["attention_mask"] == 0).any()  # the rows differ in length
    loss, stats = module._loss(batch)
    attn = batch["attention_mask"]
    logits = module.policy.model(input_ids=batch["input_ids"], attention_mask=attn,
                                 position_ids=position_ids_from_mask(attn)).logits  # (B, T, V)
    mask = batch["loss_mask"].bool()  # (B, T-1)
    want = F.cross_entropy(logits[:, :-1][mask], batch["input_ids"][:, 1:][mask])
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=0)
    assert int(stats["tokens"]) == int(mask.sum())


# ---------------------------------------------------------------------------------------------
# CLI smoke run: fit a tiny model, then validate / test / predict the export


def _cli(args: list[str], monkeypatch):
    from r1lightning.cli import main

    monkeypatch.setattr(sys, "argv", ["r1lightning"])
    return main(args)


def _tiny_args(root) -> list[str]:
    return [
        "--config", "configs/sft_tiny_base.yaml",
        "--trainer.default_root_dir", str(root),
        "--trainer.callbacks", "null",
        "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1",
        "--data.init_args.val_data", "synthetic:arithmetic?n=16&split=test",
        "--data.init_args.val_batch_size", "8",
        "--model.init_args.eval_sampling.max_new_tokens", "24",
    ]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_smoke")
    mp = pytest.MonkeyPatch()
    from r1lightning.policy import PACKAGE_ROOT

    mp.chdir(PACKAGE_ROOT.parent)  # the config path is repository-relative
    try:
        cli = _cli(["fit", *_tiny_args(root),
                    "--trainer.max_steps", "4",
                    "--trainer.val_check_interval", "2",
                    "--model.init_args.export_dir", str(root / "export"),
                    "--model.init_args.warmup_steps", "1",
                    "--model.init_args.policy.tiny.hidden_size", "32",
                    "--model.init_args.policy.tiny.num_hidden_layers", "2",
                    "--model.init_args.policy.tiny.num_attention_heads", "2",
                    "--model.init_args.policy.tiny.intermediate_size", "64",
                    "--data.init_args.train_data", "synthetic:arithmetic?n=256&split=train",
                    "--data.init_args.batch_size", "8"], mp)
        yield cli, root
    finally:
        mp.undo()


def test_fit_trains_and_logs(fitted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli, root = fitted
    assert cli.trainer.global_step == 4
    initial = Policy(PolicyConfig(tiny=SMALL), tokenizer=cli.model.tokenizer).build()  # same seed, untrained
    trained = dict(cli.model.policy.model.named_parameters())
    unchanged = [n for n, p in initial.named_parameters() if torch.equal(p, trained[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"

    (event_dir,) = {p.parent for p in root.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    want = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss", "val/pass@1"}
    assert want <= tags, f"missing {want - tags}"
    assert len(acc.Scalars("val/loss")) == len(acc.Scalars("val/pass@1")) == 2  # 4 steps, val_check_interval=2
    assert all(math.isfinite(e.value) for t in want for e in acc.Scalars(t))


def test_export_reloads_with_the_same_logits(fitted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cli, root = fitted
    export = root / "export"
    model = AutoModelForCausalLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    ids = tok(["<|user|>Compute 12+30+7.<|end|><|assistant|><think>12+30=42"], return_tensors="pt").input_ids
    assert ids.tolist() == cli.model.tokenizer(["<|user|>Compute 12+30+7.<|end|><|assistant|><think>12+30=42"],
                                               return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        want = cli.model.policy.model(input_ids=ids).logits
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_subcommands_on_the_export(fitted, subcommand, tmp_path, monkeypatch):
    from r1lightning.policy import PACKAGE_ROOT

    _, root = fitted
    monkeypatch.chdir(PACKAGE_ROOT.parent)
    cli = _cli([subcommand, *_tiny_args(tmp_path),
                "--model.init_args.policy.model_name_or_path", str(root / "export")], monkeypatch)
    assert cli.model.policy.model.config.hidden_size == 32  # the export, not the config's tiny model
    if subcommand == "predict":
        texts = [t for batch in cli.trainer.predict_loop.predictions for t in batch]
        assert len(texts) == 16 and all(isinstance(t, str) for t in texts)
    else:
        prefix = "val" if subcommand == "validate" else "test"
        metrics = cli.trainer.callback_metrics
        assert {f"{prefix}/loss", f"{prefix}/pass@1"} <= set(metrics), sorted(metrics)
        assert 0.0 <= float(metrics[f"{prefix}/pass@1"]) <= 1.0
        assert math.isfinite(float(metrics[f"{prefix}/loss"]))
