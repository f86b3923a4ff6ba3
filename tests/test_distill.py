"""DistillModule: pure SFT when kd_weight = 0, a KD term that vanishes for an identical teacher, a real step."""

import lightning.pytorch as pl
import pytest
import torch

from r1lightning.data import SFTDataModule
from r1lightning.modules import DistillModule, SFTModule
from r1lightning.policy import PolicyConfig, TinyModelSettings

SMALL = TinyModelSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _batch(tok):
    dm = SFTDataModule(train_data="synthetic:arithmetic?n=8&split=train", batch_size=4, tokenizer=tok)
    dm.setup("fit")
    return dm.collate([dm.train_set[i] for i in range(4)])


def test_kd_weight_zero_is_sft(tiny_tokenizer):
    batch = _batch(tiny_tokenizer)
    sft = SFTModule(policy=PolicyConfig(tiny=SMALL))
    dist = DistillModule(policy=PolicyConfig(tiny=SMALL), kd_weight=0.0)
    for m in (sft, dist):
        m.policy.tokenizer = tiny_tokenizer
        m.configure_model()
    assert dist.teacher is None
    torch.testing.assert_close(dist._loss(batch)[0], sft._loss(batch)[0], atol=1e-6, rtol=0)


def test_identical_teacher_gives_zero_kd_and_halved_nll(tiny_tokenizer):
    batch = _batch(tiny_tokenizer)
    dist = DistillModule(policy=PolicyConfig(tiny=SMALL), teacher=PolicyConfig(tiny=SMALL), kd_weight=0.5)
    dist.policy.tokenizer = dist.teacher.tokenizer = tiny_tokenizer
    dist.configure_model()  # same seed and settings: the teacher is the student's twin
    sft = SFTModule(policy=PolicyConfig(tiny=SMALL))
    sft.policy.tokenizer = tiny_tokenizer
    sft.configure_model()
    loss, stats = dist._loss(batch)
    # KL(p || p) = 0, so loss = (1 - 0.5) * NLL + 0.5 * 0
    assert float(stats["kd"]) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(loss, 0.5 * sft._loss(batch)[0], atol=1e-5, rtol=0)
    assert not any(p.requires_grad for p in dist.teacher.model.parameters())


def test_distill_step_moves_the_student_only(tiny_tokenizer, tmp_path):
    dist = DistillModule(policy=PolicyConfig(tiny=SMALL), teacher=PolicyConfig(tiny=TinyModelSettings(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, seed=1)),
        kd_weight=0.5, lr=1e-2, export_dir="none")
    dist.policy.tokenizer = dist.teacher.tokenizer = tiny_tokenizer
    dm = SFTDataModule(train_data="synthetic:arithmetic?n=32&split=train", batch_size=4, tokenizer=tiny_tokenizer)
    dist.configure_model()
    s0 = [p.detach().clone() for p in dist.policy.model.parameters()]
    t0 = [p.detach().clone() for p in dist.teacher.model.parameters()]
    pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, default_root_dir=tmp_path).fit(dist, dm)
    assert all(not torch.equal(a, b) for a, b in zip(s0, dist.policy.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(t0, dist.teacher.model.parameters()))


def test_kd_needs_a_teacher_with_the_same_vocabulary(tiny_tokenizer):
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillModule(policy=PolicyConfig(tiny=SMALL), kd_weight=0.5)
