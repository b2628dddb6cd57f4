import pytest
import torch

import harness
from conftest import tiny_vit
from harness.data import ArrayDataset, Normalize, make_loader
from harness.train import Schedule, TrainConfig, Trainer, build_optimizer, fit, learning_rate


def test_schedule_warms_up_then_decays_to_min_lr():
    config = TrainConfig(epochs=10, warmup_epochs=2, lr=1e-3, warmup_lr=1e-6, min_lr=1e-5)
    schedule = Schedule(config, steps_per_epoch=5)
    assert schedule.lr(0) == pytest.approx(1e-6)
    assert schedule.lr(10) == pytest.approx(1e-3)  # end of warm-up: peak
    assert schedule.lr(5) == pytest.approx((1e-6 + 1e-3) / 2)
    assert schedule.lr(30) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half-way through the cosine
    assert schedule.lr(50) == pytest.approx(1e-5)
    assert all(schedule.lr(s) >= schedule.lr(s + 1) for s in range(10, 50))


def test_learning_rate_without_warmup_starts_at_peak():
    assert learning_rate(0, 100, 0, TrainConfig(lr=2e-3)) == pytest.approx(2e-3)


def test_weight_decay_skips_biases_and_norms():
    model = harness.adapt(tiny_vit(), "full_ft")
    decayed, plain = build_optimizer(model, TrainConfig(weight_decay=0.5)).param_groups
    assert decayed["weight_decay"] == 0.5 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])


def _bright_dark(n: int) -> ArrayDataset:
    labels = torch.arange(n) % 3
    images = (torch.rand(n, 3, 16, 16) * 60 + 90 * labels.view(-1, 1, 1, 1)).to(torch.uint8)
    return ArrayDataset(images, labels)


def _trainer(model, config):
    return Trainer(model, build_optimizer(model, config), Normalize((0.5,) * 3, (0.25,) * 3, torch.device("cpu")))


def test_fit_learns_and_records_best_and_last():
    torch.manual_seed(0)
    config = TrainConfig(epochs=4, warmup_epochs=0, eval_every=2, lr=3e-3, batch_size=16)
    trainer = _trainer(harness.adapt(tiny_vit(), "full_ft"), config)
    result = fit(trainer, make_loader(_bright_dark(96), 16, shuffle=True), make_loader(_bright_dark(48), 64,
                 shuffle=False), config, log=lambda line: None)
    evaluated = [entry["test_acc"] for entry in result.curve if "test_acc" in entry]
    assert [entry["epoch"] for entry in result.curve if "test_acc" in entry] == [2, 4]
    assert result.test_acc_best == max(evaluated) and result.test_acc_last == evaluated[-1]
    assert result.test_acc_best > 60  # three linearly separable brightness classes
    assert result.train_images == 4 * 96


def test_nan_loss_fails_the_run_with_a_reason():
    config = TrainConfig(epochs=1, warmup_epochs=0)
    model = harness.adapt(tiny_vit(), "full_ft")
    model.head.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    with pytest.raises(harness.RunFailed, match="loss became nan in epoch 1; lower --lr"):
        fit(_trainer(model, config), make_loader(_bright_dark(16), 8, shuffle=True),
            make_loader(_bright_dark(8), 8, shuffle=False), config, log=lambda line: None)
