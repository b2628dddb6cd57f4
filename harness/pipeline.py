"""The pipeline of one run: build the backbone -> adapt it -> train -> measure, returning the run's metrics.

Beside the pipeline, not in it: TensorBoard scalars of each epoch and, with ``--profile``, profiler traces of a
few training and inference steps, both written into the run's own folder. Where the record goes and what
happens when a run fails is the executor's business (:mod:`harness.runner`).
"""
from __future__ import annotations

import contextlib
import functools
import random
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from . import registry
from .adapt import adapt, merge_for_inference
from .adapters import save_run_adapter
from .checkpoint import Checkpointer
from .backbones import create_backbone
from .config import RunConfig
from .data import Normalize, TaskData, make_loader
from .errors import UserError
from .measure import (MeasureConfig, autocast, count_gmacs, count_parameters, gmacs_per_block, inference_throughput,
                      measure_until_quiet, peak_memory, silence_native_stderr)
from .train import Trainer, backend_flags, build_optimizer, fit, selection_splits

Log = Callable[[str], None]
TEST_BATCH = 256


class NormalizedBatches:
    """Re-iterable normalised image batches (no labels): the ``train_data`` run context, for methods that look
    at training data while adapting (e.g. a rate search)."""

    def __init__(self, loader: Iterable, normalize: Normalize) -> None:
        self.loader, self.normalize = loader, normalize

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.normalize(images) for images, _ in self.loader)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def undone_steps(trainer: Trainer) -> Iterator[None]:
    """Training steps taken inside leave no trace: trainable weights, optimizer state and the fp16 gradient
    scaler's state are restored."""
    saved = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    scaler_state = trainer.scaler.state_dict()  # {} when the scaler is disabled (not fp16)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, param in trainer.model.named_parameters():
                if name in saved:
                    param.copy_(saved[name])
        trainer.optimizer.state.clear()
        trainer.scaler.load_state_dict(scaler_state)


def profile_steps(step: Callable[[], object], device: torch.device, folder: Path, worker: str) -> None:
    """A few steps under torch.profiler (wait 1, warm-up 1, active 3), as TensorBoard's profiler plugin reads."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with silence_native_stderr(), torch.profiler.profile(
            activities=activities, schedule=torch.profiler.schedule(wait=1, warmup=1, active=3),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(folder), worker_name=worker),
            record_shapes=True, profile_memory=True) as profiler:
        for _ in range(5):
            step()
            profiler.step()


class ScalarWriter:
    """Each epoch's loss, learning rate and test accuracy as TensorBoard scalars (nothing without a folder), in a
    folder emptied when the writer is made."""

    TAGS = (("loss", "train/loss"), ("lr", "train/lr"), ("val_acc", "val/acc"), ("test_acc", "test/acc"))

    def __init__(self, run_dir: Path | None) -> None:
        self.writer = None
        if run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imported here: tensorboard loads slowly

            # Afresh each time the run starts: a rerun's or resumed run's curve is one curve, not two event files.
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def __call__(self, entry: dict) -> None:
        if self.writer is not None:
            for key, tag in self.TAGS:
                if key in entry:
                    self.writer.add_scalar(tag, entry[key], entry["epoch"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def run_context(config: RunConfig, train_loader: Iterable, normalize: Normalize) -> dict:
    """The keyword arguments a method asked for at registration (:data:`harness.registry.RUN_CONTEXT`)."""
    available = {"train_data": lambda: NormalizedBatches(train_loader, normalize), "measure": lambda: config.measure}
    return {name: available[name]() for name in registry.get_method(config.method).context}


def _under_backend_flags(run: Callable[..., dict]) -> Callable[..., dict]:
    """``run(config, task, device, ...)`` inside :func:`harness.train.backend_flags` of its config: TF32 and
    cudnn.benchmark hold for the whole run, training and measurement, and are put back after it; what was in
    effect (``train_tf32_effective``) joins the metrics."""
    @functools.wraps(run)
    def wrapped(config: RunConfig, task: TaskData, device: torch.device, *args, **kwargs) -> dict:
        with backend_flags(config.train, device) as in_effect:
            return {**run(config, task, device, *args, **kwargs), **in_effect}
    return wrapped


@_under_backend_flags
def train_and_measure(config: RunConfig, task: TaskData, device: torch.device, log: Log,
                      run_dir: Path | None = None, adapter_path: Path | None = None, *,
                      checkpoint: Checkpointer | None = None, tick: Callable[[], None] | None = None,
                      on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Everything one run does between its config and its metrics; ``run_dir`` receives its TensorBoard
    scalars and, with ``--profile``, its profiler traces; ``adapter_path`` (None: not saved) its trained
    adapter (:mod:`harness.adapters`), written after training and before LoRA is merged away.

    ``checkpoint`` saves and resumes training (:func:`harness.train.fit`); ``tick`` is called after every training
    step and before measuring (a deadline raises there); ``on_epoch`` receives each epoch's curve entry."""
    seed_everything(config.seed)
    # Decoded here, before anything trains; only the splits this run reads.
    task = task.at_size(config.data.img_size, config.data.interpolation, config.train.selection)
    model = create_backbone(config.backbone, task.num_classes, pretrained=config.pretrained,
                            img_size=task.image_size, drop_path_rate=config.train.drop_path,
                            weights=Path(config.weights) if config.weights else None)
    normalize = Normalize(config.data.mean, config.data.std, device)
    train_split, val_split = selection_splits(task, config.train.selection)
    # On a GPU each split lives on the device where it fits: no host copies per step.
    train_loader = make_loader(train_split, config.train.batch_size, shuffle=True, seed=config.seed, device=device)
    test_loader = make_loader(task.test, TEST_BATCH, shuffle=False, device=device)
    val_loader = None if val_split is None else make_loader(val_split, TEST_BATCH, shuffle=False, device=device)
    backbone_ids = {id(p) for p in model.parameters()}
    context = run_context(config, train_loader, normalize)
    model = adapt(model.to(device), config.method, config.compression, **context).to(device)
    method_facts(model, config)
    total_params, tunable_params = count_parameters(model)
    added_params = sum(p.numel() for p in model.parameters() if id(p) not in backbone_ids)
    trainer = Trainer(model, build_optimizer(model, config.train), normalize, config.train.label_smoothing,
                      precision=config.train.precision, compile=config.train.compile,
                      distilled_loss=config.train.distilled_loss)

    first_batch = next(iter(train_loader))
    with undone_steps(trainer):
        train_mem = peak_memory(lambda: trainer.train_step(*first_batch), device, model, trainer.optimizer)
    if config.measure.profile and run_dir is not None:
        with undone_steps(trainer):
            profile_steps(lambda: trainer.train_step(*first_batch), device, run_dir / "profile", "train")
    seed_everything(config.seed)
    writer = ScalarWriter(run_dir)
    try:
        result = fit(trainer, train_loader, test_loader, config.train, log, val_loader=val_loader,
                     on_epoch=writer if on_epoch is None else (lambda entry: (writer(entry), on_epoch(entry))),
                     checkpoint=checkpoint, tick=tick)
    finally:
        writer.close()
    if tick is not None:
        tick()

    adapter = {} if adapter_path is None else save_run_adapter(model, adapter_path, config)
    merge_for_inference(model).eval()
    inference = measure_inference(model, task.image_size, device, config.measure)
    if config.measure.profile and run_dir is not None:
        images = torch.randn(inference["infer_batch"], 3, task.image_size, task.image_size, device=device)
        with torch.inference_mode():
            profile_steps(lambda: model(images), device, run_dir / "profile", "inference")
    probe = torch.randn(inference["infer_batch"], 3, task.image_size, task.image_size, device=device)
    with torch.inference_mode(), autocast(device, config.measure.precision):
        infer_mem = peak_memory(lambda: model(probe), device, model)
    if tick is not None:  # the measurement is not cut short, but a run past its deadline is one
        tick()
    if config.measure.flops_breakdown:
        inference["gmacs_per_block"] = ",".join(f"{g:.5g}" for g in gmacs_per_block(model, task.image_size, device))
    measured = {
        "test_acc_best": result.test_acc_best, "test_acc_last": result.test_acc_last,
        "val_acc_best": result.val_acc_best, "test_acc_at_best_val": result.test_acc_at_best_val, **inference,
        "train_img_per_s": result.train_img_per_s, "train_seconds": result.train_seconds,
        "train_peak_mem_mb": train_mem.mb, "infer_peak_mem_mb": infer_mem.mb, "mem_method": train_mem.method,
        "train_peak_reserved_mb": train_mem.reserved_mb, "infer_peak_reserved_mb": infer_mem.reserved_mb,
        "gmacs": count_gmacs(model, task.image_size, device),
        "total_params": total_params, "tunable_params": tunable_params,
        "tunable_pct": 100.0 * tunable_params / total_params,
        "added_params": added_params,
        "curve": result.curve, **adapter,
    }
    return {**measured, **method_facts(model, config, measured)}


def method_facts(model: torch.nn.Module, config: RunConfig, figures: Iterable[str] = ()) -> dict:
    """What the method recorded on ``model`` (:func:`harness.record_info`), refused where a fact's name would hide
    the run's identity (a config field, :data:`RECORD_FIELDS`) or one of its ``figures`` in its row. Asked right
    after adapting, where identity clashes end the run before it trains, and again with the figures at the end."""
    facts = getattr(model, "adaptbench_info", {})
    hidden = sorted(set(facts) & (set(figures) - METHOD_MAY_SAY | set(config.to_dict()) | RECORD_FIELDS))
    if hidden:
        raise UserError(f"{config.method} recorded facts named {', '.join(hidden)} (harness.record_info), which would "
                        f"hide the run's own figures or identity in its row; fix the method plugin to name them "
                        f"otherwise")
    return facts


# What a method's recorded facts may say in place of the pipeline's figure: the parameters it added (small_peft adds
# LoRA to another backbone, every parameter of which is new to the pipeline's count).
METHOD_MAY_SAY = {"added_params"}
RECORD_FIELDS = {"key", "status", "failure", "reason"}  # a row's identity and outcome, beside its config's fields


def measure_inference(model: torch.nn.Module, image_size: int, device: torch.device,
                      settings: MeasureConfig) -> dict:
    """Throughput at every batch of the sweep, each measured again while noisy (up to ``settings.attempts``
    times); the first batch gives the headline columns."""
    measured = torch.compile(model) if settings.compile else model  # once: every batch and attempt reuse it
    metrics: dict = {"precision": settings.precision, "compiled": settings.compile}
    for index, batch in enumerate(settings.batches):
        throughput = measure_until_quiet(
            lambda: inference_throughput(measured, image_size, device, batch_size=batch, settings=settings),
            settings.max_spread, settings.attempts)
        metrics[f"infer_img_per_s_b{throughput.batch_size}"] = throughput.median  # the batch that fitted
        if batch == 1:
            metrics["latency_ms_b1"] = 1000.0 / throughput.median
        if index == 0:
            metrics.update(infer_img_per_s=throughput.median, infer_img_per_s_iqr=throughput.iqr,
                           infer_spread=throughput.relative_spread,
                           infer_noisy=throughput.relative_spread > settings.max_spread,
                           infer_repeats=throughput.repeats, infer_attempts=throughput.attempts,
                           infer_batch=throughput.batch_size)
    return metrics


def noisy_refusal(metrics: dict, settings: MeasureConfig) -> str | None:
    """With ``refuse_noisy``, why a run's headline throughput cannot be accepted (None when it can)."""
    if not (settings.refuse_noisy and metrics.get("infer_noisy")):
        return None
    return (f"inference throughput too noisy: IQR / median {metrics['infer_spread']:.3f} > --max-spread "
            f"{settings.max_spread} after {metrics['infer_attempts']} measurements; quiet the machine (stop other "
            f"jobs, fix --threads) and rerun, or raise --max-spread (the figures are kept in this file)")
