"""One training protocol for every method: AdamW, linear warm-up then cosine decay per step, periodic test eval.

Defaults follow PYRA's scripts (lr 1e-3, weight decay 1e-4, batch 32, 100 epochs, 10 warm-up epochs from 1e-6,
cosine to 1e-5, label smoothing 0, drop-path 0.1). PYRA reports the best of its periodic test evaluations; we
record that as ``test_acc_best`` and the final evaluation as ``test_acc_last``.

Two settings reproduce what the PYRA code does where it departs from that description (the paper presets set
them): ``lr_schedule="per_epoch_lagged"`` is the curve its train loop gets from timm 0.5.4's
``CosineLRScheduler`` (:func:`lagged_epoch_learning_rate`), and ``eval_first=1`` evaluates after epochs 1, 11,
21, ... as its ``epoch % val_interval == 0`` does with epochs counted from 0 (:func:`evaluation_epochs`).
On a distilled backbone (timm's ``VisionTransformerDistilled``), ``distilled_loss="class_head"`` trains on the
class head's logits alone, as the PYRA code's ``outputs, _ = model(samples)`` does; ``"average"``, timm's
fine-tuning, trains on the mean of both heads' logits. Evaluation averages both heads either way.

``selection`` says what picks the reported evaluation. ``"test"`` (the default, PYRA's and V-PETL Bench's
protocol): train on train + val, evaluate test. ``"val"``: train on train only and evaluate val as well as test
at every evaluation; ``test_acc_at_best_val`` is the test accuracy at the evaluation with the best val accuracy,
a number no test accuracy helped to choose (:func:`selection_splits` gives the splits each trains on).

Precision and speed switches (each recorded in the run's config): ``precision`` trains and evaluates under
autocast in bf16 or fp16 (fp16 with a gradient scaler), the loss always in fp32; fp32, the paper's, runs
without autocast or scaler. ``tf32`` and ``cudnn_benchmark`` set the CUDA backend flags for one run and put
back what was there (:func:`backend_flags`); ``compile`` trains a ``torch.compile`` of the model, while
evaluation and everything after training use the module itself.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import Normalize, TaskData
from .checkpoint import Checkpointer, restore_rng, rng_state
from .errors import NonFiniteLoss, UserError
from .measure import PRECISIONS, autocast

SELECTIONS = ("test", "val")  # TrainConfig.selection: what picks the reported evaluation (module docstring)
DISTILLED_LOSSES = ("average", "class_head")  # TrainConfig.distilled_loss (module docstring)
LR_SCHEDULES = ("per_step", "per_epoch_lagged")  # TrainConfig.lr_schedule: learning_rate, lagged_epoch_learning_rate
# Settings added after run files were published: at their default a run's key leaves them out, so every run
# recorded before they existed keeps its key (and its file) — see harness.config.RunConfig.key.
KEYED_WHEN_SET = {"keyed_when_set": True}


def later_defaults(cls: type) -> dict[str, object]:
    """The defaults of the dataclass ``cls``'s fields marked :data:`KEYED_WHEN_SET`, by name."""
    return {item.name: item.default for item in dataclasses.fields(cls) if item.metadata.get("keyed_when_set")}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    warmup_epochs: int = 10
    lr: float = 1e-3
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    batch_size: int = 32
    label_smoothing: float = 0.0
    eval_every: int = 10
    drop_path: float = 0.1
    selection: str = "test"  # one of SELECTIONS; "val" trains on train only and selects on val
    precision: str = "fp32"  # training (and evaluation) precision: fp32, bf16 or fp16 (autocast; fp16 with a scaler)
    tf32: bool = False  # CUDA: TF32 matmuls and convolutions
    cudnn_benchmark: bool = False  # CUDA: cudnn.benchmark
    compile: bool = False  # torch.compile the training step
    # per_step (linear warm-up, then cosine, set every step) or per_epoch_lagged (the PYRA code's curve)
    lr_schedule: str = field(default="per_step", metadata=KEYED_WHEN_SET)
    eval_first: int = field(default=0, metadata=KEYED_WHEN_SET)  # the first evaluation's epoch; 0: eval_every
    distilled_loss: str = field(default="average", metadata=KEYED_WHEN_SET)  # a distilled backbone's training loss

    def __post_init__(self) -> None:
        _check_selection(self.selection)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}")
        if self.distilled_loss not in DISTILLED_LOSSES:
            raise ValueError(f"distilled_loss must be one of {', '.join(DISTILLED_LOSSES)}, not "
                             f"{self.distilled_loss!r}")
        if self.eval_every < 1 or self.eval_first < 0:
            raise ValueError(f"eval_every must be at least 1 and eval_first at least 0, not {self.eval_every} and "
                             f"{self.eval_first}")


def evaluation_epochs(config: TrainConfig) -> list[int]:
    """The epochs after which :func:`fit` evaluates: ``eval_first`` (``eval_every`` when 0), every
    ``eval_every`` epochs after it, and the last epoch."""
    first = config.eval_first or config.eval_every
    epochs = list(range(first, config.epochs + 1, config.eval_every))
    return epochs if epochs and epochs[-1] == config.epochs else [*epochs, config.epochs]


def _check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, not {selection!r}")


def selection_splits(task: TaskData, selection: str) -> tuple[Dataset, Dataset | None]:
    """What :func:`fit` trains on and what it selects on: train + val and nothing with ``"test"`` (PYRA's
    train800val200), the train split and the val split with ``"val"``."""
    _check_selection(selection)
    if selection == "test":
        return task.train_and_val, None
    if task.train is None or task.val is None:  # planning refuses such a task first (harness.data.check_task)
        raise UserError("--selection val needs separate train and val splits, which this task does not have")
    return task.train, task.val


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases and norm weights (1-d) get no weight decay, as in timm.

    A parameter with an ``lr_scale`` attribute (see :func:`harness.set_lr_scale`) gets its own group.
    """
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            key = (param.ndim > 1, getattr(param, "lr_scale", 1.0))
            groups.setdefault(key, []).append(param)
    return torch.optim.AdamW([{"params": params, "weight_decay": config.weight_decay if decays else 0.0,
                               "lr_scale": scale} for (decays, scale), params in sorted(groups.items(), reverse=True)],
                             lr=config.lr)


def learning_rate(step: int, total_steps: int, warmup_steps: int, config: TrainConfig) -> float:
    """Linear warm-up from ``warmup_lr`` to ``lr``, then cosine from ``lr`` down to ``min_lr`` at the last step."""
    if step < warmup_steps:
        return config.warmup_lr + (config.lr - config.warmup_lr) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def lagged_epoch_learning_rate(epoch: int, config: TrainConfig) -> float:
    """The learning rate of (1-based) ``epoch`` as the PYRA code sets it: timm 0.5.4's ``CosineLRScheduler``
    (``t_initial=epochs``, ``warmup_t=warmup_epochs``, no warm-up prefix) stepped once per epoch, after it, with
    the 0-based number of the epoch just finished.

    So the lr is constant within an epoch; the first epoch runs at the warm-up start (the scheduler's initial
    value) and epoch ``e >= 2`` at the scheduler's value for ``e - 2``: the curve lags one epoch, epochs 1 and 2
    both run at ``warmup_lr``, and because the cosine counts from epoch 0, not from the warm-up's end, it peaks
    below ``lr`` (9.76e-4 for 1e-3 over 100 epochs with 10 of warm-up).
    """
    if epoch <= 1:
        return config.warmup_lr if config.warmup_epochs else _timm_cosine(0, config)
    t = epoch - 2
    if t < config.warmup_epochs:
        return config.warmup_lr + t * (config.lr - config.warmup_lr) / config.warmup_epochs
    return _timm_cosine(t, config)


def _timm_cosine(t: int, config: TrainConfig) -> float:
    if t >= config.epochs:  # past the one cycle: timm holds lr_min
        return config.min_lr
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * t / config.epochs))


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse, in one line, a training precision the device cannot run (bf16 on a GPU without bfloat16)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--train-precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                        f"use --train-precision fp16 or fp32")


def check_distilled(model: nn.Module, name: str = "") -> None:
    """Refuse, in one line, ``distilled_loss="class_head"`` on a model without a distillation head."""
    if getattr(model, "dist_token", None) is None or not hasattr(model, "set_distilled_training"):
        raise UserError(f"distilled_loss 'class_head' trains the class head of a distilled backbone (timm's "
                        f"VisionTransformerDistilled), and {name or type(model).__name__} has no distillation head; "
                        f"use a distilled backbone (deit_base_distilled_patch16_224) or distilled_loss 'average'")


@contextlib.contextmanager
def backend_flags(config: TrainConfig, device: torch.device) -> Iterator[dict]:
    """The run's CUDA backend flags (TF32 matmuls and cuDNN convolutions, ``cudnn.benchmark``) from ``config``,
    and the ones that were set before put back afterwards, so one run cannot change the next one's figures.

    Only on CUDA: elsewhere nothing is touched (TF32 is a CUDA format). Yields what was in effect,
    ``{"train_tf32_effective": ...}``: TF32 asked for on a GPU that has it (compute capability 8.0 or later).
    ``tf32=False`` turns TF32 off for cuDNN convolutions too, which PyTorch otherwise allows by default.
    """
    if device.type != "cuda":
        yield {"train_tf32_effective": False}
        return
    # The legacy flags, read and written as such: in torch >= 2.9 reading them after a write through the
    # fp32_precision API can raise, and writing fp32_precision does not restore what the legacy flags read.
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = config.tf32
    torch.backends.cudnn.benchmark = config.cudnn_benchmark
    try:
        yield {"train_tf32_effective": config.tf32 and torch.cuda.get_device_capability(device) >= (8, 0)}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


class Trainer:
    """Owns the training step; the same ``train_step`` serves the run, the memory probe, pretraining and the
    benchmarks.

    ``precision`` (fp32, bf16 or fp16) is the training and evaluation precision: bf16 and fp16 run the forward
    pass under autocast, fp16 scales the loss with an (enabled) ``GradScaler``; fp32 runs neither. The loss is
    computed in fp32. With ``compile`` the training step runs a ``torch.compile`` of ``model``; ``self.model``
    stays the module itself, for evaluation and everything after training (merging, counting, saving).
    ``distilled_loss="class_head"`` switches a distilled model to timm's distilled training, in which it returns
    both heads' logits while training, and takes the class head's (see the module docstring).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, normalize: Normalize,
                 label_smoothing: float = 0.0, *, precision: str = "fp32", compile: bool = False,
                 distilled_loss: str = "average") -> None:
        if distilled_loss == "class_head":
            check_distilled(model)
            model.set_distilled_training(True)
        self.model, self.optimizer, self.normalize = model, optimizer, normalize
        self.label_smoothing = label_smoothing
        self.device = torch.device(normalize.device)
        check_precision(precision, self.device)
        self.precision = precision
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.trained = torch.compile(model) if compile else model  # what train_step runs

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Forward, backward and update on one uint8 batch; returns the (detached) loss without syncing."""
        with autocast(self.device, self.precision):
            logits = self.trained(self.normalize(images))
        if isinstance(logits, tuple):  # distilled training: (class head, distillation head)
            logits = logits[0]
        labels = labels.to(logits.device, non_blocking=True)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        if self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)  # skipped when a gradient is inf or NaN; update() lowers the scale
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def state_dict(self) -> dict:
        """What a checkpoint needs of training: the model's, the optimizer's and the gradient scaler's state."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])

    @torch.inference_mode()
    def evaluate(self, loader: DataLoader) -> float:
        """Top-1 accuracy in percent, in the training precision."""
        was_training = self.model.training
        self.model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.normalize.device)
        total = 0
        for images, labels in loader:
            with autocast(self.device, self.precision):
                logits = self.model(self.normalize(images))
            predictions = logits.argmax(dim=-1)
            correct += (predictions == labels.to(predictions.device, non_blocking=True)).sum()
            total += len(labels)
        self.model.train(was_training)
        return 100.0 * correct.item() / max(1, total)


@dataclass
class TrainResult:
    test_acc_best: float
    test_acc_last: float
    train_seconds: float
    train_images: int
    curve: list[dict] = field(default_factory=list)  # one entry per epoch: loss, lr; val_acc, test_acc when evaluated
    val_acc_best: float | None = None  # selection "val" only: the best val accuracy of all evaluations
    test_acc_at_best_val: float | None = None  # selection "val" only: test accuracy at that (earliest) evaluation

    @property
    def train_img_per_s(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds > 0 else float("nan")


@dataclass(frozen=True)
class Schedule:
    """Per-step learning rates for a whole run: ``lr(step)``, by ``config.lr_schedule``.

    The warm-up lasts ``config.warmup_epochs`` epochs unless ``warmup_steps`` is given: pretraining has a few long
    epochs and counts its warm-up in steps.
    """

    config: TrainConfig
    steps_per_epoch: int
    warmup_steps: int | None = None

    def lr(self, step: int) -> float:
        if self.config.lr_schedule == "per_epoch_lagged":
            return lagged_epoch_learning_rate(step // self.steps_per_epoch + 1, self.config)
        warmup = self.config.warmup_epochs * self.steps_per_epoch if self.warmup_steps is None else self.warmup_steps
        return learning_rate(step, self.config.epochs * self.steps_per_epoch, warmup, self.config)


def train_epoch(trainer: Trainer, loader: Iterable, schedule: Schedule, first_step: int,
                on_step: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, int]:
    """One pass over ``loader`` with the scheduled learning rate; returns (summed loss on device, images seen).

    ``on_step`` receives each step's loss (detached, on device: keeping it does not sync), for a per-step curve.
    """
    loss_sum = torch.zeros((), device=trainer.normalize.device)
    images_seen = 0
    for step, (images, labels) in enumerate(loader, first_step):
        lr = schedule.lr(step)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss = trainer.train_step(images, labels)
        if on_step is not None:
            on_step(loss)
        loss_sum += loss
        images_seen += len(labels)
    return loss_sum, images_seen


def _fits(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` is a state of ``model``'s structure: the same tensors, of the same shapes."""
    own = model.state_dict()
    return own.keys() == state.keys() and all(tuple(own[name].shape) == tuple(state[name].shape) for name in own)


def fit(trainer: Trainer, train_loader: DataLoader, test_loader: DataLoader, config: TrainConfig,
        log: Callable[[str], None] = print, on_epoch: Callable[[dict], None] = lambda entry: None,
        val_loader: DataLoader | None = None, checkpoint: Checkpointer | None = None,
        tick: Callable[[], None] | None = None) -> TrainResult:
    """Train for ``config.epochs`` epochs, evaluating after each of :func:`evaluation_epochs`.

    Each evaluation measures test accuracy; ``test_acc_best`` is the best of them, ``test_acc_last`` the last.
    With ``config.selection == "val"`` a ``val_loader`` is required (with ``"test"`` it must be None): each
    evaluation measures val accuracy too, and the result's ``val_acc_best`` is the best val accuracy and
    ``test_acc_at_best_val`` the test accuracy of that evaluation; should several evaluations tie on the best
    val accuracy, the earliest of them counts (more training buys no tie-break). ``on_epoch`` receives each
    epoch's curve entry (loss, lr, and val_acc and test_acc when evaluated) as it is made.

    With ``checkpoint`` the state after every N-th epoch is saved, and a saved state is resumed from: training
    goes on from the epoch after it, with every random generator where it was, and the earlier epochs' curve
    entries are handed to ``on_epoch`` again (a fresh TensorBoard folder gets the whole curve). ``tick`` is
    called after every step (a deadline check).
    """
    if config.selection == "val" and val_loader is None:
        raise ValueError("selection 'val' needs a val_loader to select on (see selection_splits)")
    if config.selection != "val" and val_loader is not None:
        raise ValueError(f"a val_loader was given but selection is {config.selection!r}, which trains on val; "
                         f"use selection 'val'")
    steps_per_epoch = len(train_loader)
    schedule = Schedule(config, steps_per_epoch)
    trainer.model.train()
    progress = {"epoch": 0, "train_seconds": 0.0, "train_images": 0, "accuracies": [], "val_accuracies": [],
                "curve": []}
    generator = getattr(train_loader, "generator", None)
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None and not _fits(trainer.model, saved["trainer"]["model"]):
        # a method whose choice is timed (a speed match) may pick another model on the rerun: that state cannot go on
        log(f"  checkpoint {checkpoint.path.name} holds another model's state (the method adapted another model "
            f"this time); starting afresh")
        saved = None
    if saved is not None:
        trainer.load_state_dict(saved["trainer"])
        restore_rng(saved["rng"], generator, trainer.device)
        progress = saved["progress"]
        for entry in progress["curve"]:
            on_epoch(entry)
        log(f"  resumed from the checkpoint after epoch {progress['epoch']}/{config.epochs}")
    accuracies, val_accuracies, curve = progress["accuracies"], progress["val_accuracies"], progress["curve"]
    on_step = None if tick is None else (lambda loss: tick())
    evaluated = set(evaluation_epochs(config))
    for epoch in range(progress["epoch"] + 1, config.epochs + 1):
        started = time.perf_counter()
        loss_sum, images_seen = train_epoch(trainer, train_loader, schedule, (epoch - 1) * steps_per_epoch, on_step)
        mean_loss = loss_sum.item() / steps_per_epoch  # one sync per epoch, not per step
        progress["train_seconds"] += time.perf_counter() - started
        progress["train_images"] += images_seen
        if not math.isfinite(mean_loss):
            raise NonFiniteLoss(f"loss became {mean_loss} in epoch {epoch}; lower --lr or check the data")
        lr = schedule.lr(epoch * steps_per_epoch - 1)
        entry = {"epoch": epoch, "loss": mean_loss, "lr": lr}
        message = f"  epoch {epoch}/{config.epochs}  loss {mean_loss:.4f}  lr {lr:.2e}"
        if epoch in evaluated:
            if val_loader is not None:
                entry["val_acc"] = trainer.evaluate(val_loader)
                val_accuracies.append(entry["val_acc"])
                message += f"  val acc {entry['val_acc']:.2f}%"
            entry["test_acc"] = trainer.evaluate(test_loader)
            accuracies.append(entry["test_acc"])
            message += f"  test acc {entry['test_acc']:.2f}%"
        curve.append(entry)
        on_epoch(entry)
        log(message)
        progress["epoch"] = epoch
        if checkpoint is not None and checkpoint.due(epoch, config.epochs):
            checkpoint.save({"trainer": trainer.state_dict(), "rng": rng_state(generator, trainer.device),
                             "progress": progress})
    result = TrainResult(max(accuracies), accuracies[-1], progress["train_seconds"], progress["train_images"],
                         curve)
    if val_accuracies:
        chosen = val_accuracies.index(max(val_accuracies))  # index() finds the first: ties go to the earliest
        result.val_acc_best, result.test_acc_at_best_val = val_accuracies[chosen], accuracies[chosen]
    return result
