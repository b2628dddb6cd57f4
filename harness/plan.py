"""Planning: from the command line's choices to the list of fully resolved run configs, before anything runs."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Sequence

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from . import presets, registry
from .adapt import adapt
from .backbones import known_backbone_named, pretrained_cfg, smaller_in_family
from .config import DataConfig, RunConfig
from .data import TaskData, check_task, content_identity
from .errors import BadOption, UserError, one_line
from .vocabulary import NONE, SMALL_MODEL_BASELINE
from .measure import MeasureConfig
from .preflight import preflight
from .train import TrainConfig, check_distilled


UNAVAILABLE = "unavailable"  # the backbone of a broken task's failed runs when neither it nor --backbone names one


def default_compression() -> tuple[str, ...]:
    """What compressing methods run at unless ``--compression`` says otherwise (``defaults.toml``)."""
    return tuple(presets.load("defaults")["compression"])


def resolve_device(name: str, cuda: bool | None = None) -> torch.device:
    """The device ``--device`` names, where ``cuda`` says whether the machine that runs it has CUDA (default:
    this one; for Slurm jobs, whether they get GPUs)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if name == "auto":
        return torch.device("cuda" if cuda else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"invalid --device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not cuda:
        raise UserError(f"--device {name} asked for, but no CUDA device is available; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported --device '{name}'; use auto, cpu, cuda or cuda:N")
    return device


def load_tasks(names: Sequence[str], data_root: Path | None, check_images: bool = False,
               selection: str = "test") -> dict[str, TaskData]:
    """Build (or read from cache) every task's data and check what runs with ``selection`` will read, before any
    run starts.

    A task whose data cannot be had or is bad keeps its ``problem`` (one line naming the file), so its runs are
    recorded as failed with that reason while the other tasks run.
    """
    tasks = {}
    for name in names:
        spec = registry.get_task(name)
        try:
            task = spec.fn(data_root)
        except BadOption:
            raise
        except UserError as exc:
            task = TaskData.unavailable(str(exc))
        except Exception as exc:  # a task plugin's bug: its runs fail with it, the other tasks go on
            task = TaskData.unavailable(f"task '{name}' raised {one_line(exc)} while loading its data; fix the task "
                                        f"plugin ({spec.source})")
        if not isinstance(task, TaskData):
            task = TaskData.unavailable(f"task '{name}' returned {type(task).__name__}, not a harness.TaskData; fix "
                                        f"the task plugin ({spec.source})")
        if task.problem is None:
            task.problem = check_task(task, check_images, selection)
        if not task.identity:
            task.identity = content_identity(task)
        tasks[name] = task
    return tasks


NORMALIZATIONS = ("backbone", "imagenet")


def data_config(task: TaskData, backbone: str, img_size: int | None, normalization: str,
                selection: str = "test") -> DataConfig:
    """Size, filter and normalisation of a task's images for ``backbone``.

    Size: ``img_size`` if given, else the task's own (images in memory), else the backbone's pretrained input size
    (images on disk), so ViT-B/16 gets 224 and a micro ViT 32. Normalisation: the task's own mean/std where it
    declares them; else ``backbone`` (its timm ``pretrained_cfg``) or ``imagenet``. PYRA normalises
    ``orig_in21k`` weights with ImageNet's mean/std although timm declares 0.5 for them: ``imagenet`` follows it.
    The fingerprint is of what a run with ``selection`` reads. A broken task's failed runs get the settings its
    repaired runs will have (where the backbone is known), so a rerun replaces their files.
    """
    cfg = pretrained_cfg(backbone) if backbone != UNAVAILABLE else None
    cfg = cfg.to_dict() if cfg is not None else {}
    size = img_size or task.image_size or cfg.get("input_size", (3, 224, 224))[-1]
    if task.mean is not None and task.std is not None:
        source, mean, std = "task", task.mean, task.std
    elif normalization == "backbone" and cfg.get("mean") and cfg.get("std"):
        source, mean, std = "backbone", cfg["mean"], cfg["std"]
    else:
        source, mean, std = "imagenet", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return DataConfig(task.fingerprint_for(selection), int(size), cfg.get("interpolation") or "bicubic", source,
                      tuple(mean), tuple(std))


def plan_runs(methods: Sequence[str], tasks: dict[str, TaskData], *, seeds: Sequence[int],
              compressions: Sequence[str] | None, backbone: str | None, pretrained: bool | None, device: torch.device,
              train_overrides: dict, measure: MeasureConfig = MeasureConfig(), img_size: int | None = None,
              normalization: str = "backbone", weights: Path | None = None, threads: int = 0) -> list[RunConfig]:
    """The cross product methods x compressions x tasks x seeds, each with every setting resolved.

    ``compressions=None`` runs compressing methods at :func:`default_compression`. Every (method, level,
    backbone) is adapted once on a meta-device model first, so a bad level or option stops the plan early.
    The config keeps the device's type (a run on ``cuda:1`` is the same experiment as on ``cuda:0``); the
    device itself, index included, goes to the executor and into the record's environment. ``threads`` (0:
    torch's choice) is each run's number of CPU threads.
    """
    specs = [registry.get_method(method) for method in methods]
    if compressions is not None and list(compressions) != [NONE] and not any(spec.compresses for spec in specs):
        raise UserError(f"--compression {','.join(compressions)} was asked for, but none of "
                        f"{', '.join(methods)} compresses; add a compressing method (see --list) or drop it")
    backbones = [backbone or task.default_backbone for task in tasks.values() if task.problem is None]
    found = preflight(backbones, pretrained, weights, also=_smaller_models(backbones, specs))
    weights_fields = {"weights": str(weights.resolve()), "weights_sha256": _sha256(weights)} if weights else {}
    configs = []
    for task_name, task in tasks.items():
        task_backbone = backbone or task.default_backbone or UNAVAILABLE
        usable = task.problem is None
        use_pretrained = found[task_backbone] is not None if usable else pretrained is not False
        data = data_config(task, task_backbone, img_size, normalization, train_overrides.get("selection") or "test")
        epochs = train_overrides.get("epochs") or task.default_epochs
        defaults = {"epochs": epochs, "warmup_epochs": round(epochs / 10), "eval_every": max(1, epochs // 10)}
        given = {k: v for k, v in train_overrides.items() if v is not None}
        if given.get("warmup_epochs", 0) > epochs:
            raise UserError(f"--warmup-epochs {given.get('warmup_epochs')} exceeds --epochs {epochs}")
        for spec in specs:
            lr = (task.default_lr or {}).get(spec.trains)
            train = TrainConfig(**{**defaults, **({"lr": lr} if lr else {}), **given})
            levels = list(compressions or default_compression()) if spec.compresses else [NONE]
            for level in levels:
                if usable:
                    _check_adapts(spec.name, level, task_backbone, data.img_size, task.num_classes, train)
                for seed in seeds:
                    configs.append(RunConfig(spec.name, task_name, task_backbone, seed, level, use_pretrained,
                                             device.type, train, measure, data, **weights_fields,
                                             threads=threads))
    return configs


def _smaller_models(backbones: Sequence[str], specs: Sequence) -> list[str]:
    """The backbones a small-model baseline may create besides the planned ones: the smaller members of each
    planned backbone's family."""
    if not any(spec.role == SMALL_MODEL_BASELINE for spec in specs):
        return []
    known = [info for name in dict.fromkeys(backbones) if (info := known_backbone_named(name)) is not None]
    return [smaller.name for info in known for smaller in smaller_in_family(info)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_adapts(method: str, compression: str, backbone: str, img_size: int, num_classes: int,
                  train: TrainConfig) -> None:
    """Adapt a weightless (meta-device) model: bad compression levels or options fail before any run, and so
    does a training setting the adapted model cannot take (``distilled_loss`` without a distillation head).

    A method's own :class:`UserError` is its message for bad input and passes as it is; anything else it raises
    is a bug in the method, stopped here as bad input naming the file that registered it, before any run.
    """
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False, num_classes=num_classes, img_size=img_size)
        try:
            adapted = adapt(model, method, compression)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"method '{method}' (plugin {registry.get_method(method).source}) failed while adapting "
                            f"{backbone} at level {compression}: {one_line(exc)}; fix the plugin or drop it from "
                            f"--methods") from exc
    if train.distilled_loss == "class_head":
        check_distilled(adapted, backbone)


def describe_plan(configs: Sequence[RunConfig], seconds: dict[str, float] | None = None,
                  states: dict[str, tuple[str, str]] | None = None) -> list[str]:
    """One line per run; with ``seconds`` (estimates by config key), each run's estimate too, and with
    ``states`` (by key: state and detail, :mod:`harness.status`) where it stands."""
    lines = []
    for index, config in enumerate(configs, 1):
        train = dataclasses.asdict(config.train)
        cost = f"  ~{seconds[config.key]:.0f} s" if seconds and config.key in seconds else ""
        state, detail = (states or {}).get(config.key, ("", ""))
        where = f"  [{state}{f': {detail}' if detail else ''}]" if state else ""
        lines.append(f"[{index}/{len(configs)}] {config.label}  pretrained={config.pretrained} "
                     f"device={config.device} img={config.data.img_size} epochs={train['epochs']} lr={train['lr']} "
                     f"batch={train['batch_size']} schedule={train['lr_schedule']}{cost}  -> {config.file_stem}.json"
                     f"{where}")
    return lines
