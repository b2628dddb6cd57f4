"""Device check: training and inference cost of every method on one GPU, in one bounded run, with no data and
no weights, reported against the project's targets.

    python benchmarks/gpu_check.py [--device cuda] [--out gpu_check] [--budget-scale 1.0] [--deadline 420]
    python benchmarks/gpu_check.py --tiny --device cpu --out /tmp/gpu_check    # smoke run, about a minute

What it measures (random-init timm ViT-B/16 and ViT-S/16; ``--tiny``: micro-S at 32 px as both, tiny batches
and budgets, to test the script on a CPU):

- data: a generated VTAB-1k-layout task (``train800val200``: 1,000 training images, and 2,000 test images, at
  224 px) written to a temporary folder, loaded as runs load it (``harness.plan.load_tasks``, then
  ``TaskData.at_size``: the decode-once cache, cold and warm, is timed) and batched by ``make_loader`` on the
  device, as runs batch it;
- training, per method (full_ft, lora, tome and pyra at low and high, small_peft = LoRA on ViT-S: what it
  trains; its candidate timing is not run) in fp32 and bf16 at batch 32: peak memory of the first step from a
  fresh optimizer (``harness.measure.peak_memory``), training img/s of the harness loop
  (``harness.train.train_epoch``, whole epochs of the 1,000 images) and of a bare PyTorch loop on the same
  model, optimizer, batches, autocast and loss, interleaved round by round (ABBA), the input pipeline's share of
  the step (one pass of the loader alone, synchronised after every batch, against a harness epoch), one epoch's
  time and one evaluation's (``Trainer.evaluate`` over the test images at batch 256);
- inference at batch 256 in fp32 and bf16 of full / tome / pyra at low and high, deployed (LoRA merged),
  through ``harness.measure.inference_throughput``, the models interleaved over rounds; speed-up against full
  beside the GMACs ratio (``count_gmacs``);
- compiled inference (not with ``--tiny``): full and tome at high under ``torch.compile`` in bf16, measured as
  above, and their speed-up beside the eager one (not the protocol's figure: whether fusing the merge's small
  kernels is what the speed-up target lacks), each model's compilation timed on its own first; a model is
  skipped with under a minute left before the deadline, and the section without what compiling needs (triton, a
  C compiler, Python's headers), the reason recorded;
- repeatability: five measurements of full ViT-B in fp32 at batch 256, their spread (max - min) / mean and
  coefficient of variation;
- agreement: each inference model's fp32 logits on the device against the same weights on the CPU (16 random
  images), so that a device kernel computing another function (the fused attention with the size bias, the
  merge) shows; and its bf16 logits through the device's default attention kernels against the math kernel's;
- where a forward's time goes: full, tome and pyra at high in bf16 at batch 256, the host's time to issue a
  forward against the time to finish it, the device's kernels, and each aten op's device time in one profiled
  forward (``torch.profiler``), grouped (matmul, attention, casts, matching and merge...): if the speed-up target
  fails, whether the device waits for the host or the merge's kernels cost the time;
- projection: GPU-hours of ``python run.py --preset pyra-vit-b`` (9 configs x 19 tasks x 100 epochs, 10
  evaluations of each task's test set per run, the timing preset's measurement per run) from the figures above,
  with bf16 training and fp32 (the preset's) side by side.

Every measurement is bounded by iterations and seconds (warm-up at least N iterations and S seconds, then timed
at least K and T); ``--budget-scale`` multiplies every seconds budget. On an H100/H200 the defaults take about
5-6 minutes (the reasoning is in :class:`Budgets`). Past ``--deadline`` seconds no new
measurement starts: the rest is recorded as skipped. A timestamped progress line per measurement goes to stdout,
and ``gpu_check.json`` (every figure, the device, versions and settings) and ``gpu_check.md`` (the tables, each
target with its measured value and pass/fail) are rewritten after every measurement, so a run cut off still
leaves what it measured. Exit code: 0 when every measurement ran (whatever the targets say), 1 when one failed
or was skipped, 2 on bad options.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import gc
import importlib.metadata
import importlib.util
import inspect
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PROCESS_STARTED = time.perf_counter()  # before torch's import: the deadline and the log count the whole process

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from packaging.requirements import Requirement  # noqa: E402  (huggingface_hub's, and so timm's, requirement)

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # a checkout without `pip install -e .` (a device machine) still finds harness
sys.path.insert(0, str(REPO / "tests"))


def unmet_requirements(names: tuple[str, ...] = ("torch", "timm")) -> list[str]:
    """The project's requirements on ``names`` (pyproject.toml's) that this environment does not meet, one line
    each. A device machine runs the check from a checkout with its own packages, not from ``pip install``, so
    nothing else has compared them (timm before 1.0.21 cannot build a ViT on the meta device, as planning does)."""
    with open(REPO / "pyproject.toml", "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    wanted = {requirement.name: requirement for requirement in map(Requirement, dependencies)}
    unmet = []
    for name in names:
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or not wanted[name].specifier.contains(installed.split("+")[0], prereleases=True):
            found = f"{installed} is installed" if installed else "is not installed"
            unmet.append(f"{name} {found}; adaptbench needs {wanted[name]}: pip install '{wanted[name]}' (where no "
                         f"package index is reachable, bring its wheel)")
    return unmet


# A GPU machine runs the check with its own packages, not pip install's: before the imports below, which an older
# timm (harness.backbones uses its helpers) or a package it lacks (GPU images seldom have submitit) would break
# with a traceback, each is one line.
if __name__ == "__main__" and (unmet := unmet_requirements()):
    print("\n".join(f"error: {problem}" for problem in unmet), file=sys.stderr)
    sys.exit(2)
try:
    import timm
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from tabulate import tabulate
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    import harness
    from harness import presets, registry
    from harness.backbones import known_backbone_named, smaller_in_family
    from harness.data import Normalize, make_loader
    from harness.estimate import _measurement_seconds  # (the --dry-run estimate's formula for a measurement)
    from harness.measure import (MeasureConfig, autocast, count_gmacs, count_parameters, device_synchronizer,
                                 inference_throughput, peak_memory, silence_native_stderr)
    from harness.measure import PRECISIONS as DTYPES
    from harness.pipeline import TEST_BATCH
    from harness.plan import load_tasks
    from harness.store import replace_atomically, write_json_atomic
    from harness.train import (Schedule, TrainConfig, Trainer, backend_flags, build_optimizer,
                               evaluation_epochs, train_epoch)
    from vtab_root import write_task  # (the tests' builder: one definition of the VTAB-1k layout)

    from common import machine, make_parser, setup
except ModuleNotFoundError as missing:
    if __name__ != "__main__":
        raise
    package = missing.name.split(".")[0]
    print(f"error: {missing.name} is not installed; the check imports it: pip install {package} (where no package "
          f"index is reachable, bring its wheel)", file=sys.stderr)
    sys.exit(2)

SCHEMA = "adaptbench-gpu-check/1"
TASK = "cifar100"  # the generated task: VTAB-1k's layout and cifar100's 100 classes (a 100-way head)
PRECISIONS = ("fp32", "bf16")
# (label, method, level, backbone): "base" is --backbone, "small" --small-backbone. small_peft trains LoRA on
# the smaller backbone; adapting with small_peft itself would time candidate models first.
TRAIN_CONFIGS = (("full_ft", "full_ft", None, "base"), ("lora", "lora", None, "base"),
                 ("tome-low", "tome", "low", "base"), ("tome-high", "tome", "high", "base"),
                 ("pyra-low", "pyra", "low", "base"), ("pyra-high", "pyra", "high", "base"),
                 ("small_peft", "lora", None, "small"))
INFER_VARIANTS = (("full", "full_ft", None), ("tome-low", "tome", "low"), ("tome-high", "tome", "high"),
                  ("pyra-low", "pyra", "low"), ("pyra-high", "pyra", "high"))
REPEAT_VARIANT, REPEAT_PRECISION = "full", "fp32"
# The same inference under torch.compile, last, in the precision where the original ToMe lost most of its gain:
# whether fusing the merge's small kernels is what the speed-up target needs. A compilation is the one step no
# budget bounds: each model is compiled on its own first, only with the reserve left before the deadline, which one
# compilation of ViT-B and its rounds are reasoned to need on an H100/H200 (tome-high's blocks each see another
# token count, so more kernels than full's). Not in --tiny: a compilation on a CPU takes 30-45 s even for a micro ViT.
COMPILED_VARIANTS, COMPILED_PRECISION = ("full", "tome-high"), "bf16"
COMPILED_RESERVE_S = 60.0

# Seconds after which no measurement starts; the tiny deadline leaves a slow CPU room to measure everything (see
# TINY: bf16 on a CPU without its instructions).
DEADLINE_S, TINY_DEADLINE_S = 420.0, 300.0
# The inference models' fp32 logits on the device against the same weights on the CPU (the path the CPU tests check
# against the original ToMe): whether the device's kernels (fused attention with the size bias, the merge's gathers
# and scatters) compute the same function. Agreeing: within AGREEMENT_TOLERANCE of the CPU's largest logit, relative.
# A near-tie between two similarities may merge other tokens on other kernels, moving one image's logits more.
AGREEMENT_IMAGES, AGREEMENT_TOLERANCE = 16, 1e-3
# The same images in bf16 on the device, through its default attention kernels (on a Hopper GPU cuDNN's or the
# memory-efficient one, with the size bias as mask: the path bf16 training and the bf16 speed-up run) and through
# the math kernel (softmax in fp32), each against the CPU's fp32 logits. bf16 alone moves a random-init ViT-B's
# logits by ~1 % (full) to ~4 % (tome at high: other merges), median over images, for either kernel; a kernel that
# dropped the bias moved them by 22-28 % (measured on the CPU). The default kernels agree when their median error is
# within BF16_KERNEL_RATIO times the math kernel's, or within AGREEMENT_TOLERANCE (a model bf16 barely moves).
BF16_KERNEL_RATIO = 2.0

# Where one forward's time goes, in the precision where the original ToMe lost most of its gain: the host's time to
# issue it against the time to finish it (a share near 1: the device waits for launches, so fewer kernels, CUDA graphs
# or compilation help and faster kernels do not), the device's kernels, and each aten op's self time on the device
# from torch.profiler, in families. A few forwards a model: seconds. Should the speed-up target fail, this says why.
BREAKDOWN_VARIANTS, BREAKDOWN_PRECISION = ("full", "tome-high", "pyra-high"), "bf16"
BREAKDOWN_FORWARDS, BREAKDOWN_TOP_OPS = 5, 8
# The aten op that launches a kernel names it; an op of none of these families counts as "elementwise and other".
OP_FAMILIES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"),
    "layer norm": ("aten::native_layer_norm",),
    "copies and casts": ("aten::copy_", "aten::clone", "aten::contiguous"),
    "matching and merge": ("aten::sort", "aten::gather", "aten::scatter_reduce", "aten::scatter_reduce_",
                           "aten::max", "aten::linalg_vector_norm", "aten::cat", "aten::mean", "aten::log",
                           "aten::fill_", "aten::index_put_"),
}
OTHER_FAMILY = "elementwise and other"

# VTAB-1k's test splits as get_vtab1k.py writes them (lines of each task's test.txt); training is train800val200.
VTAB_TEST_SIZES = {
    "cifar100": 10000, "caltech101": 6084, "dtd": 1880, "oxford_flowers102": 6149, "oxford_pet": 3669,
    "svhn": 26032, "sun397": 21750, "patch_camelyon": 32768, "eurosat": 5400, "resisc45": 6300,
    "diabetic_retinopathy": 42670, "clevr_count": 15000, "clevr_dist": 15000, "dmlab": 22735, "kitti": 711,
    "dsprites_loc": 73728, "dsprites_ori": 73728, "smallnorb_azi": 12150, "smallnorb_ele": 12150,
}
VTAB_TRAIN_IMAGES = 1000
PROJECTED_PRESET = "pyra-vit-b"
PROJECTED_BACKBONE = "vit_base_patch16_224.orig_in21k"
# Where each config of the projected table takes its figures from (the cells measured here).
PROJECTION_SOURCES = {"lora": "lora", "tome": "tome-{level}", "pyra": "pyra-{level}", "diffrate": "tome-{level}",
                      "small_peft": "small_peft"}
SEARCH_STEP_FACTOR = 4 / 3  # a DiffRate search step: LoRA's forward and backward plus the frozen teacher's forward

TARGETS = {"input_share": 0.05, "harness_vs_bare": 0.95, "table_gpu_hours_bf16": 4.0,
           "speedup_high_fp32": 3.0, "speedup_high_bf16": 2.5, "repeat_spread": 0.02}


@dataclass(frozen=True)
class Budgets:
    """How long each measurement runs: at least the iterations and at least the seconds (x ``--budget-scale``).

    Adding up on an H100/H200 with ViT-B/16 (reasoned, at ~45 TFLOP/s fp32 and a few hundred bf16): a training
    cell is a build (~1 s), the memory step, >= 1 s of warm-up and >= 2 interleaved rounds (one harness and one
    bare epoch each) totalling >= 6 s, then >= 1 s of evaluation: full_ft in fp32 (~3 s an epoch) takes ~16 s,
    the others ~9 s, the bf16 cells ~8 s: ~130 s for the 14 cells. Inference: 10 (variant, precision) cells x 3
    rounds x (>= 0.3 s warm-up + >= 1.5 s timed) ~ 60 s. Repeatability: 5 x (1 s + 3 s) = 20 s. Agreement and
    the forward breakdown ~10 s. Start-up, 3,000 generated JPEGs and their decoding ~20-30 s. Compiled inference:
    two compilations (~20-30 s each on 16 cores) and 2 x 3 measurements ~ 60-70 s. In all ~5-6 minutes; the
    deadline (420 s) stops new measurements inside 8 minutes should the device be slower.
    """

    train_warmup_steps: int = 3
    train_warmup_s: float = 1.0
    train_min_rounds: int = 2  # a round: one harness epoch and one bare epoch (order alternating), one loader pass
    train_timed_s: float = 6.0  # harness + bare epochs of one cell together
    eval_min_passes: int = 1  # after an untimed first and last batch (both batch shapes)
    eval_timed_s: float = 1.0
    infer_rounds: int = 3  # every variant measured once per round, the order rotated
    infer_warmup_iters: int = 2
    infer_warmup_s: float = 0.3
    infer_repeats: int = 5
    infer_timed_s: float = 1.5
    repeat_times: int = 5
    repeat_warmup_iters: int = 3
    repeat_warmup_s: float = 1.0
    repeat_repeats: int = 5
    repeat_iters: int = 2
    repeat_timed_s: float = 3.0

    def scaled(self, factor: float) -> "Budgets":
        return dataclasses.replace(self, **{field.name: getattr(self, field.name) * factor
                                            for field in dataclasses.fields(self) if field.name.endswith("_s")})


BUDGETS = Budgets()
TINY_BUDGETS = Budgets(train_warmup_steps=1, train_warmup_s=0.0, train_min_rounds=1, train_timed_s=0.0,
                       eval_min_passes=1, eval_timed_s=0.0, infer_rounds=2, infer_warmup_iters=1, infer_warmup_s=0.0,
                       infer_repeats=3, infer_timed_s=0.0, repeat_times=5, repeat_warmup_iters=1,
                       repeat_warmup_s=0.0, repeat_repeats=3, repeat_iters=1, repeat_timed_s=0.0)


@dataclass(frozen=True)
class Scale:
    """What the check runs on: backbones, image size, the generated task's splits, batches."""

    backbone: str
    small_backbone: str
    image_size: int
    train800: int
    val200: int
    test: int
    train_batch: int
    eval_batch: int
    infer_batch: int


FULL = Scale("vit_base_patch16_224", "vit_small_patch16_224", 224, 800, 200, 2000, 32, TEST_BATCH, 256)
# micro-S as the big model too: a CPU without bf16 instructions runs bf16 ~8x slower than fp32, and micro-B's
# bf16 cells alone took a minute there (the tiny run: 120 s with micro-B, 65 s with micro-S, 2-core AMD EPYC VM).
TINY = Scale("vit_micro_small_patch4_32", "vit_micro_small_patch4_32", 32, 12, 4, 32, 8, 16, 16)


# --------------------------------------------------------------------------------------------- bookkeeping

class Check:
    """The results so far, the clock and the deadline; every measurement goes through :meth:`attempt`, and the
    files are rewritten after each."""

    def __init__(self, out: Path, deadline_s: float) -> None:
        self.out, self.deadline_s = out, deadline_s
        self.started = PROCESS_STARTED
        self.results: dict = {"schema": SCHEMA, "started_at": _now(), "complete": False, "training": [],
                              "inference": {}, "skipped": [], "errors": [], "section_seconds": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def late(self) -> bool:
        return self.elapsed() > self.deadline_s

    def log(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} [{self.elapsed():6.1f} s] {message}", flush=True)

    def attempt(self, what: str, measure: Callable[[], object]) -> object | None:
        """``measure()``, unless the deadline has passed (then recorded as skipped); a failure is recorded with
        its reason and the check goes on."""
        if self.late():
            self.results["skipped"].append(what)
            self.log(f"skipped {what}: past the {self.deadline_s:.0f} s deadline")
            return None
        try:
            return measure()
        except Exception as exc:  # one failed measurement (an OOM, a kernel missing) must not end a one-shot check
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            self.results["errors"].append({"what": what, "reason": reason,
                                           "where": traceback.format_exc(limit=-3).strip().splitlines()[-3:]})
            self.log(f"FAILED {what}: {reason}")
            free_device_memory()
            return None

    def save(self) -> None:
        self.results["elapsed_s"] = self.elapsed()
        self.results["projection"] = project(self.results)
        self.results["targets"] = targets(self.results)
        write_json_atomic(self.out / "gpu_check.json", self.results)
        text = render_markdown(self.results)

        def write(temporary: str) -> None:
            Path(temporary).write_text(text)

        replace_atomically(self.out / "gpu_check.md", write)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed(fn: Callable[[], object], synchronize: Callable[[], None]) -> float:
    synchronize()
    started = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - started


def warm_up(step: Callable[[], object], iterations: int, seconds: float, synchronize: Callable[[], None]) -> int:
    """At least ``iterations`` calls and ``seconds`` (each call waited for); returns the calls made."""
    started, done = time.perf_counter(), 0
    while done < iterations or time.perf_counter() - started < seconds:
        step()
        synchronize()
        done += 1
    return done


def last_of(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """The last batch of a pass over ``loader``."""
    for batch in loader:
        pass
    return batch


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def environment(device: torch.device, in_effect: dict) -> dict:
    facts = {"device": str(device), "device_name": machine(device), "torch": torch.__version__,
             "timm": timm.__version__, "python": platform.python_version(), "platform": platform.platform(),
             "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "commit": git_commit(),
             "cuda": torch.version.cuda, "tf32": TrainConfig().tf32,  # the run's defaults, set by backend_flags
             "cudnn_benchmark": TrainConfig().cudnn_benchmark, **in_effect}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts.update(cudnn=torch.backends.cudnn.version(), capability=f"{properties.major}.{properties.minor}",
                     device_memory_gib=properties.total_memory / 2 ** 30, bf16_supported=torch.cuda.is_bf16_supported())
    return facts


# ---------------------------------------------------------------------------------------------------- data

@dataclass
class Data:
    train_loader: object
    test_loader: object
    normalize: Normalize
    train_images: int
    test_images: int
    num_classes: int


def prepare_data(check: Check, scale: Scale, device: torch.device, folder: Path) -> Data:
    sizes = {"train800": scale.train800, "val200": scale.val200, "test": scale.test}
    started = time.perf_counter()
    write_task(folder / "vtab", TASK, sizes=sizes, side=scale.image_size)
    generated = time.perf_counter() - started
    total = sum(sizes.values())
    check.log(f"data: generated {total:,} JPEGs ({scale.image_size} x {scale.image_size - 2} px) in {generated:.1f} s")
    task = load_tasks([TASK], folder / "vtab")[TASK]
    if task.problem:
        raise harness.UserError(f"the generated task does not load: {task.problem}")
    started = time.perf_counter()
    decoded = task.at_size(scale.image_size)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    task.at_size(scale.image_size)  # the cache maps it back in
    warm = time.perf_counter() - started
    check.log(f"data: decode-once cache at {scale.image_size} px: {cold:.2f} s cold ({total / cold:,.0f} img/s), "
              f"{warm:.3f} s warm")
    normalize = Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, device)
    train_loader = make_loader(decoded.train_and_val, scale.train_batch, shuffle=True, seed=0, device=device)
    test_loader = make_loader(decoded.test, scale.eval_batch, shuffle=False, device=device)
    held = getattr(getattr(train_loader, "images", None), "device", None)
    check.results["data"] = {
        "task_layout": TASK, "splits": sizes, "train_images": len(decoded.train_and_val),
        "test_images": len(decoded.test), "image_size": scale.image_size, "generated_side": [scale.image_size,
                                                                                             scale.image_size - 2],
        "generate_seconds": generated, "decode_seconds_cold": cold, "decode_img_per_s": total / cold,
        "decode_seconds_warm": warm, "split_on": str(held) if held is not None else "host (DataLoader)",
        "train_batch": scale.train_batch, "eval_batch": scale.eval_batch}
    return Data(train_loader, test_loader, normalize, len(decoded.train_and_val), len(decoded.test),
                task.num_classes)


# ------------------------------------------------------------------------------------------------ training

def build_model(name: str, method: str, level: str | None, classes: int, device: torch.device, *,
                drop_path: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    model = harness.create_backbone(name, classes, pretrained=False, drop_path_rate=drop_path)
    return harness.adapt(model, method, level).to(device)


def train_cell(model: torch.nn.Module, precision: str, data: Data, budgets: Budgets, device: torch.device,
               check: Check) -> dict:
    """One (model, precision): peak memory, harness vs bare loop interleaved, loader share, one evaluation."""
    synchronize = device_synchronizer(device)
    optimizer = build_optimizer(model, TrainConfig())
    trainer = Trainer(model, optimizer, data.normalize, precision=precision)
    loader = data.train_loader
    model.train()
    first = next(iter(loader))
    memory = peak_memory(lambda: trainer.train_step(*first), device, model, optimizer)  # fresh optimizer, as runs
    mean, std = data.normalize.mean, data.normalize.std

    def bare_step(images: torch.Tensor, labels: torch.Tensor) -> None:
        # A no-op for a split held on the device; a streamed split's batches come from pinned host memory.
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model((images.float() - mean) / std)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warm_up(lambda: trainer.train_step(*first), budgets.train_warmup_steps, budgets.train_warmup_s, synchronize)
    trainer.train_step(*last_of(loader))  # an epoch's last batch may be smaller: a shape of its own to warm up
    bare_step(*first)
    schedule = Schedule(TrainConfig(), steps_per_epoch=len(loader))
    position = 0

    def harness_epoch() -> None:  # the run's loop: fit() calls train_epoch and syncs once per epoch
        nonlocal position
        loss_sum, _ = train_epoch(trainer, loader, schedule, position)
        position += len(loader)
        loss_sum.item()

    def bare_epoch() -> None:
        for images, labels in loader:
            bare_step(images, labels)
        synchronize()

    def loader_pass() -> None:
        for _ in loader:
            synchronize()

    seconds: dict[str, list[float]] = {"harness": [], "bare": [], "loader": []}
    loops = {"harness": harness_epoch, "bare": bare_epoch}
    rounds, spent, cut_short = 0, 0.0, False
    while rounds < budgets.train_min_rounds or spent < budgets.train_timed_s:
        for name in (("harness", "bare") if rounds % 2 == 0 else ("bare", "harness")):
            seconds[name].append(timed(loops[name], synchronize))
            spent += seconds[name][-1]
        seconds["loader"].append(timed(loader_pass, synchronize))
        rounds += 1
        if check.late():
            cut_short = rounds < budgets.train_min_rounds or spent < budgets.train_timed_s
            break

    trainer.evaluate([next(iter(data.test_loader)), last_of(data.test_loader)])  # untimed: both batch shapes
    passes, eval_spent = 0, 0.0
    while passes < budgets.eval_min_passes or eval_spent < budgets.eval_timed_s:
        eval_spent += timed(lambda: trainer.evaluate(data.test_loader), synchronize)
        passes += 1
    model.zero_grad(set_to_none=True)

    epochs, steps = len(seconds["harness"]), len(loader)
    harness_total, bare_total = sum(seconds["harness"]), sum(seconds["bare"])
    loader_per_pass = sum(seconds["loader"]) / len(seconds["loader"])
    total, tunable = count_parameters(model)
    return {
        "precision": precision, "batch": loader.batches.batch_size if hasattr(loader, "batches") else None,
        "steps_per_epoch": steps, "rounds": rounds, "cut_short": cut_short,
        "train_img_per_s": data.train_images * epochs / harness_total,
        "bare_img_per_s": data.train_images * epochs / bare_total,
        "harness_vs_bare": bare_total / harness_total,
        "step_ms": 1000 * harness_total / (epochs * steps),
        "epoch_s": statistics.median(seconds["harness"]),
        "harness_epoch_s": seconds["harness"], "bare_epoch_s": seconds["bare"], "loader_pass_s": seconds["loader"],
        "loader_ms_per_batch": 1000 * loader_per_pass / steps,
        "input_share": loader_per_pass / (harness_total / epochs),
        "eval_s": eval_spent / passes, "eval_passes": passes, "eval_img_per_s": data.test_images * passes / eval_spent,
        "peak_mem_mb": memory.mb, "peak_reserved_mb": memory.reserved_mb, "mem_method": memory.method,
        "total_params": total, "tunable_params": tunable,
    }


def section_training(check: Check, scale: Scale, data: Data, budgets: Budgets, device: torch.device) -> None:
    started = time.perf_counter()
    for label, method, level, which in TRAIN_CONFIGS:
        backbone = scale.backbone if which == "base" else scale.small_backbone
        model = check.attempt(f"build {label}", lambda: build_model(
            backbone, method, level, data.num_classes, device, drop_path=TrainConfig().drop_path))
        for precision in PRECISIONS:
            what = f"training {label} {precision}"
            row = None if model is None else check.attempt(
                what, lambda: train_cell(model, precision, data, budgets, device, check))
            if row is None:
                if model is None:
                    check.results["skipped"].append(what)  # recorded once per cell, whatever stopped the build
                continue
            row = {"config": label, "method": method, "level": level or "none", "backbone": backbone, **row}
            check.results["training"].append(row)
            memory = f"{row['peak_mem_mb']:,.0f} MiB"
            check.log(f"{what}: {row['train_img_per_s']:,.1f} img/s (bare {row['bare_img_per_s']:,.1f}, harness/bare "
                      f"{row['harness_vs_bare']:.3f}), step {row['step_ms']:.1f} ms, input "
                      f"{100 * row['input_share']:.2f} %, epoch {row['epoch_s']:.2f} s, eval {row['eval_s']:.2f} s "
                      f"({row['eval_img_per_s']:,.0f} img/s), peak {memory}")
            check.save()
        model = None  # freed before the next build, which starts from an empty device
        free_device_memory()
    check.results["section_seconds"]["training"] = time.perf_counter() - started
    check.save()


# ----------------------------------------------------------------------------------------------- inference

def inference_settings(precision: str, budgets: Budgets, batch: int) -> MeasureConfig:
    return MeasureConfig(batches=(batch,), precision=precision, warmup_iters=budgets.infer_warmup_iters,
                         warmup_seconds=budgets.infer_warmup_s, repeats=budgets.infer_repeats, iters_per_repeat=1,
                         timed_seconds=budgets.infer_timed_s)


def build_inference_models(check: Check, scale: Scale, classes: int, device: torch.device) -> dict:
    models = {}
    gmacs = check.results.setdefault("inference_gmacs", {})
    for label, method, level in INFER_VARIANTS:
        def build() -> torch.nn.Module:
            model = harness.merge_for_inference(build_model(scale.backbone, method, level, classes, device)).eval()
            gmacs[label] = count_gmacs(model, scale.image_size, device)
            return model
        model = check.attempt(f"build {label} (inference)", build)
        if model is not None:
            models[label] = model
    check.log("inference models: " + ", ".join(f"{label} {gmacs[label]:.3g} GMACs" for label in models))
    return models


def inference_rows(rounds: dict[str, list], gmacs: dict[str, float]) -> list[dict]:
    medians = {label: statistics.median(r["median"] for r in measured)
               for label, measured in rounds.items() if measured}
    rows = []
    for label, measured in rounds.items():
        if not measured:
            continue
        row = {"variant": label, "img_per_s": medians[label], "batch": measured[-1]["batch"],
               "rounds": [r["median"] for r in measured], "iqr": [r["iqr"] for r in measured],
               "round_spread": (max(r["median"] for r in measured) - min(r["median"] for r in measured))
               / medians[label], "gmacs": gmacs.get(label)}
        if "full" in medians and gmacs.get("full") and gmacs.get(label):
            row["speedup"] = medians[label] / medians["full"]
            row["gmacs_ratio"] = gmacs["full"] / gmacs[label]
            row["speedup_per_gmacs_ratio"] = row["speedup"] / row["gmacs_ratio"]
        rows.append(row)
    return rows


def section_inference(check: Check, scale: Scale, models: dict, budgets: Budgets, device: torch.device, *,
                      precisions: tuple[str, ...] = PRECISIONS, section: str = "inference") -> None:
    """Every model of ``models`` once per round, the order rotated, in each precision; rows in
    ``results[section][precision]``, speed-up against ``models["full"]``. A model whose measurement failed is
    not tried again in that precision (a compilation that fails would fail, slowly, every round)."""
    started = time.perf_counter()
    gmacs = check.results.get("inference_gmacs", {})
    for precision in precisions:
        settings = inference_settings(precision, budgets, scale.infer_batch)
        measured: dict[str, list] = {label: [] for label in models}
        labels, failed = list(models), set()
        for index in range(budgets.infer_rounds if labels else 0):
            order = labels[index % len(labels):] + labels[:index % len(labels)]  # rotated: no variant always first
            for label in (label for label in order if label not in failed):
                what = f"{section} {label} {precision} round {index + 1}"
                errors = len(check.results["errors"])
                result = check.attempt(what, lambda: inference_throughput(
                    models[label], scale.image_size, device, batch_size=scale.infer_batch, settings=settings))
                if result is not None:
                    measured[label].append({"median": result.median, "iqr": result.iqr, "batch": result.batch_size})
                elif len(check.results["errors"]) > errors:
                    failed.add(label)
            check.results.setdefault(section, {})[precision] = inference_rows(measured, gmacs)
            check.log(f"{section} {precision} round {index + 1}: " + ", ".join(
                f"{label} {measured[label][-1]['median']:,.0f}" for label in labels if measured[label]) + " img/s")
            check.save()
        for row in check.results.get(section, {}).get(precision, []):
            if "speedup" in row:
                check.log(f"{section} {precision} {row['variant']}: {row['img_per_s']:,.1f} img/s, speed-up "
                          f"{row['speedup']:.2f}x, GMACs ratio {row['gmacs_ratio']:.2f}x")
    check.results["section_seconds"][section] = time.perf_counter() - started
    check.save()


def compile_toolchain_problem(device: torch.device) -> str | None:
    """What ``torch.compile``'s default backend needs on ``device`` to build its kernels and does not find, or
    None: on CUDA triton, and a C compiler with Python's headers for triton's launcher; on a CPU a C++ compiler
    with them. Found before compiling, it costs no trace and says why the section did not run."""
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        language, variable, compilers = "C", "CC", ("gcc", "clang", "cc")
    else:
        language, variable, compilers = "C++", "CXX", ("g++", "clang++", "c++")
    if not (os.environ.get(variable) or any(shutil.which(name) for name in compilers)):
        return f"no {language} compiler ({', '.join(compilers)} or ${variable})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return f"Python's headers (Python.h) are not in {sysconfig.get_paths()['include']}"
    return None


def section_compiled_inference(check: Check, scale: Scale, models: dict, budgets: Budgets,
                               device: torch.device) -> None:
    """:data:`COMPILED_VARIANTS` under ``torch.compile`` in :data:`COMPILED_PRECISION`, as :func:`section_inference`
    measures the eager ones. Each is compiled first by a forward of its own (``results["compile_seconds"]``), and
    only with :data:`COMPILED_RESERVE_S` left before the deadline, checked again before each."""
    missing = compile_toolchain_problem(device)
    if missing is not None:
        check.results["skipped"].append(f"compiled inference ({missing})")
        check.log(f"skipped compiled inference: {missing}")
        return
    compiled_models, seconds = {}, check.results.setdefault("compile_seconds", {})
    for label in (label for label in COMPILED_VARIANTS if label in models):
        left = check.deadline_s - check.elapsed()
        if left < COMPILED_RESERVE_S:
            check.results["skipped"].append(f"compiled inference {label} ({left:.0f} s left before the deadline, "
                                            f"under the {COMPILED_RESERVE_S:.0f} s a compilation and its rounds need)")
            check.log(f"skipped compiled inference {label}: {left:.0f} s left before the deadline")
            continue
        compiled = torch.compile(models[label])
        took = check.attempt(f"compiled_inference {label} compilation",
                             lambda: first_forward_seconds(compiled, scale, device, COMPILED_PRECISION))
        if took is not None:
            compiled_models[label], seconds[label] = compiled, took
            check.log(f"compiled {label} in {took:.1f} s")
            check.save()
    section_inference(check, scale, compiled_models, budgets, device, precisions=(COMPILED_PRECISION,),
                      section="compiled_inference")


def first_forward_seconds(model: torch.nn.Module, scale: Scale, device: torch.device, precision: str) -> float:
    """Seconds of one forward of ``model`` through :func:`inference_throughput`, unwarmed, as its measurement then
    runs it: a compiled model's compilation, which the measurement reuses."""
    once = MeasureConfig(batches=(scale.infer_batch,), precision=precision, warmup_iters=0, warmup_seconds=0.0,
                         repeats=1, iters_per_repeat=1)
    result = inference_throughput(model, scale.image_size, device, batch_size=scale.infer_batch, settings=once)
    return result.batch_size / result.median


def section_repeatability(check: Check, scale: Scale, models: dict, budgets: Budgets, device: torch.device) -> None:
    started = time.perf_counter()
    settings = MeasureConfig(batches=(scale.infer_batch,), precision=REPEAT_PRECISION,
                             warmup_iters=budgets.repeat_warmup_iters, warmup_seconds=budgets.repeat_warmup_s,
                             repeats=budgets.repeat_repeats, iters_per_repeat=budgets.repeat_iters,
                             timed_seconds=budgets.repeat_timed_s)
    record = {"variant": REPEAT_VARIANT, "backbone": scale.backbone, "precision": REPEAT_PRECISION,
              "batch": scale.infer_batch, "protocol": {"warmup_iters": settings.warmup_iters,
                                                       "warmup_seconds": settings.warmup_seconds,
                                                       "repeats": settings.repeats,
                                                       "iters_per_repeat": settings.iters_per_repeat,
                                                       "timed_seconds": settings.timed_seconds},
              "medians": [], "iqrs": []}
    check.results["repeatability"] = record
    model = models.get(REPEAT_VARIANT)
    for index in range(budgets.repeat_times):
        what = f"repeatability {index + 1}/{budgets.repeat_times}"
        result = None if model is None else check.attempt(what, lambda: inference_throughput(
            model, scale.image_size, device, batch_size=scale.infer_batch, settings=settings))
        if result is None:
            if model is None:
                check.results["skipped"].append(what)
            continue
        record["medians"].append(result.median)
        record["iqrs"].append(result.iqr)
        values = record["medians"]
        mean = statistics.mean(values)
        record.update(mean=mean, spread=(max(values) - min(values)) / mean,
                      cv=statistics.stdev(values) / mean if len(values) > 1 else 0.0, batch=result.batch_size)
        check.log(f"{what}: {result.median:,.1f} img/s (IQR {result.iqr:,.1f}); spread so far "
                  f"{100 * record['spread']:.2f} %")
        check.save()
    check.results["section_seconds"]["repeatability"] = time.perf_counter() - started
    check.save()


def _relative_errors(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each image's largest logit difference, relative to the reference's largest logit."""
    scale = reference.abs().max().item() or 1.0  # all-zero logits (a zero-initialised head): absolute differences
    return (logits.float() - reference).abs().amax(dim=1) / scale


def agreement(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> dict:
    """fp32 logits of ``model`` on ``device`` against a copy of it on the CPU, for ``images`` (normalised, CPU);
    and the device's bf16 logits from its default attention kernels and from the math kernel, each against the
    CPU's fp32 ones (:data:`BF16_KERNEL_RATIO`). A device without a bf16 kernel the model needs keeps its fp32
    figures: the bf16 ones are None and ``bf16_failure`` says why."""
    device_images = images.to(device)
    with torch.inference_mode():
        device_fp32 = model(device_images).float()
        reference = copy.deepcopy(model).cpu()(images).float()
    per_image = _relative_errors(device_fp32.cpu(), reference)
    result = {"images": len(images), "max_relative_diff": per_image.max().item(),
              "agreeing": int((per_image <= AGREEMENT_TOLERANCE).sum()),
              "same_top1": int((device_fp32.cpu().argmax(1) == reference.argmax(1)).sum()),
              "bf16_error": None, "bf16_math_error": None, "bf16_kernels_agree": None, "bf16_failure": None}
    try:
        with torch.inference_mode(), autocast(device, "bf16"):
            default_kernels = model(device_images)
            with sdpa_kernel(SDPBackend.MATH):
                math_kernel = model(device_images)
    except RuntimeError as exc:
        return {**result, "bf16_failure": " ".join(str(exc).split())[:200]}
    bf16_error = _relative_errors(default_kernels.cpu(), reference).median().item()
    bf16_math_error = _relative_errors(math_kernel.cpu(), reference).median().item()
    # the floor keeps a model that bf16 barely moves (math error near 0) from failing on rounding alone
    bound = max(BF16_KERNEL_RATIO * bf16_math_error, AGREEMENT_TOLERANCE)
    return {**result, "bf16_error": bf16_error, "bf16_math_error": bf16_math_error,
            "bf16_kernels_agree": bf16_error <= bound}


def section_agreement(check: Check, scale: Scale, models: dict, device: torch.device) -> None:
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (AGREEMENT_IMAGES, 3, scale.image_size, scale.image_size), generator=generator,
                           dtype=torch.uint8)
    images = Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, torch.device("cpu"))(images)
    rows = check.results.setdefault("agreement", [])
    for label, model in models.items():
        result = check.attempt(f"agreement {label}", lambda: agreement(model, images, device))
        if result is not None:
            rows.append({"variant": label, **result})
            check.log(f"agreement {label}: {result['agreeing']}/{result['images']} images within "
                      f"{AGREEMENT_TOLERANCE:g} of the CPU's logits, largest difference "
                      f"{result['max_relative_diff']:.2e}, same top-1 {result['same_top1']}; "
                      + (f"bf16 did not run: {result['bf16_failure']}" if result["bf16_failure"] else
                         f"bf16 median error {result['bf16_error']:.2e} (math kernel "
                         f"{result['bf16_math_error']:.2e})"))
    check.results["section_seconds"]["agreement"] = time.perf_counter() - started
    check.save()


def op_family(op: str) -> str:
    """The family of :data:`OP_FAMILIES` an aten op belongs to; attention kernels by name, whichever backend."""
    if "attention" in op:
        return "attention"
    return next((family for family, ops in OP_FAMILIES.items() if op in ops), OTHER_FAMILY)


def forward_times(model: torch.nn.Module, images: torch.Tensor, synchronize: Callable[[], None],
                  forwards: int) -> tuple[float, float]:
    """Median milliseconds of ``forwards`` forwards (after two untimed), each waited for: to issue it (the host's
    part) and to finish it. Runs in the caller's grad mode and autocast."""
    for _ in range(2):
        model(images)
    issued, finished = [], []
    for _ in range(forwards):
        synchronize()
        started = time.perf_counter()
        model(images)
        issued.append(time.perf_counter() - started)
        synchronize()
        finished.append(time.perf_counter() - started)
    return 1e3 * statistics.median(issued), 1e3 * statistics.median(finished)


def forward_breakdown(model: torch.nn.Module, image_size: int, batch: int, precision: str,
                      device: torch.device, forwards: int = BREAKDOWN_FORWARDS) -> dict:
    """One model's forward at ``batch`` in ``precision``, as :func:`inference_throughput` runs it (autocast, so
    every weight is cast again in every forward: inference mode keeps no autocast cache): median host time to
    issue it and time to finish it over ``forwards``, and from one profiled forward the self time of each aten op
    on the device (on a CPU, on the host) and the device's kernel count. Beside it, the forward of a copy whose
    weights are stored in that precision (no autocast, no casts), as a model deployed in it would run."""
    synchronize = device_synchronizer(device)
    on_cuda = device.type == "cuda"
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    with torch.inference_mode():
        with autocast(device, precision):
            host_ms, forward_ms = forward_times(model, images, synchronize, forwards)
            activities = [torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if on_cuda else [])
            with silence_native_stderr(), torch.profiler.profile(activities=activities) as profiled:
                model(images)
                synchronize()
        dtype, stored_forward_ms, stored_error = DTYPES[precision] or torch.float32, None, None
        try:  # a kernel missing for the stored dtype must not cost the autocast figures above
            stored = copy.deepcopy(model).to(dtype)
            _, stored_forward_ms = forward_times(stored, images.to(dtype), synchronize, forwards)
        except RuntimeError as exc:
            stored_error = " ".join(str(exc).split())[:200]
        stored = None
        free_device_memory()
    ops = {}
    for event in profiled.key_averages():
        self_us = event.self_device_time_total if on_cuda else event.self_cpu_time_total
        if event.key.startswith("aten::") and self_us > 0:
            ops[event.key] = {"calls": event.count, "ms": self_us / 1e3}
    families: dict[str, float] = {}
    for op, figures in ops.items():
        families[op_family(op)] = families.get(op_family(op), 0.0) + figures["ms"]
    kernels = sum(1 for event in profiled.events()  # the device's copies and fills are not launches of a kernel
                  if event.device_type == torch.autograd.DeviceType.CUDA
                  and not event.name.startswith(("Memcpy", "Memset"))) if on_cuda else None
    top = sorted(ops.items(), key=lambda item: -item[1]["ms"])[:BREAKDOWN_TOP_OPS]
    return {"forward_ms": forward_ms, "host_ms": host_ms, "host_share": host_ms / forward_ms, "kernels": kernels,
            "stored_forward_ms": stored_forward_ms, "stored_error": stored_error,
            "profiled_ms": sum(figures["ms"] for figures in ops.values()), "families": families,
            "top_ops": [{"op": op, **figures} for op, figures in top], "time_on": "device" if on_cuda else "host"}


def section_breakdown(check: Check, scale: Scale, models: dict, device: torch.device) -> None:
    started = time.perf_counter()
    record = check.results["breakdown"] = {"precision": BREAKDOWN_PRECISION, "batch": scale.infer_batch,
                                           "forwards": BREAKDOWN_FORWARDS, "rows": []}
    for label in (label for label in BREAKDOWN_VARIANTS if label in models):
        result = check.attempt(f"breakdown {label} {BREAKDOWN_PRECISION}", lambda: forward_breakdown(
            models[label], scale.image_size, scale.infer_batch, BREAKDOWN_PRECISION, device))
        if result is not None:
            record["rows"].append({"variant": label, **result})
            check.log(f"breakdown {label} {BREAKDOWN_PRECISION}: forward {result['forward_ms']:.2f} ms, host "
                      f"{result['host_ms']:.2f} ms ({100 * result['host_share']:.0f} %), " + ", ".join(
                          f"{family} {ms:.2f} ms" for family, ms in sorted(result["families"].items(),
                                                                          key=lambda item: -item[1])))
            check.save()
    check.results["section_seconds"]["breakdown"] = time.perf_counter() - started
    check.save()


# ---------------------------------------------------------------------------------------------- projection

def _cell(results: dict, config: str, precision: str) -> dict | None:
    return next((row for row in results.get("training", []) if row["config"] == config
                 and row["precision"] == precision), None)


def _deployed_img_per_s(results: dict, source: str) -> float | None:
    """fp32 inference img/s of the deployed model a config measures (merged LoRA is the plain ViT: full's)."""
    variant = "full" if source == "lora" else source
    row = next((row for row in results.get("inference", {}).get("fp32", []) if row["variant"] == variant), None)
    if row is not None:
        return row["img_per_s"]
    cell = _cell(results, source, "fp32")  # small_peft's ViT-S is not in the inference section: its eval rate
    return cell["eval_img_per_s"] if cell else None


def project(results: dict) -> dict:
    """GPU-hours of the preset's table from the measured cells, fp32 and bf16 training side by side."""
    preset = presets.load(f"paper/{PROJECTED_PRESET}")
    run, recipe = preset["run"], preset["train"]
    measure = MeasureConfig.preset(run["bench_preset"])
    epochs, evaluations = recipe["epochs"], len(evaluation_epochs(TrainConfig(**recipe)))
    configs = [(method, level) for method in run["methods"]
               for level in (run["compression"] if registry.get_method(method).compresses else [None])]
    search_steps = inspect.signature(registry.get_method("diffrate").fn).parameters["search_steps"].default
    candidates = len(smaller_in_family(known_backbone_named(PROJECTED_BACKBONE)))
    # the plugin's own round settings; it is loaded from its file as a plugin, so found through its registration
    match_rounds = sys.modules[registry.get_method("small_peft").fn.__module__].match_rounds(measure)
    tasks, test_images = len(VTAB_TEST_SIZES), sum(VTAB_TEST_SIZES.values())
    data = results.get("data", {})
    train_images = data.get("train_images") or VTAB_TRAIN_IMAGES
    projection = {
        "preset": PROJECTED_PRESET, "configs": [f"{m}-{lv}" if lv else m for m, lv in configs], "tasks": tasks,
        "epochs": epochs, "evaluations_per_run": evaluations, "train_images_per_task": VTAB_TRAIN_IMAGES,
        "test_images_all_tasks": test_images, "measurement": {"batch": measure.batches[0],
                                                              "precision": measure.precision,
                                                              "warmup_seconds": measure.warmup_seconds,
                                                              "timed_seconds": measure.timed_seconds},
        "assumptions": [
            "diffrate trains and evaluates at tome's measured speed at the same level (same GMACs target); its "
            f"rate search ({search_steps} steps, fp32: it runs in adapt, outside autocast) is costed at "
            f"{SEARCH_STEP_FACTOR:.2f} x LoRA's fp32 step",
            f"small_peft trains LoRA on ViT-S at both levels (the only smaller backbone of the family); its speed "
            f"match times tome at the level and {candidates} candidate(s) in {len(match_rounds)} interleaved rounds "
            f"of the timing preset (later rounds with one warm-up iteration), once per level: the preset's command "
            f"runs inline, and the process keeps the match for its later runs; with --executor local or slurm "
            f"every run is a process of its own and times it again (small_peft_match_per_run_h)",
            f"an epoch is {VTAB_TRAIN_IMAGES:,} images (train800val200) at the measured epoch time, scaled by "
            f"{VTAB_TRAIN_IMAGES:,} / {train_images:,} images measured; plus 2 steps (memory probe, first step)",
            f"{evaluations} evaluations per run of the task's test split at the measured evaluation img/s, in the "
            f"training precision; the measurement is the preset's ({measure.batches[0]} images, "
            f"{measure.precision}, {measure.warmup_seconds:g} s + {measure.timed_seconds:g} s) whatever the "
            f"training precision",
            "decoding: once per task (the cache serves every later run), at the generated images' decode rate",
            "not in it: process start, weight loading, GMACs counting, the inference memory probe",
        ],
    }
    decode_rate = data.get("decode_img_per_s")
    decode_s = sum(VTAB_TRAIN_IMAGES + n for n in VTAB_TEST_SIZES.values()) / decode_rate if decode_rate else 0.0
    for precision in PRECISIONS:
        rows, missing = [], []
        totals = dict.fromkeys(("train", "eval", "measure", "diffrate_search", "small_peft_match"), 0.0)
        for method, level in configs:
            name = f"{method}-{level}" if level else method
            source = PROJECTION_SOURCES[method].format(level=level)
            cell = _cell(results, source, precision)
            if cell is None:
                missing.append(name)
                continue
            deployed = _deployed_img_per_s(results, source)
            per_image = 1 / deployed if deployed else 0.0
            train_s = epochs * cell["epoch_s"] * VTAB_TRAIN_IMAGES / train_images + 2 * cell["step_ms"] / 1000
            eval_s = evaluations * test_images / cell["eval_img_per_s"]  # all tasks
            measure_s = _measurement_seconds(measure, per_image)
            extra, once = {}, {}  # seconds per run; seconds per config, whatever the number of tasks
            if method == "diffrate":
                lora = _cell(results, "lora", "fp32")
                if lora is None:
                    missing.append(f"{name} (search: lora fp32)")
                else:
                    extra["diffrate_search"] = search_steps * SEARCH_STEP_FACTOR * lora["step_ms"] / 1000
            if method == "small_peft":
                reference = _deployed_img_per_s(results, f"tome-{level}")
                once["small_peft_match"] = sum(_measurement_seconds(settings, 1 / reference if reference else 0.0)
                                               + candidates * _measurement_seconds(settings, per_image)
                                               for settings in match_rounds)
            hours = {"train": tasks * train_s / 3600, "eval": eval_s / 3600, "measure": tasks * measure_s / 3600,
                     **{key: tasks * value / 3600 for key, value in extra.items()},
                     **{key: value / 3600 for key, value in once.items()}}
            for key, value in hours.items():
                totals[key] += value
            rows.append({"config": name, "from": f"{source} {precision}", "train_img_per_s": cell["train_img_per_s"],
                         "eval_img_per_s": cell["eval_img_per_s"], "per_run_train_s": train_s,
                         "hours": hours, "total_h": sum(hours.values())})
        totals_h = {f"{key}_h": value for key, value in totals.items()}
        totals_h["decode_h"] = decode_s / 3600
        projection[precision] = {"rows": rows, "missing": missing, **totals_h,
                                 "total_h": sum(totals_h.values()) if not missing else None,
                                 "partial_total_h": sum(totals_h.values()),
                                 "small_peft_match_per_run_h": tasks * totals["small_peft_match"]}
    return projection


# ------------------------------------------------------------------------------------------------- targets

def targets(results: dict) -> list[dict]:
    """Each target with its bound, the measured value and pass / fail (None: not measured)."""
    rows = []
    train = results.get("training", [])

    def add(name: str, bound: str, measured: str | None, passed: bool | None) -> None:
        rows.append({"target": name, "bound": bound, "measured": measured or "not measured", "passed": passed})

    worst = max(train, key=lambda row: row["input_share"], default=None)
    add("input pipeline share of the training step", f"<= {100 * TARGETS['input_share']:.0f} %",
        worst and f"{100 * worst['input_share']:.2f} % (highest: {worst['config']} {worst['precision']})",
        worst and worst["input_share"] <= TARGETS["input_share"])
    lowest = min(train, key=lambda row: row["harness_vs_bare"], default=None)
    add("harness training loop vs bare PyTorch loop (img/s ratio)", f">= {TARGETS['harness_vs_bare']:.2f}x",
        lowest and f"{lowest['harness_vs_bare']:.3f}x (lowest: {lowest['config']} {lowest['precision']}; median "
                   f"{statistics.median(row['harness_vs_bare'] for row in train):.3f}x)",
        lowest and lowest["harness_vs_bare"] >= TARGETS["harness_vs_bare"])
    projection = results.get("projection", {})
    bf16, fp32 = projection.get("bf16", {}), projection.get("fp32", {})
    hours_bf16, hours_fp32 = bf16.get("total_h"), fp32.get("total_h")
    add(f"ViT-B/16 table ({PROJECTED_PRESET}) projected GPU-hours, bf16 training",
        f"<= {TARGETS['table_gpu_hours_bf16']:g} h",
        None if hours_bf16 is None else f"{hours_bf16:.2f} h (fp32 training: {_f(hours_fp32, '.2f', ' h')})",
        None if hours_bf16 is None else hours_bf16 <= TARGETS["table_gpu_hours_bf16"])
    for precision in PRECISIONS:
        bound = TARGETS[f"speedup_high_{precision}"]
        for variant in ("tome-high", "pyra-high"):
            row = next((r for r in results.get("inference", {}).get(precision, []) if r["variant"] == variant), None)
            measured = row and "speedup" in row and (f"{row['speedup']:.2f}x (GMACs ratio {row['gmacs_ratio']:.2f}x, "
                                                     f"batch {row['batch']})")
            add(f"speed-up at high compression, {variant}, {precision}", f">= {bound:.1f}x", measured or None,
                row["speedup"] >= bound if measured else None)
        compiled = next((r for r in results.get("compiled_inference", {}).get(precision, [])
                         if r["variant"] == "tome-high" and "speedup" in r), None)
        if compiled is not None:
            add(f"speed-up at high compression, tome-high, {precision}, both compiled (not the protocol's)",
                f">= {bound:.1f}x", f"{compiled['speedup']:.2f}x (GMACs ratio {compiled['gmacs_ratio']:.2f}x)",
                compiled["speedup"] >= bound)
    repeat = results.get("repeatability", {})
    enough = len(repeat.get("medians", [])) >= 2
    add(f"{len(repeat.get('medians', [])) or 'five'} measurements of one model ({REPEAT_VARIANT} "
        f"{REPEAT_PRECISION}): (max - min) / mean", f"<= {100 * TARGETS['repeat_spread']:.0f} %",
        enough and f"{100 * repeat['spread']:.2f} % (CV {100 * repeat['cv']:.2f} %)" or None,
        repeat["spread"] <= TARGETS["repeat_spread"] if enough else None)
    return rows


# ------------------------------------------------------------------------------------------------ markdown

def _f(value: object, spec: str = ",.1f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


def _table(rows: list[list], headers: list[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _agreement_lines(rows: list[dict]) -> list[str]:
    """The agreement section's paragraph, table and the models whose bf16 forward did not run."""
    if not rows:
        return ["not measured"]
    lines = []
    lines.append(f"fp32 logits of each inference model (LoRA merged) on {AGREEMENT_IMAGES} random images against "
                 f"the same weights on the CPU; a difference is relative to the CPU's largest logit. Agreeing: "
                 f"within {AGREEMENT_TOLERANCE:g}. An image whose merges differ (two nearly equal similarities "
                 f"ranked the other way) may move more; `full` (which merges nothing) disagreeing, or many "
                 f"images of a merging model, point at a kernel. bf16 error: the median over images of the "
                 f"same difference between the device's bf16 logits (autocast) and the CPU's fp32 ones, through "
                 f"the default attention kernels and through the math kernel; the default kernels agree within "
                 f"{BF16_KERNEL_RATIO:g}x the math kernel's error (or {AGREEMENT_TOLERANCE:g}, if larger).")
    lines.append("")
    lines.append(_table([[row["variant"], f"{row['agreeing']}/{row['images']}", f"{row['max_relative_diff']:.2e}",
                          f"{row['same_top1']}/{row['images']}", _f(row.get("bf16_error"), ".2e"),
                          _f(row.get("bf16_math_error"), ".2e"),
                          {True: "yes", False: "NO", None: "-"}[row.get("bf16_kernels_agree")]] for row in rows],
                        ["variant", "agreeing", "largest difference", "same top-1", "bf16 error",
                         "bf16 error, math kernel", "bf16 kernels agree"]))
    failed = [f"- {row['variant']} in bf16 did not run: {row['bf16_failure']}"
              for row in rows if row.get("bf16_failure")]
    lines += ["", *failed] if failed else []
    return lines


def render_markdown(results: dict) -> str:
    env, settings = results.get("environment", {}), results.get("settings", {})
    lines = [f"# GPU check: {env.get('device_name', '?')}", ""]
    lines.append(f"torch {env.get('torch')} (CUDA build {env.get('cuda')}), timm {env.get('timm')}, commit "
                 f"{(env.get('commit') or '?')[:12]}; started {results.get('started_at')}, "
                 f"{results.get('elapsed_s', 0):.0f} s, {'complete' if results.get('complete') else 'INCOMPLETE'}; "
                 f"backbones {settings.get('backbone')} / {settings.get('small_backbone')} at "
                 f"{settings.get('image_size')} px, random init; budget scale {settings.get('budget_scale')}.")
    if settings.get("tiny"):
        lines += ["", f"**Tiny smoke run** (micro backbones at 32 px on {env.get('device')}): these figures test the "
                      f"script; they are not a GPU's, and the targets' pass/fail means nothing here."]
    lines += ["", "## Targets", "", _table([[row["target"], row["bound"], row["measured"],
                                             {True: "pass", False: "FAIL", None: "-"}[row["passed"]]]
                                            for row in results.get("targets", [])],
                                           ["target", "bound", "measured", "result"])]

    data = results.get("data")
    train = results.get("training", [])
    lines += ["", "## Training", ""]
    if data:
        lines.append(f"Batch {data['train_batch']}, one epoch = {data['train_images']:,} images "
                     f"({-(-data['train_images'] // data['train_batch'])} steps), evaluation = {data['test_images']:,} "
                     f"test images at batch {data['eval_batch']}; split on {data['split_on']}. img/s: whole harness "
                     f"epochs (`train_epoch`); bare: the same model, optimizer, batches, autocast and loss inline, "
                     f"interleaved round by round; input share: a pass of the loader alone (synchronised per batch) "
                     f"/ a harness epoch; peak: first step from a fresh optimizer.")
        lines.append("")
    lines.append(_table([[r["config"], r["backbone"], r["precision"], _f(r["train_img_per_s"]),
                          _f(r["bare_img_per_s"]), _f(r["harness_vs_bare"], ".3f", "x"), _f(r["step_ms"], ".1f"),
                          _f(100 * r["input_share"], ".2f", " %"), _f(r["epoch_s"], ".2f"), _f(r["eval_s"], ".2f"),
                          _f(r["eval_img_per_s"], ",.0f"), _f(r["peak_mem_mb"], ",.0f"),
                          _f(r["peak_reserved_mb"], ",.0f"), f"{r['tunable_params']:,}",
                          f"{r['rounds']}{' (cut)' if r['cut_short'] else ''}"] for r in train],
                        ["config", "backbone", "precision", "train img/s", "bare img/s", "harness/bare", "step ms",
                         "input share", "epoch s", "eval s", "eval img/s", "peak MiB", "reserved MiB", "tunable",
                         "rounds"]) if train else "not measured")

    lines += ["", "## Inference", ""]
    lines += _inference_table(results.get("inference", {}), settings, "")
    if settings.get("compiled_inference"):
        lines += ["", "## Inference under torch.compile", ""]
        took = ", ".join(f"{label} {value:.1f} s" for label, value in results.get("compile_seconds", {}).items())
        lines += _inference_table(results.get("compiled_inference", {}), settings,
                                  f" Each model compiled once (default mode{f'; compilation: {took}' if took else ''}),"
                                  f" then measured as above.")

    lines += ["", "## Repeatability", ""]
    repeat = results.get("repeatability", {})
    if repeat.get("medians"):
        protocol = repeat["protocol"]
        lines.append(f"{repeat['variant']} ({repeat['backbone']}), {repeat['precision']}, batch {repeat['batch']}, "
                     f"each measurement: warm-up >= {protocol['warmup_iters']} iterations and "
                     f">= {protocol['warmup_seconds']:g} s, then >= {protocol['repeats']} repeats of "
                     f"{protocol['iters_per_repeat']} and >= {protocol['timed_seconds']:g} s.")
        lines.append("")
        lines.append(_table([[str(i + 1), _f(m), _f(q)] for i, (m, q) in enumerate(zip(repeat["medians"],
                                                                                         repeat["iqrs"]))],
                            ["measurement", "img/s (median)", "IQR"]))
        lines.append("")
        lines.append(f"Mean {_f(repeat['mean'])} img/s; (max - min) / mean {_f(100 * repeat['spread'], '.2f', ' %')}; "
                     f"coefficient of variation {_f(100 * repeat['cv'], '.2f', ' %')}.")
    else:
        lines.append("not measured")

    lines += ["", "## Agreement with the CPU", ""]
    lines += _agreement_lines(results.get("agreement", []))
    lines += ["", "## Where a forward's time goes", ""]
    lines += _breakdown_tables(results.get("breakdown", {}))

    projection = results.get("projection", {})
    lines += ["", f"## Projection: `python run.py --preset {projection.get('preset')}`", ""]
    lines.append(f"{len(projection.get('configs', []))} configs ({', '.join(projection.get('configs', []))}) x "
                 f"{projection.get('tasks')} tasks x {projection.get('epochs')} epochs of "
                 f"{projection.get('train_images_per_task'):,} images, {projection.get('evaluations_per_run')} "
                 f"evaluations per run ({projection.get('test_images_all_tasks'):,} test images over the tasks), "
                 f"and the timing preset's measurement per run.")
    if settings.get("tiny"):
        lines.append("(Tiny run: computed from the micro models' figures, so only the arithmetic is tested.)")
    lines.append("")
    keys = ("train_h", "eval_h", "measure_h", "diffrate_search_h", "small_peft_match_h", "decode_h")
    lines.append(_table([[precision, *(_f(projection[precision][key], ".2f") for key in keys),
                          _f(projection[precision]["total_h"], ".2f") if projection[precision]["total_h"] is not None
                          else f"partial {projection[precision]['partial_total_h']:.2f} (missing: "
                               f"{', '.join(projection[precision]['missing'])})"]
                         for precision in PRECISIONS if precision in projection],
                        ["training precision", "train h", "eval h", "measurement h", "diffrate search h",
                         "small_peft match h", "decode h", "total GPU-h"]))
    lines.append("")
    if "fp32" in projection:
        lines += [f"The total is for the preset's command as it runs, inline. With `--executor local` or `slurm` (a "
                  f"process per run) small_peft times its speed match in every run: "
                  f"{_f(projection['fp32'].get('small_peft_match_per_run_h'), '.2f')} h in all instead of "
                  f"{_f(projection['fp32'].get('small_peft_match_h'), '.2f')} h.", ""]
    per_config = {}
    for precision in PRECISIONS:
        for row in projection.get(precision, {}).get("rows", []):
            per_config.setdefault(row["config"], {})[precision] = row
    lines.append(_table([[config, " / ".join(row["from"] for row in by.values()),
                          " / ".join(_f(row["train_img_per_s"]) for row in by.values()),
                          " / ".join(_f(row["eval_img_per_s"], ",.0f") for row in by.values()),
                          _f(by.get("fp32", {}).get("total_h"), ".3f"), _f(by.get("bf16", {}).get("total_h"), ".3f")]
                         for config, by in per_config.items()],
                        ["config", "figures from", "train img/s", "eval img/s", "GPU-h fp32", "GPU-h bf16"]))
    lines += [""] + [f"- {assumption}" for assumption in projection.get("assumptions", [])]

    lines += ["", "## Data and run", ""]
    if data:
        lines.append(f"Generated {sum(data['splits'].values()):,} JPEGs ({data['generated_side'][0]} x "
                     f"{data['generated_side'][1]} px, VTAB-1k layout, {data['task_layout']}'s classes) in "
                     f"{data['generate_seconds']:.1f} s; decode-once cache at {data['image_size']} px: "
                     f"{data['decode_seconds_cold']:.2f} s cold ({data['decode_img_per_s']:,.0f} img/s), "
                     f"{data['decode_seconds_warm']:.3f} s warm (mapped back).")
    sections = results.get("section_seconds", {})
    lines.append("Seconds per section: " + (", ".join(f"{k} {v:.1f}" for k, v in sections.items()) or "-") + ".")
    if results.get("skipped"):
        lines.append(f"Skipped (deadline {settings.get('deadline_s')} s): {', '.join(results['skipped'])}.")
    for error in results.get("errors", []):
        lines.append(f"- FAILED {error['what']}: {error['reason']}")
    return "\n".join(lines) + "\n"


def _breakdown_tables(breakdown: dict) -> list[str]:
    rows = breakdown.get("rows", [])
    if not rows:
        return ["not measured"]
    on = rows[0]["time_on"]
    families = [family for family in ("matmul", "attention", "layer norm", "copies and casts", "matching and merge",
                                      OTHER_FAMILY) if any(family in row["families"] for row in rows)]
    precision = breakdown["precision"]
    full = next((row for row in rows if row["variant"] == "full"), None)

    def speedup(row: dict, key: str) -> str:
        return _f(full[key] / row[key], ".2f", "x") if full and full.get(key) and row.get(key) else "-"
    lines = [f"{precision}, batch {breakdown['batch']}, deployed (LoRA merged), eval mode, under autocast as "
             f"`inference_throughput` runs it. Forward: median of {breakdown['forwards']}, each waited for (a check "
             f"of where time goes, not the protocol's figure); host: the time to issue it. A host share near 100 % "
             f"means the device waits for the host's launches: fewer kernels, CUDA graphs or compilation help, "
             f"faster kernels do not"
             + (" (on a CPU the host runs the kernels itself, so the share is 100 % by construction)"
                if on == "host" else "")
             + (". Device busy: the profiled forward's kernel time over the forward's time (the rest, the device "
                "idle between kernels)" if on == "device" else "")
             + f". Weights in {precision}: a copy of the model stored in {precision}, run without autocast (no "
               f"per-forward casts of weights and activations), as a model deployed in {precision} runs.", ""]
    lines.append(_table([[row["variant"], _f(row["forward_ms"], ".2f"), speedup(row, "forward_ms"),
                          _f(row["host_ms"], ".2f"), _f(100 * row["host_share"], ".0f", " %"),
                          _f(100 * row["profiled_ms"] / row["forward_ms"], ".0f", " %") if on == "device" else "-",
                          _f(row["kernels"], ",d"), _f(row["stored_forward_ms"], ".2f"),
                          speedup(row, "stored_forward_ms")] for row in rows],
                        ["variant", "forward ms", "speed-up", "host ms", "host share", "device busy", "kernels",
                         f"weights in {precision}: forward ms", "speed-up"]))
    failed = [f"- {row['variant']} stored in {precision} did not run: {row['stored_error']}"
              for row in rows if row.get("stored_error")]
    lines += ["", *failed] if failed else []
    lines += ["", f"One profiled forward (autocast): each aten op's self time on the {on} (ms), by family.", ""]
    lines.append(_table([[row["variant"], _f(row["profiled_ms"], ".2f"),
                          *(_f(row["families"].get(family, 0.0), ".2f") for family in families)] for row in rows],
                        ["variant", "all", *families]))
    if any(row["profiled_ms"] == 0 for row in rows):
        lines += ["", f"The profiler saw no {on} time in some forward (no CUPTI on this machine?): its zeros are "
                      f"not measurements."]
    lines += ["", f"The {BREAKDOWN_TOP_OPS} ops with the most {on} time in each:", ""]
    lines.append(_table([[row["variant"], op["op"], f"{op['calls']:,}", _f(op["ms"], ".3f"),
                          _f(100 * op["ms"] / row["profiled_ms"], ".1f", " %")]
                         for row in rows for op in row["top_ops"]],
                        ["variant", "op", "calls", f"{on} ms", "share"]))
    return lines


def _inference_table(inference: dict, settings: dict, how: str) -> list[str]:
    if not inference:
        return ["not measured"]
    rows = [[precision, r["variant"], _f(r["gmacs"], ".3f"), _f(r.get("gmacs_ratio"), ".2f", "x"),
             _f(r["img_per_s"]), _f(r.get("speedup"), ".2f", "x"), _f(r.get("speedup_per_gmacs_ratio"), ".2f"),
             _f(100 * r["round_spread"], ".1f", " %"), str(r["batch"])]
            for precision, measured in inference.items() for r in measured]
    return [f"Batch {settings.get('infer_batch')}, deployed (LoRA merged), eval mode, `inference_throughput`; img/s: "
            f"median over {settings.get('budgets', {}).get('infer_rounds')} rounds that interleave the variants; "
            f"speed-up against full in the same precision.{how}", "",
            _table(rows, ["precision", "variant", "GMACs", "GMACs ratio", "img/s", "speed-up",
                          "speed-up / GMACs ratio", "spread over rounds", "batch"])]


# ---------------------------------------------------------------------------------------------------- main

def run_sections(check: Check, scale: Scale, budgets: Budgets, device: torch.device, folder: Path, *,
                 compiled: bool) -> None:
    started = time.perf_counter()
    data = check.attempt("data", lambda: prepare_data(check, scale, device, folder))
    check.results["section_seconds"]["data"] = time.perf_counter() - started
    check.save()
    if data is None:
        check.results["skipped"].append("everything after the data")
        return
    section_training(check, scale, data, budgets, device)
    started = time.perf_counter()
    models = build_inference_models(check, scale, data.num_classes, device)
    check.results["section_seconds"]["inference_build"] = time.perf_counter() - started
    del data
    free_device_memory()
    section_inference(check, scale, models, budgets, device)
    section_repeatability(check, scale, models, budgets, device)
    section_agreement(check, scale, models, device)
    section_breakdown(check, scale, models, device)
    if compiled:
        section_compiled_inference(check, scale, models, budgets, device)


def main() -> int:
    parser = make_parser(__doc__, "vit_base_patch16_224", device=True)
    parser.set_defaults(backbone=None, device="cuda")
    parser.add_argument("--small-backbone", default=None,
                        help="the small_peft model (default vit_small_patch16_224; --tiny: vit_micro_small_patch4_32)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder for gpu_check.json / .md")
    parser.add_argument("--tiny", action="store_true",
                        help="micro backbones at 32 px, tiny splits, batches and budgets: a CPU smoke run")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every seconds budget")
    parser.add_argument("--deadline", type=float, default=None,
                        help=f"seconds after which no measurement starts (default {DEADLINE_S:g}; "
                             f"--tiny {TINY_DEADLINE_S:g})")
    args = parser.parse_args()
    if args.budget_scale <= 0:
        parser.error("--budget-scale must be positive")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}, but torch {torch.__version__} sees no CUDA device; run on a GPU "
              f"machine or pass --device cpu (with --tiny)", file=sys.stderr)
        return 2
    for problem in unmet_requirements():
        print(f"error: {problem}", file=sys.stderr)
        return 2
    scale = dataclasses.replace(TINY if args.tiny else FULL, **{
        key: value for key, value in (("backbone", args.backbone), ("small_backbone", args.small_backbone)) if value})
    budgets = (TINY_BUDGETS if args.tiny else BUDGETS).scaled(args.budget_scale)
    deadline = args.deadline if args.deadline is not None else (TINY_DEADLINE_S if args.tiny else DEADLINE_S)
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # a smoke run on a shared host: light, and steadier than threads fighting for cores
    device = setup(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, deadline)
    check.results["settings"] = {
        "tiny": args.tiny, "budget_scale": args.budget_scale, "deadline_s": deadline,
        "budgets": dataclasses.asdict(budgets), **dataclasses.asdict(scale), "precisions": list(PRECISIONS),
        "train_configs": [{"config": c, "method": m, "level": lv, "backbone": b} for c, m, lv, b in TRAIN_CONFIGS],
        "inference_variants": [v for v, _, _ in INFER_VARIANTS], "normalization": "imagenet",
        "compiled_inference": not args.tiny, "compiled_variants": list(COMPILED_VARIANTS),
        "compiled_precision": COMPILED_PRECISION,
        "train_config": dataclasses.asdict(TrainConfig())}
    check.log(f"gpu check on {machine(device)}: {scale.backbone} / {scale.small_backbone} at {scale.image_size} px, "
              f"budget scale {args.budget_scale}, deadline {deadline:.0f} s, writing {args.out}")
    # A kill by `timeout` (SIGTERM) unwinds like an exception, so the files are written once more on the way out.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_check-") as folder, \
                backend_flags(TrainConfig(), device) as flags:
            os.environ["ADAPTBENCH_CACHE"] = str(Path(folder) / "cache")  # a cold decode, nothing in ~/.cache
            check.results["environment"] = environment(device, flags)
            check.save()
            run_sections(check, scale, budgets, device, Path(folder), compiled=not args.tiny)
    except Exception as exc:  # a bug of the check itself: what was measured is still written
        check.results["errors"].append({"what": "the check itself", "reason": f"{type(exc).__name__}: {exc}",
                                        "where": traceback.format_exc(limit=-3).strip().splitlines()[-3:]})
        check.log(f"FAILED: {type(exc).__name__}: {exc}")
    except (KeyboardInterrupt, SystemExit) as exc:  # SIGTERM or Ctrl-C: written as cut off, then out
        check.results["errors"].append({"what": "the check itself", "reason": f"interrupted ({type(exc).__name__})"})
        check.log(f"interrupted ({type(exc).__name__}); writing what was measured")
        raise
    finally:
        check.results["complete"] = not check.results["skipped"] and not check.results["errors"]
        check.results["finished_at"] = _now()
        check.save()
    print()
    print((args.out / "gpu_check.md").read_text(), flush=True)
    check.log(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if check.results["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
