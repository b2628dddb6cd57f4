"""Planning: from the command line's choices to the list of fully resolved run configs, before anything runs."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import timm
import torch

from . import presets, registry
from .adapt import adapt
from .backbones import check_backbone_name, has_pretrained_weights
from .config import RunConfig
from .data import TaskData
from .errors import UserError
from .vocabulary import NONE
from .measure import MeasureConfig
from .train import TrainConfig


def default_compression() -> tuple[str, ...]:
    """What compressing methods run at unless ``--compression`` says otherwise (``defaults.toml``)."""
    return tuple(presets.load("defaults")["compression"])


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

    ``compressions=None`` runs compressing methods at :func:`default_compression`. Every (method, level,
    backbone) is adapted once on a meta-device model first, so a bad level or option stops the plan early.
    The config keeps the device's type (a run on ``cuda:1`` is the same experiment as on ``cuda:0``); the
    device itself, index included, goes to the executor and into the record's environment.
    """
    specs = [registry.get_method(method) for method in methods]
    if compressions is not None and list(compressions) != [NONE] and not any(spec.compresses for spec in specs):
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
            levels = list(compressions or default_compression()) if spec.compresses else [NONE]
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


def describe_plan(configs: Sequence[RunConfig]) -> list[str]:
    lines = []
    for index, config in enumerate(configs, 1):
        train = dataclasses.asdict(config.train)
        lines.append(f"[{index}/{len(configs)}] {config.label}  pretrained={config.pretrained} "
                     f"device={config.device} epochs={train['epochs']} lr={train['lr']} "
                     f"batch={train['batch_size']}  -> {config.file_stem}.json")
    return lines
