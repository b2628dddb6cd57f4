"""Publishing a suite's report into ``results/<suite>/`` with its provenance, and clearing what an earlier
report or publication wrote."""
from __future__ import annotations

import datetime
import fnmatch
import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import pandas as pd

from ..results import git_state
from ..store import write_json_atomic
from .load import Skipped
from .schema import DEFAULT_ACCURACY, accuracy_choice

if TYPE_CHECKING:
    from .write import SuiteReport

# What one report writes into a suite folder, and of that, what --publish copies into results/<suite>/.
PUBLISHED_FILES = ("leaderboard.csv", "leaderboard.md", "adverse_compression.csv", "adverse_compression.md",
                   "pareto_*.png", "pareto_*.svg", "paper_*.csv", "paper_*.md")
REPORT_FILES = PUBLISHED_FILES + ("compare_*.csv", "compare_*.md", "baseline_diff.csv", "baseline_diff.md",
                                  "provenance.json")
RESULTS_ENV = "ADAPTBENCH_RESULTS"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def clear_report_files(folder: Path) -> None:
    """Remove what an earlier report or publication wrote here, so no stale plot of a device that is gone
    survives; other files (notes, a README) stay."""
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file() and any(fnmatch.fnmatch(path.name, pattern) for pattern in REPORT_FILES):
                path.unlink()


def results_root() -> Path:
    """Where ``--publish`` writes: the repository's ``results/``, or ``$ADAPTBENCH_RESULTS`` (tests use it)."""
    return Path(os.environ.get(RESULTS_ENV) or _REPO_ROOT / "results")


def provenance(runs: pd.DataFrame, skipped: Iterable[Skipped], command: str,
               accuracy: str = DEFAULT_ACCURACY) -> dict:
    """Everything needed to trace a published result back: the report command, which per-run accuracy it
    reports (``--accuracy``: its name, the run metric and what it means), every run's config hash, the
    environments they ran in (runs with the same environment, apart from the date, grouped), what was skipped,
    and the state of this checkout."""
    choice = accuracy_choice(accuracy)
    environments: dict[str, dict] = {}
    env_columns = [column for column in runs.columns if column.startswith("env_") and column != "env_date"]
    for _, row in runs.iterrows():
        environment = {column[4:]: _json_value(row[column]) for column in env_columns}
        entry = environments.setdefault(json.dumps(environment, sort_keys=True, default=str),
                                        {"environment": environment, "runs": [], "dates": []})
        entry["runs"].append(row["key"])
        if "env_date" in row and isinstance(row["env_date"], str):
            entry["dates"].append(row["env_date"])
    for entry in environments.values():
        dates = sorted(entry.pop("dates"))
        entry["first_date"], entry["last_date"] = (dates[0], dates[-1]) if dates else (None, None)
    return {
        "command": command,
        "accuracy": {"choice": choice.name, "metric": choice.column, "description": choice.description},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "runs": [{"key": row["key"], "method": row["method"], "compression": row["compression"],
                  "task": row["task"], "seed": _json_value(row["seed"]), "backbone": row["backbone"],
                  "device_name": row["device_name"], "file": Path(row["file"]).name}
                 for _, row in runs.iterrows()],
        "environments": list(environments.values()),
        "skipped": [{"path": item.path, "reason": item.reason} for item in skipped],
    }


def _json_value(value: object) -> object:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def publish(report: SuiteReport, provenance_record: dict, root: Path | None = None) -> Path:
    """Copy the suite's leaderboard, plots and Adverse Compression table into ``<root>/<suite>/`` (replacing
    what an earlier publication wrote there) with ``provenance.json``."""
    target = (root or results_root()) / report.suite
    target.mkdir(parents=True, exist_ok=True)
    clear_report_files(target)
    for path in report.written:
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in PUBLISHED_FILES):
            shutil.copy2(path, target / path.name)
    write_json_atomic(target / "provenance.json", provenance_record)
    return target
