"""Measurements of an adapted model: parameters, GMACs, inference throughput and peak memory.

Conventions (see README, "What is measured"):
- GMACs follow fvcore, the field's convention (ViT-B/16 at 224 = 17.58): multiply-accumulates of matmul,
  linear and conv, plus 5 per element for affine LayerNorm, counted with ``FlopCounterMode`` at batch 1.
  Attention is forced onto the math path while counting: on CPU the fused kernel is invisible to the counter.
- Throughput: warm-up iterations, then timed repeats; we report the median and the interquartile range. A
  figure whose IQR / median exceeds ``max_spread`` is measured again (up to ``attempts`` times in all) and, if it
  stays noisy, flagged — or, with ``refuse_noisy``, the run is refused.
- Peak memory: CUDA, ``max_memory_allocated`` and ``max_memory_reserved`` over the phase; CPU, the resident
  tensors (parameters, buffers, gradients, optimizer state) plus the peak of torch's CPU allocations during the
  phase, read from ``torch.profiler`` memory events. Named ``*_peak_mem_mb`` with ``mem_method`` saying which.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from . import presets

MIB = 2 ** 20
# glibc mallopt() parameters; 32 MiB is the largest mmap threshold glibc accepts on 64-bit machines.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEPT_MMAP_BYTES, _KEPT_TRIM_BYTES = 32 * MIB, 1024 * MIB


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, tunable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    tunable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, tunable


def _layer_norm_flops(input_shape, *args, **kwargs) -> int:
    # fvcore counts 5 ops per element for an affine LayerNorm; FlopCounterMode counts 2 FLOPs per MAC.
    return 2 * 5 * math.prod(input_shape)


@torch.no_grad()
def _count(model: nn.Module, image_size: int, device: torch.device | str) -> FlopCounterMode:
    was_training = model.training
    model.eval()
    images = torch.zeros(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.native_layer_norm: _layer_norm_flops})
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(images)
    model.train(was_training)
    return counter


def count_gmacs(model: nn.Module, image_size: int, device: torch.device | str = "cpu") -> float:
    """GMACs of one image through ``model`` in eval mode, in fvcore's convention."""
    return _count(model, image_size, device).get_total_flops() / 2e9


def gmacs_per_block(model: nn.Module, image_size: int, device: torch.device | str = "cpu") -> list[float]:
    """GMACs of each transformer block (``model.blocks[i]``), counted as :func:`count_gmacs` counts."""
    counts = _count(model, image_size, device).get_flop_counts()
    per_module = {name.split(".", 1)[-1]: sum(ops.values()) for name, ops in counts.items()}
    return [per_module.get(f"blocks.{index}", 0) / 2e9 for index in range(len(model.blocks))]


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class MeasureConfig:
    """How inference is timed. Presets are the tables of ``harness/presets/timing.toml`` (:meth:`preset`)."""

    batches: tuple[int, ...] = (64,)
    precision: str = "fp32"
    compile: bool = False
    warmup_iters: int = 3
    warmup_seconds: float = 1.0  # the first figure of a process is slow without it (benchmarks/throughput_noise.py)
    repeats: int = 7
    iters_per_repeat: int = 2
    timed_seconds: float = 0.0
    max_spread: float = 0.10  # interquartile range / median above this makes the figure noisy
    attempts: int = 3  # measurements of a noisy figure before it is flagged (or refused)
    refuse_noisy: bool = False  # a figure still noisy after every attempt fails the run instead of being flagged
    profile: bool = False
    flops_breakdown: bool = False

    @classmethod
    def preset(cls, name: str, **overrides) -> "MeasureConfig":
        """The preset ``name`` of ``timing.toml`` with the ``overrides`` that are not None on top."""
        fields = {key: tuple(value) if isinstance(value, list) else value
                  for key, value in presets.load("timing")[name].items()}
        return cls(**{**fields, **{k: v for k, v in overrides.items() if v is not None}})


def timing_presets() -> list[str]:
    """The names ``--bench-preset`` accepts."""
    return list(presets.load("timing"))


@dataclass(frozen=True)
class Throughput:
    """Images per second over timed repeats: median and interquartile range."""

    median: float
    iqr: float
    repeats: int
    batch_size: int

    attempts: int = 1

    @property
    def relative_spread(self) -> float:
        return self.iqr / self.median if self.median else float("nan")


def measure_until_quiet(measure: Callable[[], Throughput], max_spread: float, attempts: int) -> Throughput:
    """Measure up to ``attempts`` times, stopping at the first figure whose spread is within ``max_spread``;
    otherwise the least noisy one. ``attempts`` of the result says how many measurements were taken."""
    tried: list[Throughput] = []
    while len(tried) < max(1, attempts):
        tried.append(measure())
        if tried[-1].relative_spread <= max_spread:
            break
    best = min(tried, key=lambda throughput: throughput.relative_spread)
    return replace(best, attempts=len(tried))


def summarize_rates(rates: list[float], batch_size: int) -> Throughput:
    quartiles = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else [rates[0]] * 3
    return Throughput(statistics.median(rates), quartiles[2] - quartiles[0], len(rates), batch_size)


def time_repeats(run_once: Callable[[], None], *, warmup: int, repeats: int, iters_per_repeat: int,
                 warmup_seconds: float = 0.0, timed_seconds: float = 0.0,
                 synchronize: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds per iteration of each timed block.

    Warm-up: at least ``warmup`` iterations and ``warmup_seconds``. Timing: blocks of ``iters_per_repeat``
    iterations, synchronised at both ends, until there are ``repeats`` blocks and ``timed_seconds`` have passed.
    """
    started = clock()
    done = 0
    while done < warmup or clock() - started < warmup_seconds:
        run_once()
        done += 1
    synchronize()
    seconds: list[float] = []
    timing_started = clock()
    while len(seconds) < repeats or clock() - timing_started < timed_seconds:
        block_started = clock()
        for _ in range(iters_per_repeat):
            run_once()
        synchronize()
        seconds.append((clock() - block_started) / iters_per_repeat)
    return seconds


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def device_synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits for ``device`` to finish queued work: ``torch.cuda.synchronize`` on CUDA, nothing on CPU."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _mallopt(parameter: int, value: int) -> bool:
    return bool(ctypes.CDLL("libc.so.6").mallopt(parameter, value))


@functools.cache
def steady_host_allocator() -> str:
    """Make glibc keep freed host memory for reuse, for the rest of the process; returns what was set.

    By default glibc gives every large block (from 128 KiB, raised only as blocks are freed) back to the OS, so
    a fresh process pays page faults on each forward pass that a process warmed by training does not: the same
    model ran 1.5x slower on CPU in a benchmark script than inside a run (benchmarks/throughput_noise.py). Kept
    memory makes the figure a property of the model, not of the process's history. Called by every timed path
    and recorded in each row's environment (``cpu_allocator``).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "system default"
    try:
        applied = _mallopt(_M_MMAP_THRESHOLD, _KEPT_MMAP_BYTES) and _mallopt(_M_TRIM_THRESHOLD, _KEPT_TRIM_BYTES)
    except (OSError, AttributeError):
        applied = False
    if not applied:
        return "glibc default (mallopt refused)"
    return f"glibc, freed memory kept (mmap threshold {_KEPT_MMAP_BYTES // MIB} MiB, trim threshold " \
           f"{_KEPT_TRIM_BYTES // MIB} MiB)"


@torch.inference_mode()
def inference_throughput(model: nn.Module, image_size: int, device: torch.device, *, batch_size: int = 64,
                         settings: MeasureConfig = MeasureConfig()) -> Throughput:
    """Images/s of ``model`` in eval mode on random input (speed does not depend on the pixel values).

    On CUDA out-of-memory the batch is halved until it fits, as timm's benchmark does; the result says which
    batch was used.
    """
    steady_host_allocator()
    model.eval()
    synchronize = device_synchronizer(device)
    while True:
        try:
            images = torch.randn(batch_size, 3, image_size, image_size, device=device)
            with autocast(device, settings.precision):
                seconds = time_repeats(lambda: model(images), warmup=settings.warmup_iters,
                                       warmup_seconds=settings.warmup_seconds, repeats=settings.repeats,
                                       iters_per_repeat=settings.iters_per_repeat,
                                       timed_seconds=settings.timed_seconds, synchronize=synchronize)
            return summarize_rates([batch_size / s for s in seconds], batch_size)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
        # Out of the except clause, whose traceback held the failed attempt's tensors: now they can be released.
        images = None
        torch.cuda.empty_cache()
        batch_size //= 2


def deployed_throughput(model: nn.Module, image_size: int, device: torch.device, settings: MeasureConfig,
                        batch_size: int | None = None) -> Throughput:
    """Throughput as a run measures its model: compiled when ``settings.compile`` says so, at ``batch_size``
    (default: the headline batch, ``settings.batches[0]``), in ``settings.precision``."""
    measured = torch.compile(model) if settings.compile else model
    return inference_throughput(measured, image_size, device, batch_size=batch_size or settings.batches[0],
                                settings=settings)


@contextlib.contextmanager
def silence_native_stderr() -> Iterator[None]:
    """The profiler's C++ side prints start/stop lines to fd 2; keep them out of the user's console."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _profiled_cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of torch's CPU allocations above the level at the start of ``fn``, from profiler memory events."""
    with silence_native_stderr():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = sorted((event.start_ns(), event.nbytes()) for event in prof.profiler.kineto_results.events()
                    if event.name() == "[memory]")
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def resident_tensor_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes of parameters, buffers, gradients and optimizer state that live between steps."""
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        tensors += [value for state in optimizer.state.values() for value in state.values()
                    if isinstance(value, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class PeakMemory:
    """Peak memory of one phase in MiB; ``reserved_mb`` is the CUDA caching allocator's peak (None on CPU)."""

    mb: float
    reserved_mb: float | None
    method: str


def peak_memory(fn: Callable[[], object], device: torch.device, model: nn.Module,
                optimizer: torch.optim.Optimizer | None = None) -> PeakMemory:
    """Peak memory of ``model`` (and ``optimizer``) while running ``fn``, on its own: the bytes of its resident
    tensors plus the peak of allocations above the level at the start, on either device. Whatever else lives on
    the device (a task's splits kept there, an earlier phase's tensors) is not counted. The CUDA caching
    allocator's peak (``reserved_mb``) is read after emptying its cache, so an earlier phase's blocks are not in
    it; it does include everything else on the device."""
    resident = resident_tensor_bytes(model, optimizer)
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        above_start = torch.cuda.max_memory_allocated(device) - start
        return PeakMemory((resident + above_start) / MIB, torch.cuda.max_memory_reserved(device) / MIB,
                          "cuda_resident_plus_peak_above_start")
    return PeakMemory((resident + _profiled_cpu_peak_bytes(fn)) / MIB, None, "cpu_resident_plus_profiler_peak")
