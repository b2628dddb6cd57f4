"""Plan runs from the CLI's choices, then execute each: build -> adapt -> train -> measure -> one result file."""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import timm
import torch

from . import registry
from .adapt import adapt, merge_for_inference
from .backbones import check_backbone_name, create_backbone, has_pretrained_weights
from .config import RunConfig
from .data import Normalize, TaskData, make_loader
from .errors import RunFailed, UserError
from .measure import (MeasureConfig, autocast, count_gmacs, count_parameters, gmacs_per_block,
                      inference_throughput, measure_until_quiet, peak_memory, silence_native_stderr)
from .results import STATUS_FAILED, STATUS_OK, STATUS_RUNNING, environment, write_json_atomic
from .train import TrainConfig, Trainer, build_optimizer, fit

Log = Callable[[str], None]
DEFAULT_COMPRESSION = ("low", "high")  # what compressing methods run at unless --compression says otherwise


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"invalid --device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA device is available; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported --device '{name}'; use auto, cpu, cuda or cuda:N")
    return device


def load_tasks(names: Sequence[str], data_root: Path | None) -> dict[str, TaskData]:
    """Build (or read from cache) every task's data before any run starts, so data problems stop us early."""
    return {name: registry.get_task(name).fn(data_root) for name in names}


def plan_runs(methods: Sequence[str], tasks: dict[str, TaskData], *, seeds: Sequence[int],
              compressions: Sequence[str] | None, backbone: str | None, pretrained: bool | None, device: torch.device,
              train_overrides: dict, measure: MeasureConfig = MeasureConfig()) -> list[RunConfig]:
    """The cross product methods x compressions x tasks x seeds, each with every setting resolved.

    ``compressions=None`` runs compressing methods at :data:`DEFAULT_COMPRESSION`. Every (method, level,
    backbone) is adapted once on a meta-device model first, so a bad level or option stops the plan early.
    """
    specs = [registry.get_method(method) for method in methods]
    if compressions is not None and compressions != ["none"] and not any(spec.compresses for spec in specs):
        raise UserError(f"--compression {','.join(compressions)} was asked for, but none of "
                        f"{', '.join(methods)} compresses; add a compressing method (see --list) or drop it")
    configs = []
    for task_name, task in tasks.items():
        task_backbone = backbone or task.default_backbone
        check_backbone_name(task_backbone)
        use_pretrained = has_pretrained_weights(task_backbone) if pretrained is None else pretrained
        epochs = train_overrides.get("epochs") or task.default_epochs
        defaults = {"epochs": epochs, "warmup_epochs": round(epochs / 10), "eval_every": max(1, epochs // 10)}
        train = TrainConfig(**{**defaults, **{k: v for k, v in train_overrides.items() if v is not None}})
        if train.warmup_epochs > train.epochs:
            raise UserError(f"--warmup-epochs {train.warmup_epochs} exceeds --epochs {train.epochs}")
        for spec in specs:
            levels = (list(compressions or DEFAULT_COMPRESSION) if spec.compresses else ["none"])
            for level in levels:
                _check_adapts(spec.name, level, task_backbone, task)
                for seed in seeds:
                    configs.append(RunConfig(spec.name, task_name, task_backbone, seed, level, use_pretrained,
                                             device.type, train, measure))
    return configs


def _check_adapts(method: str, compression: str, backbone: str, task: TaskData) -> None:
    """Adapt a weightless (meta-device) model: bad compression levels or options fail before any run."""
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False, num_classes=task.num_classes, img_size=task.image_size)
        adapt(model, method, compression)


class NormalizedBatches:
    """Re-iterable normalised image batches (no labels), for methods that look at training data while adapting
    (e.g. DiffRate's rate search). A method asks for them by having a ``train_data`` parameter."""

    def __init__(self, loader: Iterable, normalize: Normalize) -> None:
        self.loader, self.normalize = loader, normalize

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.normalize(images) for images, _ in self.loader)


def _wants_train_data(method: str) -> bool:
    return "train_data" in inspect.signature(registry.get_method(method).fn).parameters


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _undone_steps(trainer: Trainer) -> Iterator[None]:
    """Training steps taken inside leave no trace: trainable weights and optimizer state are restored."""
    saved = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, param in trainer.model.named_parameters():
                if name in saved:
                    param.copy_(saved[name])
        trainer.optimizer.state.clear()


def _profile(step: Callable[[], object], device: torch.device, folder: Path, worker: str) -> None:
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


def _scalar_writer(run_dir: Path | None):
    if run_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter  # imported here: tensorboard loads slowly

    return SummaryWriter(str(run_dir / "tensorboard"))


def _write_scalars(writer, entry: dict) -> None:
    if writer is not None:
        for key, tag in (("loss", "train/loss"), ("lr", "train/lr"), ("test_acc", "test/acc")):
            if key in entry:
                writer.add_scalar(tag, entry[key], entry["epoch"])


def train_and_measure(config: RunConfig, task: TaskData, device: torch.device, log: Log,
                      run_dir: Path | None = None) -> dict:
    """Everything one run does between its config and its metrics; ``run_dir`` receives its TensorBoard
    scalars and, with ``--profile``, its profiler traces."""
    _seed_everything(config.seed)
    model = create_backbone(config.backbone, task.num_classes, pretrained=config.pretrained,
                            img_size=task.image_size, drop_path_rate=config.train.drop_path)
    normalize = Normalize(task.mean, task.std, device)
    train_loader = make_loader(task.train_and_val, config.train.batch_size, shuffle=True, seed=config.seed)
    test_loader = make_loader(task.test, 256, shuffle=False)
    backbone_ids = {id(p) for p in model.parameters()}
    options = {"train_data": NormalizedBatches(train_loader, normalize)} if _wants_train_data(config.method) else {}
    model = adapt(model.to(device), config.method, config.compression, **options).to(device)
    total_params, tunable_params = count_parameters(model)
    added_params = sum(p.numel() for p in model.parameters() if id(p) not in backbone_ids)
    trainer = Trainer(model, build_optimizer(model, config.train), normalize, config.train.label_smoothing)

    first_batch = next(iter(train_loader))
    with _undone_steps(trainer):
        train_mem = peak_memory(lambda: trainer.train_step(*first_batch), device, model, trainer.optimizer)
    if config.measure.profile and run_dir is not None:
        with _undone_steps(trainer):
            _profile(lambda: trainer.train_step(*first_batch), device, run_dir / "profile", "train")
    _seed_everything(config.seed)
    writer = _scalar_writer(run_dir)
    result = fit(trainer, train_loader, test_loader, config.train, log,
                 on_epoch=lambda entry: _write_scalars(writer, entry))
    if writer is not None:
        writer.close()

    merge_for_inference(model).eval()
    inference = _measure_inference(model, task.image_size, device, config.measure)
    if config.measure.profile and run_dir is not None:
        images = torch.randn(inference["infer_batch"], 3, task.image_size, task.image_size, device=device)
        with torch.inference_mode():
            _profile(lambda: model(images), device, run_dir / "profile", "inference")
    probe = torch.randn(inference["infer_batch"], 3, task.image_size, task.image_size, device=device)
    with torch.inference_mode(), autocast(device, config.measure.precision):
        infer_mem = peak_memory(lambda: model(probe), device, model)
    if config.measure.flops_breakdown:
        inference["gmacs_per_block"] = ",".join(f"{g:.5g}" for g in gmacs_per_block(model, task.image_size, device))
    return {
        "test_acc_best": result.test_acc_best, "test_acc_last": result.test_acc_last, **inference,
        "train_img_per_s": result.train_img_per_s, "train_seconds": result.train_seconds,
        "train_peak_mem_mb": train_mem.mb, "infer_peak_mem_mb": infer_mem.mb, "mem_method": train_mem.method,
        "train_peak_reserved_mb": train_mem.reserved_mb, "infer_peak_reserved_mb": infer_mem.reserved_mb,
        "gmacs": count_gmacs(model, task.image_size, device),
        "total_params": total_params, "tunable_params": tunable_params,
        "tunable_pct": 100.0 * tunable_params / total_params,
        "added_params": added_params,
        "curve": result.curve,
        **getattr(model, "adaptbench_info", {}),
    }


def _measure_inference(model: torch.nn.Module, image_size: int, device: torch.device,
                       settings: MeasureConfig) -> dict:
    """Throughput at every batch of the sweep, each measured again while noisy (up to ``settings.attempts``
    times); the first batch gives the headline columns."""
    measured = torch.compile(model) if settings.compile else model
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


def execute(config: RunConfig, task: TaskData, out_dir: Path, device: torch.device, log: Log) -> dict:
    """Run one config and write its result file: ``running`` first, then ``ok`` or ``failed`` with a reason."""
    path = out_dir / f"{config.file_stem}.json"
    record = {"key": config.key, "config": config.to_dict(), "status": STATUS_RUNNING,
              "environment": environment(device)}
    write_json_atomic(path, record)
    started = time.perf_counter()
    try:
        record["metrics"] = train_and_measure(config, task, device, log, out_dir / config.file_stem)
        refusal = noisy_refusal(record["metrics"], config.measure)
        record["status"] = STATUS_OK if refusal is None else STATUS_FAILED
        if refusal is not None:
            record["reason"] = refusal
    except KeyboardInterrupt:
        record.update(status=STATUS_FAILED, reason="interrupted by the user")
        raise
    except (RunFailed, UserError) as exc:
        record.update(status=STATUS_FAILED, reason=str(exc))
    except Exception as exc:  # one broken run must not stop the others; the traceback is kept in the file
        record.update(status=STATUS_FAILED, reason=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc())
    finally:
        record["wall_seconds"] = time.perf_counter() - started
        write_json_atomic(path, record)
    return record


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def finished_record(config: RunConfig, out_dir: Path) -> dict | None:
    """The stored record of this exact config if it finished successfully."""
    record = _read_record(out_dir / f"{config.file_stem}.json")
    return record if record is not None and record.get("status") == STATUS_OK else None


def execute_isolated(config: RunConfig, out_dir: Path, plugins: Sequence[str], data_root: Path | None) -> dict:
    """Run one config in a fresh Python process, so no allocator or compile state from an earlier run can
    change its figures; its progress goes to our stdout and its result file is read back."""
    command = [sys.executable, "-m", "harness.isolated", json.dumps(config.to_dict()), str(out_dir),
               str(data_root or ""), *plugins]
    subprocess.run(command, check=False)
    record = _read_record(out_dir / f"{config.file_stem}.json")
    if record is None or record.get("status") == STATUS_RUNNING:
        record = {"key": config.key, "config": config.to_dict(), "status": STATUS_FAILED,
                  "reason": "the isolated run's process died before finishing (see its output above)"}
        write_json_atomic(out_dir / f"{config.file_stem}.json", record)
    return record


def run_all(configs: Sequence[RunConfig], tasks: dict[str, TaskData], out_dir: Path, device: torch.device, *,
            force: bool = False, log: Log = print, isolate: bool = False, plugins: Sequence[str] = (),
            data_root: Path | None = None) -> list[dict]:
    records = []
    for index, config in enumerate(configs, 1):
        prefix = f"[{index}/{len(configs)}] {config.label}"
        cached = None if force else finished_record(config, out_dir)
        if cached is not None:
            log(f"{prefix}: already done, reusing {config.file_stem}.json (--force reruns)")
            records.append(cached)
            continue
        log(prefix)
        if isolate:
            record = execute_isolated(config, out_dir, plugins, data_root)
        else:
            record = execute(config, tasks[config.task], out_dir, device, log)
        if record["status"] == STATUS_OK:
            metrics = record["metrics"]
            log(f"  ok in {record['wall_seconds']:.0f}s: test acc best {metrics['test_acc_best']:.2f}% "
                f"last {metrics['test_acc_last']:.2f}%, {metrics['infer_img_per_s']:.0f} img/s, "
                f"{metrics['gmacs']:.4g} GMACs")
        else:
            log(f"  FAILED: {record['reason']}")
        records.append(record)
    return records


def describe_plan(configs: Sequence[RunConfig]) -> list[str]:
    lines = []
    for index, config in enumerate(configs, 1):
        train = dataclasses.asdict(config.train)
        lines.append(f"[{index}/{len(configs)}] {config.label}  pretrained={config.pretrained} "
                     f"device={config.device} epochs={train['epochs']} lr={train['lr']} "
                     f"batch={train['batch_size']}  -> {config.file_stem}.json")
    return lines
