"""Run files -> a tidy frame of finished runs, plus what was skipped and why.

Every record describes its own method (``method_info``: role, display order) and task (``task_info``: suite,
group), so loading needs no plugin registry: a record of a task or method this checkout has never heard of is
reported like any other.
"""
from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..results import flatten
from ..store import STATUS_FAILED, STATUS_OK, STATUS_RUNNING, run_files
from .schema import DEFAULT_ACCURACY, ROW_KEY, accuracy_choice

REQUIRED_CONFIG = ("method", "task", "backbone", "seed", "compression")
MIN_SCHEMA = 2  # the first record version that describes its method and task
NUMERIC = ("test_acc_best", "test_acc_last", "test_acc_at_best_val", "val_acc_best", "infer_img_per_s", "gmacs",
           "tunable_params", "tunable_pct", "total_params", "train_peak_mem_mb", "infer_peak_mem_mb",
           "matched_throughput_ratio", "method_order")


@dataclass(frozen=True)
class Skipped:
    """A file or folder the report did not use, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def read_run(path: Path, accuracy: str = DEFAULT_ACCURACY) -> tuple[dict | None, str | None]:
    """The record of one finished run, or ``(None, reason)`` when it cannot be used; a finished run must have a
    number for the report's ``accuracy`` (:data:`~.schema.ACCURACIES`)."""
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at line {exc.lineno})"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({exc})"
    if not isinstance(record, dict) or not {"key", "config", "status"} <= set(record):
        return None, "not a run record (no key, config and status)"
    config = record["config"]
    missing = [name for name in REQUIRED_CONFIG if not isinstance(config, dict) or name not in config]
    if missing:
        return None, f"not a run record (config lacks {', '.join(missing)})"
    if not all(isinstance(config[name], str) for name in ("method", "task", "backbone")):
        return None, "not a run record (config's method, task and backbone are not all names)"
    status = record["status"]
    if status == STATUS_RUNNING:
        return None, "still running (or its process was killed before it finished)"
    if status == STATUS_FAILED:
        return None, f"failed: {_shorten(str(record.get('reason') or 'no reason recorded'))}"
    if status != STATUS_OK:
        return None, f"unknown status '{status}'"
    choice = accuracy_choice(accuracy)
    value = (record.get("metrics") or {}).get(choice.column)
    if value is None and choice.missing:
        return None, choice.missing
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None, f"status ok but no numeric metrics.{choice.column}"
    problem = _schema_problem(record, path)
    return (None, problem) if problem else (record, None)


def _schema_problem(record: dict, path: Path) -> str | None:
    """Why a record cannot say what its method and task are, or None when it can."""
    schema = record.get("schema", 1)
    if not isinstance(schema, int) or isinstance(schema, bool):
        return f"not a run record (schema {schema!r} is not a version number)"
    if schema < MIN_SCHEMA:
        return (f"written by an older adaptbench (schema {schema}); upgrade it once with: "
                f"python run.py migrate {shlex.quote(str(path.parent))}")
    method_info, task_info = record.get("method_info"), record.get("task_info")
    if not isinstance(method_info, dict) or not isinstance(task_info, dict):
        return f"not a run record (schema {schema} but no method_info and task_info)"
    if not isinstance(task_info.get("suite"), str) or not task_info["suite"]:
        return "not a run record (task_info names no suite)"
    return None


def _shorten(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _folder_files(folder: Path) -> tuple[list[Path], str | None]:
    if not folder.exists():
        return [], "folder not found"
    if not folder.is_dir():
        return [], "not a folder"
    files = run_files(folder)  # *.json only: results.csv is an aggregate, not a run
    return files, None if files else "no run files (*.json) in it"


def load_runs(folders: Sequence[Path], accuracy: str = DEFAULT_ACCURACY) -> tuple[pd.DataFrame, list[Skipped]]:
    """Finished runs of every folder as a tidy frame (one row per run, :func:`harness.results.flatten`'s columns,
    among them the recorded ``suite``, ``group``, ``method_role`` and ``method_order``, plus ``file`` and
    ``device_name``), and what was skipped. A run without a number for ``accuracy`` (the report's choice, see
    :data:`~.schema.ACCURACIES`) is skipped, with the reason.

    One config counts once per device: a second file with the same config key and device name (a folder passed
    twice, a copied file) is skipped, since seeds, not repeated files, are what the leaderboard averages over.
    """
    rows, skipped, seen = [], [], {}
    for folder in folders:
        files, problem = _folder_files(Path(folder))
        if problem:
            skipped.append(Skipped(str(folder), problem))
        for path in files:
            record, reason = read_run(path, accuracy)
            if record is not None:
                row = _tidy_row(record, path)
                identity = (row["key"], row["device_name"])
                if identity in seen:
                    reason = f"the same config on the same device as {seen[identity]}"
            if reason:
                skipped.append(Skipped(str(path), reason))
                continue
            seen[identity] = path
            rows.append(row)
    return _typed(pd.DataFrame(rows)), skipped


def _tidy_row(record: dict, path: Path) -> dict:
    row = flatten(record)
    # Mixed machines are allowed; rows are grouped by the device's name, which CPU runs record as the CPU model.
    device_name = record.get("environment", {}).get("device_name") or row["device"]
    # A randomly initialised backbone is another model: its own rows, speed-up reference and baseline partner.
    backbone = row["backbone"] if row.get("pretrained", True) else f"{row['backbone']} (random init)"
    return {**row, "backbone": backbone, "file": str(path), "device_name": device_name}


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    for column in ("small_backbone", *ROW_KEY, "task", "suite", "group", "method_role", "key", "seed"):
        if column not in frame:
            frame[column] = pd.Series(dtype=object)
    frame["compression"] = frame["compression"].astype(str)
    return frame
