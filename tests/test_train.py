import pytest
import torch
from torch import nn

import harness
from conftest import tiny_vit
from harness.data import ArrayDataset, Normalize, TaskData, make_loader
from harness.train import (Schedule, TrainConfig, Trainer, build_optimizer, evaluation_epochs, fit, learning_rate,
                           selection_splits)


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


@pytest.mark.parametrize("warmup_epochs", [10, 0])
def test_the_lagged_per_epoch_schedule_is_timms_cosine_scheduler_stepped_as_the_pyra_code_steps_it(warmup_epochs):
    """The oracle is timm's own CosineLRScheduler (its cosine is 0.5.4's for these arguments), driven as the PYRA
    train loop drives it: ``lr_scheduler.step(epoch)`` after each 0-based epoch."""
    from timm.scheduler import CosineLRScheduler

    config = TrainConfig(epochs=100, warmup_epochs=warmup_epochs, lr_schedule="per_epoch_lagged")
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = CosineLRScheduler(optimizer, t_initial=config.epochs, lr_min=config.min_lr,
                                  warmup_t=config.warmup_epochs, warmup_lr_init=config.warmup_lr)
    schedule = Schedule(config, steps_per_epoch=3)
    for epoch in range(config.epochs):
        expected = optimizer.param_groups[0]["lr"]
        assert [schedule.lr(epoch * 3 + step) for step in range(3)] == pytest.approx([expected] * 3), epoch + 1
        scheduler.step(epoch)
    if warmup_epochs:
        assert max(schedule.lr(step) for step in range(300)) == pytest.approx(9.7577e-4, rel=1e-4)


def test_evaluation_epochs_start_at_eval_first_and_always_end_with_the_last():
    assert evaluation_epochs(TrainConfig()) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert evaluation_epochs(TrainConfig(eval_first=1)) == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100]
    assert evaluation_epochs(TrainConfig(epochs=7, eval_every=3)) == [3, 6, 7]
    assert evaluation_epochs(TrainConfig(epochs=2, eval_every=5)) == [2]
    with pytest.raises(ValueError, match="lr_schedule must be one of per_step, per_epoch_lagged"):
        TrainConfig(lr_schedule="cosine")


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
    assert result.val_acc_best is None and result.test_acc_at_best_val is None  # selection "test": no val
    assert not any("val_acc" in entry for entry in result.curve)


def test_nan_loss_fails_the_run_with_a_reason():
    config = TrainConfig(epochs=1, warmup_epochs=0)
    model = harness.adapt(tiny_vit(), "full_ft")
    model.head.register_forward_hook(lambda module, inputs, output: output * float("nan"))
    with pytest.raises(harness.RunFailed, match="loss became nan in epoch 1; lower --lr"):
        fit(_trainer(model, config), make_loader(_bright_dark(16), 8, shuffle=True),
            make_loader(_bright_dark(8), 8, shuffle=False), config, log=lambda line: None)


class ScriptedTrainer(Trainer):
    """A real training step on a linear model, but evaluations that return scripted accuracies per loader."""

    def __init__(self, accuracies: dict[str, list[float]]) -> None:
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 3))
        super().__init__(model, build_optimizer(model, TrainConfig()), Normalize((0.5,) * 3, (0.25,) * 3,
                                                                                  torch.device("cpu")))
        self.scripts = {name: iter(values) for name, values in accuracies.items()}

    def evaluate(self, loader) -> float:
        return next(self.scripts[loader])  # the loaders are the names "val" and "test"


TRAIN_BATCHES = [(torch.randint(0, 255, (4, 3, 2, 2), dtype=torch.uint8), torch.tensor([0, 1, 2, 0]))] * 2


def _fit_scripted(val: list[float], test: list[float], selection: str = "val", val_loader="val"):
    config = TrainConfig(epochs=2 * len(test), warmup_epochs=0, eval_every=2, selection=selection)
    trainer = ScriptedTrainer({"val": val, "test": test})
    return fit(trainer, TRAIN_BATCHES, "test", config, log=lambda line: None, val_loader=val_loader)


def test_selection_on_val_reports_the_test_accuracy_of_the_best_val_evaluation():
    result = _fit_scripted(val=[50.0, 70.0, 60.0], test=[80.0, 65.0, 75.0])
    assert (result.val_acc_best, result.test_acc_at_best_val) == (70.0, 65.0)
    assert (result.test_acc_best, result.test_acc_last) == (80.0, 75.0)  # still defined, from every evaluation
    assert [(entry["epoch"], entry["val_acc"], entry["test_acc"]) for entry in result.curve if "val_acc" in entry] \
        == [(2, 50.0, 80.0), (4, 70.0, 65.0), (6, 60.0, 75.0)]
    assert all(("val_acc" in entry) == ("test_acc" in entry) for entry in result.curve)


def test_fit_evaluates_after_the_evaluation_epochs():
    config = TrainConfig(epochs=5, warmup_epochs=0, eval_every=2, eval_first=1)
    result = fit(ScriptedTrainer({"test": [1.0, 2.0, 3.0]}), TRAIN_BATCHES, "test", config, log=lambda line: None)
    assert [entry["epoch"] for entry in result.curve if "test_acc" in entry] == [1, 3, 5]


def test_a_tie_on_the_best_val_accuracy_goes_to_the_earlier_evaluation():
    result = _fit_scripted(val=[60.0, 70.0, 70.0], test=[50.0, 55.0, 65.0])
    assert (result.val_acc_best, result.test_acc_at_best_val) == (70.0, 55.0)


def test_selection_and_val_loader_must_agree():
    with pytest.raises(ValueError, match="selection 'val' needs a val_loader"):
        _fit_scripted(val=[1.0], test=[1.0], val_loader=None)
    with pytest.raises(ValueError, match="a val_loader was given but selection is 'test'"):
        _fit_scripted(val=[1.0], test=[1.0], selection="test")
    with pytest.raises(ValueError, match="selection must be one of test, val, not 'best'"):
        TrainConfig(selection="best")


def test_selection_splits_train_on_train_and_val_or_on_train_alone():
    task = TaskData(_bright_dark(8), _bright_dark(4), _bright_dark(6), num_classes=3, image_size=16,
                    default_backbone="vit_micro_small_patch4_32")
    train, val = selection_splits(task, "test")
    assert len(train) == 12 and val is None
    train, val = selection_splits(task, "val")
    assert (train, val) == (task.train, task.val)


def test_a_checkpoint_keeps_only_the_runs_own_cuda_generator(monkeypatch):
    """Resumed where fewer GPUs are visible (a worker sees its one as cuda:0), restoring every GPU's generator
    failed on a device that is not there; only the run's device's is kept and restored."""
    from harness.checkpoint import restore_rng, rng_state

    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda device: calls.append(("get", device)) or torch.zeros(8, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU's generator was saved"))
    device = torch.device("cuda", 1)
    restore_rng(rng_state(None, device), None, device)
    assert calls == [("get", device), ("set", device)]
    assert rng_state(None, torch.device("cpu"))["cuda"] is None


def test_loading_a_checkpoint_removes_the_temporary_a_killed_save_left_and_no_other_runs(tmp_path):
    from harness.checkpoint import Checkpointer

    own, other = tmp_path / ".run.checkpoint.pt.k1ll3d.tmp", tmp_path / ".other.checkpoint.pt.k1ll3d.tmp"
    own.write_bytes(b"half a state"), other.write_bytes(b"another run's save in progress")
    said = []
    checkpoint = Checkpointer(tmp_path / "run.checkpoint.pt", 1, "key", said.append)
    assert checkpoint.load() is None
    assert not own.exists() and other.exists() and said == [f"  removed {own.name}, a checkpoint left half-written "
                                                            f"by a killed run"]
    checkpoint.save({"epoch": 1})
    assert checkpoint.load()["epoch"] == 1 and sorted(path.name for path in tmp_path.iterdir()) == \
        [other.name, "run.checkpoint.pt"]


def test_a_checkpoint_of_another_model_is_passed_over_and_the_run_trains_from_its_first_epoch(tmp_path):
    """A speed match may choose another small model on the rerun: its state would fail to load (or, partly
    loaded, mix two models), so the run starts afresh and says why."""
    from harness.checkpoint import Checkpointer

    said = []
    checkpoint = Checkpointer(tmp_path / "run.checkpoint.pt", 1, "key", said.append)
    other = ScriptedTrainer({"test": []})
    other.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 5))
    checkpoint.save({"trainer": other.state_dict(), "rng": None, "progress": {"epoch": 1}})
    config = TrainConfig(epochs=2, warmup_epochs=0, eval_every=1)
    result = fit(ScriptedTrainer({"test": [1.0, 2.0]}), TRAIN_BATCHES, "test", config, log=said.append,
                 checkpoint=checkpoint)
    assert [entry["epoch"] for entry in result.curve] == [1, 2]
    assert any("holds another model's state" in line and "starting afresh" in line for line in said)
