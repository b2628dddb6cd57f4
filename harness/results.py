"""What a run record says beyond its config: the environment it ran in, and its flat (tidy) row.

Where records live and how they are written is :mod:`harness.store`'s business.
"""
from __future__ import annotations

import datetime
import hashlib
import platform
import socket
import subprocess
from pathlib import Path
from typing import Iterable

import timm
import torch

from .registry import _REPO_ROOT
from .train import TrainConfig, later_defaults

# Columns shown in the end-of-run table, in order; the CSV has every column.
TABLE_COLUMNS = {
    "method": "method", "compression": "compr.", "task": "task", "backbone": "backbone", "seed": "seed",
    "status": "status", "test_acc_best": "acc best %", "test_acc_last": "acc last %",
    "infer_img_per_s": "infer img/s", "train_img_per_s": "train img/s", "gmacs": "GMACs",
    "tunable_params": "tunable", "train_peak_mem_mb": "train MiB", "reason": "reason",
}


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state() -> dict:
    """This checkout's commit and whether it has uncommitted changes (None where git is unavailable)."""
    status = _git("status", "--porcelain")
    return {"commit": _git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def environment(device: torch.device, cpu_allocator: str) -> dict:
    """Everything about the machine and software that can change a measurement; ``cpu_allocator`` is what
    :func:`harness.measure.steady_host_allocator` set when the run started."""
    git = git_state()
    cuda = device.type == "cuda"
    return {
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": str(device),  # with its index: cuda:1 is not cuda:0
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model(),
        "device_count": torch.cuda.device_count() if cuda else 1,
        "cpu_model": cpu_model(), "cpu_threads": torch.get_num_threads(),
        "cpu_allocator": cpu_allocator,
        "git_commit": git["commit"], "git_dirty": git["dirty"],
        "host_hash": hashlib.sha1(socket.gethostname().encode()).hexdigest()[:10],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# A run recorded before a training setting existed ran at that setting's default (the ones marked keyed_when_set),
# so its row says so rather than leaving the column empty.
LATER_TRAIN_DEFAULTS = later_defaults(TrainConfig)


def flatten(record: dict) -> dict:
    """One flat row: config fields, train (``train_``), measurement (``measure_``) and data (``data_``) settings,
    what the run recorded of its method (``method_compresses``, ``method_role``, ``method_order``) and task
    (``suite``, ``group``, ``num_classes``, ``<split>_size``, and where its data came from: ``source_folder``,
    ``source_files``, ``source_fingerprint``...), scalar metrics and environment (``env_``)."""
    config = dict(record["config"])
    row = {key: value for key, value in config.items() if not isinstance(value, dict)}
    config["train"] = {**LATER_TRAIN_DEFAULTS, **config.get("train", {})}
    for section in ("train", "measure", "data"):
        row.update({f"{section}_{key}": _cell(value) for key, value in config.get(section, {}).items()})
    row.update({f"method_{key}": value for key, value in record.get("method_info", {}).items()})
    task_info = dict(record.get("task_info", {}))
    row.update({f"{split}_size": size for split, size in task_info.pop("split_sizes", {}).items()})
    row.update({f"source_{key}": _cell(value) for key, value in task_info.pop("data", {}).items()})
    row.update(task_info)
    row.update({"key": record["key"], "status": record["status"], "failure": record.get("failure"),
                "reason": record.get("reason")})
    row.update({key: _cell(value) for key, value in record.get("metrics", {}).items()
                if not _is_curve(value)})  # curves stay in the JSON file
    row.update({f"env_{key}": value for key, value in record.get("environment", {}).items()})
    return row


def _is_curve(value: object) -> bool:
    """A list of per-epoch entries (mappings): the JSON file keeps it, the flat row cannot."""
    return isinstance(value, list) and any(isinstance(entry, dict) for entry in value)


def _cell(value: object) -> object:
    """A flat cell: lists joined by commas, mappings as ``key:value`` pairs."""
    if isinstance(value, dict):
        return ",".join(f"{key}:{item}" for key, item in value.items())
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def summary_table(records: Iterable[dict]) -> str:
    from tabulate import tabulate

    rows = []
    for record in records:
        flat = flatten(record)
        rows.append([_format(flat.get(column)) for column in TABLE_COLUMNS])
    return tabulate(rows, headers=list(TABLE_COLUMNS.values()), tablefmt="github")


def _format(value: object) -> object:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, str) and len(value) > 60:
        return value[:57] + "..."
    return value
