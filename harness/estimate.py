"""What a plan will cost on this device, before it starts: a few timed steps of each distinct model, scaled by
the tasks' sizes and the recipe.

For every distinct (backbone, method, level, image size, batch, precision) of the plan, a randomly initialised
model is adapted (timing the adaptation itself: a rate search, a throughput match) and timed for a few training
steps and one evaluation batch on random images; a run's estimate is then adaptation + epochs x steps per epoch x
step time + evaluations x test batches x batch time + the inference measurement its timing settings ask for.
Decoding images, the first-run warm-up of kernels and Python overheads are not in it, so small runs come out
short; the run summary prints the estimate beside the truth.
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from . import registry
from .adapt import adapt
from .backbones import create_backbone
from .config import RunConfig
from .data import Normalize, TaskData
from .errors import one_line
from .measure import MeasureConfig, autocast, device_synchronizer
from .pipeline import TEST_BATCH
from .train import Trainer, build_optimizer, evaluation_epochs

TIMED_STEPS = 3
# On a CPU a step's time grows with its batch almost linearly (a fixed cost plus a cost per image), so the
# estimate times two small batches and extends the line through them (a ViT-B/16 step of 32 takes tens of
# seconds there); a GPU is timed at the run's own batch.
CPU_TIMING_BATCHES = (4, 8)
# How the estimate times the throughput match of a method that asks for the run's timing settings: briefly.
QUICK_TIMING = MeasureConfig(warmup_iters=1, warmup_seconds=0.0, repeats=2, iters_per_repeat=1)


@dataclass(frozen=True)
class Timing:
    """Seconds of one model's adaptation, one training step and one image through the deployed model."""

    adapt_seconds: float
    step_seconds: float
    infer_seconds_per_image: float


def _key(config: RunConfig) -> tuple:
    return (config.backbone, config.method, config.compression, config.data.img_size, config.train.batch_size,
            config.train.precision, config.pretrained)


def _timed(fn, synchronize) -> float:
    synchronize()
    started = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - started


def _batch(size: int, count: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8),
            torch.randint(0, max(1, num_classes), (count,)))


def timing_batches(device: torch.device, batch: int) -> tuple[list[int], int]:
    """The batches a training step is timed at, and the batch inference is timed at. A GPU is timed at the run's
    own: its training batch and the evaluation's (:data:`harness.pipeline.TEST_BATCH`), since its time per image
    falls steeply as the batch grows; on a CPU time grows almost linearly with the batch (see
    :data:`CPU_TIMING_BATCHES`), so the largest small batch timed gives the time per image."""
    if device.type == "cuda":
        return [batch], TEST_BATCH
    counts = sorted({min(batch, count) for count in CPU_TIMING_BATCHES})
    return counts, counts[-1]


class _CountedBatches:
    """The timing's ``train_data``: one small batch, re-iterable, counting the batches a method reads while it
    adapts (a rate search reads one per step)."""

    def __init__(self, batch: torch.Tensor) -> None:
        self.batch, self.read = batch, 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        self.read += 1
        yield self.batch


def time_model(config: RunConfig, num_classes: int, device: torch.device) -> Timing:
    """Adapt a random-init model as ``config`` says and time its steps on random images.

    Where the timing batch is smaller than the run's (on a CPU), each batch the method read while adapting is
    charged what a training step gains from the timing batch to the run's: a search step costs about a training
    step, and the run's search reads batches of the run's size."""
    synchronize = device_synchronizer(device)
    size, batch = config.data.img_size, config.train.batch_size
    counts, infer_count = timing_batches(device, batch)
    batches = [_batch(size, count, num_classes) for count in counts]
    normalize = Normalize(config.data.mean, config.data.std, device)
    train_data = _CountedBatches(normalize(batches[0][0]))
    context = {"train_data": train_data, "measure": QUICK_TIMING}
    spec = registry.get_method(config.method)
    model = create_backbone(config.backbone, num_classes, pretrained=False, img_size=size).to(device)
    started = time.perf_counter()
    model = adapt(model, config.method, config.compression, **{name: context[name] for name in spec.context})
    model = model.to(device)
    adapt_seconds = time.perf_counter() - started
    trainer = Trainer(model, build_optimizer(model, config.train), normalize, precision=config.train.precision,
                      distilled_loss=config.train.distilled_loss)
    steps = []
    for images, labels in batches:
        trainer.train_step(images, labels)  # warm-up
        steps.append(min(_timed(lambda: trainer.train_step(images, labels), synchronize) for _ in range(TIMED_STEPS)))
    images = batches[-1][0] if infer_count == counts[-1] else _batch(size, infer_count, num_classes)[0]
    model.eval()
    with torch.inference_mode(), autocast(device, config.train.precision):
        model(normalize(images))
        infer = min(_timed(lambda: model(normalize(images)), synchronize) for _ in range(TIMED_STEPS))
    step_seconds = _extend(counts, steps, batch)
    adapt_seconds += train_data.read * max(0.0, step_seconds - steps[0])
    return Timing(adapt_seconds, step_seconds, infer / infer_count)


def _extend(counts: list[int], seconds: list[float], batch: int) -> float:
    """Seconds of a step of ``batch`` on the line through the timed (count, seconds) points (one point: scaled)."""
    if len(counts) == 1:
        return seconds[0] * batch / counts[0]
    per_image = max(0.0, (seconds[1] - seconds[0]) / (counts[1] - counts[0]))
    return max(seconds[1], seconds[1] + per_image * (batch - counts[1]))


def _measurement_seconds(settings: MeasureConfig, per_image: float) -> float:
    """The inference measurement's own duration: warm-up and timed repeats at every batch of the sweep."""
    total = 0.0
    for batch in settings.batches:
        iteration = batch * per_image
        warmup = max(settings.warmup_seconds, settings.warmup_iters * iteration)
        timed = max(settings.timed_seconds, settings.repeats * settings.iters_per_repeat * iteration)
        total += warmup + timed
    return total


def run_seconds(config: RunConfig, task: TaskData, timing: Timing) -> float:
    """One run's estimate from its model's timing and its task's sizes."""
    sizes = task.split_sizes()
    trained = sizes.get("trainval") or (sizes.get("train") or 0) + (sizes.get("val") or 0)
    if config.train.selection == "val":
        trained = sizes.get("train") or 0
    evaluated = (sizes.get("test") or 0) + (sizes.get("val") or 0 if config.train.selection == "val" else 0)
    steps = config.train.epochs * math.ceil(trained / config.train.batch_size)
    evaluation = len(evaluation_epochs(config.train)) * evaluated * timing.infer_seconds_per_image
    probes = 2 * timing.step_seconds  # the memory probe and the first step before timing
    return (timing.adapt_seconds + steps * timing.step_seconds + evaluation + probes
            + _measurement_seconds(config.measure, timing.infer_seconds_per_image))


class EstimateUnavailable(Exception):
    """The plan could not be timed here; the message says why, and the runs go ahead without an estimate."""


def estimate(configs: Sequence[RunConfig], tasks: dict[str, TaskData], device: torch.device) -> dict[str, float]:
    """Each config's estimated seconds (by key); a run of a task that cannot run costs nothing.

    A model too large to time on this device raises :class:`EstimateUnavailable`: its run will meet the same
    out-of-memory and record it. The device's cache is emptied afterwards, so the runs (or the workers, which
    share the GPU with this process) start from the memory it had."""
    timings: dict[tuple, Timing] = {}
    seconds = {}
    unavailable = None
    try:
        for config in configs:
            task = tasks[config.task]
            if task.problem is not None:
                seconds[config.key] = 0.0
                continue
            if _key(config) not in timings:
                timing = _timing_or_why(config, task.num_classes, device)
                if isinstance(timing, str):
                    unavailable = timing
                    break
                timings[_key(config)] = timing
            seconds[config.key] = run_seconds(config, task, timings[_key(config)])
    finally:
        if device.type == "cuda":  # no exception in flight holds the timed model's frame here: its memory goes back
            gc.collect()
            torch.cuda.empty_cache()
    if unavailable is not None:
        raise EstimateUnavailable(unavailable)
    return seconds


def _timing_or_why(config: RunConfig, num_classes: int, device: torch.device) -> Timing | str:
    """:func:`time_model`'s timing, or why there is none. A reason, not the exception: a caught exception's
    traceback holds the timed model and optimizer, which must be freed before the cache is emptied."""
    try:
        return time_model(config, num_classes, device)
    except torch.cuda.OutOfMemoryError:
        inference = timing_batches(device, config.train.batch_size)[1]
        return (f"out of memory on {device} timing {config.method} on {config.backbone} (training batch "
                f"{config.train.batch_size}, inference batch {inference})")
    except Exception as exc:  # a method that fails on a real model fails its runs too, each recorded
        return (f"{config.method} on {config.backbone} failed while being timed ({one_line(exc)}); its runs will "
                f"record it")


def describe(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"

