"""Tidy results: one JSON file per run, written atomically, and an aggregate CSV with one flat row per run."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable

import pandas as pd
import timm
import torch

from .measure import steady_host_allocator
from .registry import _REPO_ROOT

RESULTS_CSV = "results.csv"
STATUS_RUNNING, STATUS_OK, STATUS_FAILED = "running", "ok", "failed"
# Columns shown in the end-of-run table, in order; the CSV has every column.
TABLE_COLUMNS = {
    "method": "method", "compression": "compr.", "task": "task", "backbone": "backbone", "seed": "seed",
    "status": "status", "test_acc_best": "acc best %", "test_acc_last": "acc last %",
    "infer_img_per_s": "infer img/s", "train_img_per_s": "train img/s", "gmacs": "GMACs",
    "tunable_params": "tunable", "train_peak_mem_mb": "train MiB", "reason": "reason",
}


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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


def environment(device: torch.device) -> dict:
    """Everything about the machine and software that can change a measurement."""
    git = git_state()
    cuda = device.type == "cuda"
    return {
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model(),
        "device_count": torch.cuda.device_count() if cuda else 1,
        "cpu_model": cpu_model(), "cpu_threads": torch.get_num_threads(),
        "cpu_allocator": steady_host_allocator(),  # applied here too, so the whole run has it
        "git_commit": git["commit"], "git_dirty": git["dirty"],
        "host_hash": hashlib.sha1(socket.gethostname().encode()).hexdigest()[:10],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def run_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("*.json"))


def flatten(record: dict) -> dict:
    """One flat row: config fields, train (``train_``) and measurement (``measure_``) settings, scalar metrics
    and environment (``env_``)."""
    config = dict(record["config"])
    row = {key: value for key, value in config.items() if not isinstance(value, dict)}
    for section in ("train", "measure"):
        row.update({f"{section}_{key}": ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
                    for key, value in config.get(section, {}).items()})
    row.update({"key": record["key"], "status": record["status"], "reason": record.get("reason")})
    row.update({key: value for key, value in record.get("metrics", {}).items()
                if not isinstance(value, (list, dict))})  # curves stay in the JSON file
    row.update({f"env_{key}": value for key, value in record.get("environment", {}).items()})
    return row


def load_records(out_dir: Path) -> list[dict]:
    records = []
    for path in run_files(out_dir):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # a foreign or damaged file never blocks the aggregate; `report` lists such files
    return records


def write_csv(out_dir: Path, records: Iterable[dict]) -> Path:
    """The aggregate CSV (one row per run), replaced atomically."""
    frame = pd.DataFrame([flatten(record) for record in records])
    path = out_dir / RESULTS_CSV
    descriptor, temporary = tempfile.mkstemp(dir=out_dir, prefix=f".{RESULTS_CSV}.", suffix=".tmp")
    os.close(descriptor)
    try:
        frame.to_csv(temporary, index=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


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
