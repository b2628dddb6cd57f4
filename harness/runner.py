"""Plan runs from the CLI's choices, then execute each: build -> adapt -> train -> measure -> one result file."""
from __future__ import annotations

import dataclasses
import inspect
import json
import random
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
from .measure import count_gmacs, count_parameters, inference_throughput, peak_memory_mb
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
              train_overrides: dict, bench_batch: int) -> list[RunConfig]:
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
                                             device.type, train, bench_batch))
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


def _probe_train_memory(trainer: Trainer, batch: tuple[torch.Tensor, torch.Tensor],
                        device: torch.device) -> tuple[float, str]:
    """Peak memory of one training step from a fresh optimizer; weights and optimizer are restored after."""
    model, optimizer = trainer.model, trainer.optimizer
    saved = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    peak, method = peak_memory_mb(lambda: trainer.train_step(*batch), device, model, optimizer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in saved:
                param.copy_(saved[name])
    optimizer.state.clear()
    return peak, method


def train_and_measure(config: RunConfig, task: TaskData, device: torch.device, log: Log) -> dict:
    """Everything one run does between its config and its metrics."""
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

    train_mem, mem_method = _probe_train_memory(trainer, next(iter(train_loader)), device)
    _seed_everything(config.seed)
    result = fit(trainer, train_loader, test_loader, config.train, log)

    merge_for_inference(model).eval()
    throughput = inference_throughput(model, task.image_size, device, batch_size=config.bench_batch)
    probe = torch.randn(config.bench_batch, 3, task.image_size, task.image_size, device=device)
    with torch.inference_mode():
        infer_mem, _ = peak_memory_mb(lambda: model(probe), device, model)
    return {
        "test_acc_best": result.test_acc_best, "test_acc_last": result.test_acc_last,
        "infer_img_per_s": throughput.median, "infer_img_per_s_iqr": throughput.iqr,
        "infer_repeats": throughput.repeats, "infer_batch": throughput.batch_size,
        "train_img_per_s": result.train_img_per_s, "train_seconds": result.train_seconds,
        "train_peak_mem_mb": train_mem, "infer_peak_mem_mb": infer_mem, "mem_method": mem_method,
        "gmacs": count_gmacs(model, task.image_size, device),
        "total_params": total_params, "tunable_params": tunable_params,
        "tunable_pct": 100.0 * tunable_params / total_params,
        "added_params": added_params,
        "curve": result.curve,
        **getattr(model, "adaptbench_info", {}),
    }


def execute(config: RunConfig, task: TaskData, out_dir: Path, device: torch.device, log: Log) -> dict:
    """Run one config and write its result file: ``running`` first, then ``ok`` or ``failed`` with a reason."""
    path = out_dir / f"{config.file_stem}.json"
    record = {"key": config.key, "config": config.to_dict(), "status": STATUS_RUNNING,
              "environment": environment(device)}
    write_json_atomic(path, record)
    started = time.perf_counter()
    try:
        record["metrics"] = train_and_measure(config, task, device, log)
        record["status"] = STATUS_OK
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


def finished_record(config: RunConfig, out_dir: Path) -> dict | None:
    """The stored record of this exact config if it finished successfully."""
    path = out_dir / f"{config.file_stem}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("status") == STATUS_OK else None


def run_all(configs: Sequence[RunConfig], tasks: dict[str, TaskData], out_dir: Path, device: torch.device, *,
            force: bool = False, log: Log = print) -> list[dict]:
    records = []
    for index, config in enumerate(configs, 1):
        prefix = f"[{index}/{len(configs)}] {config.label}"
        cached = None if force else finished_record(config, out_dir)
        if cached is not None:
            log(f"{prefix}: already done, reusing {config.file_stem}.json (--force reruns)")
            records.append(cached)
            continue
        log(prefix)
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
