"""The analysis report: a pure function of the run files.

Run records (one JSON per run, see :mod:`harness.results`) from any number of folders become a tidy frame of
finished runs plus a list of skipped files with reasons; from that frame come the leaderboard (one row per
device, backbone, method and compression level), the Adverse Compression table, ``--compare`` tables,
``--baseline`` differences, Pareto plots and the provenance of a published result.
"""
from __future__ import annotations

import datetime
import fnmatch
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import registry, stats
from .errors import UserError
from .registry import _REPO_ROOT, VTAB_GROUPS
from .results import STATUS_FAILED, STATUS_OK, STATUS_RUNNING, flatten, git_state, run_files, write_json_atomic

ROW_KEY = ["device_name", "backbone", "method", "compression"]
SMALL_PEFT = "small_peft"
SPEEDUP_REFERENCES = ("lora", "full_ft")  # in order of preference; then any other uncompressed method
METHOD_ORDER = ("full_ft", "lora", "tome", "pyra", "diffrate", SMALL_PEFT)
LEVEL_ORDER = ("none", "low", "high")
REQUIRED_CONFIG = ("method", "task", "backbone", "seed", "compression")
NUMERIC = ("test_acc_best", "test_acc_last", "infer_img_per_s", "gmacs", "tunable_params", "tunable_pct",
           "total_params", "train_peak_mem_mb", "infer_peak_mem_mb", "matched_throughput_ratio")
PPT_PARAMS_SCALE = 1e7  # V-PETL Bench's normalising constant C
PARETO_METRICS = {  # name: (column, higher is better)
    "throughput": ("infer_img_per_s", True),
    "gmacs": ("gmacs", False),
    "memory": ("train_peak_mem_mb", False),
}
BASELINE_METRICS = ("acc_mean_tasks", "acc_mean_groups", "infer_img_per_s", "gmacs")
# What one report writes into a suite folder, and of that, what --publish copies into results/<suite>/.
PUBLISHED_FILES = ("leaderboard.csv", "leaderboard.md", "adverse_compression.csv", "adverse_compression.md",
                   "pareto_*.png", "pareto_*.svg")
REPORT_FILES = PUBLISHED_FILES + ("compare_*.csv", "compare_*.md", "baseline_diff.csv", "baseline_diff.md",
                                  "provenance.json")
RESULTS_ENV = "ADAPTBENCH_RESULTS"
ADVERSE_LABELS = {stats.WORSE: "adverse", stats.BETTER: "compression wins", stats.EQUIVALENT: "equivalent",
                  stats.INCONCLUSIVE: "inconclusive"}
MAX_MARKDOWN_TASKS = 8  # leaderboard.md shows per-task accuracies up to this many tasks; the CSV always does
ADVERSE_COLUMNS = ["device_name", "backbone", "method", "compression", "small_backbone", "matched_throughput_ratio",
                   "n", "pairing", "mean_diff", "ci_low", "ci_high", "wilcoxon_p", "verdict", "note"]
COMPARE_COLUMNS = ["device_name", "backbone", "a", "b", "n", "pairing", "mean_diff", "ci_low", "ci_high",
                   "wilcoxon_p", "verdict", "note"]


@dataclass(frozen=True)
class Skipped:
    """A file or folder the report did not use, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# ---------------------------------------------------------------------------------------------------- loading

def read_run(path: Path, task_info: Mapping[str, tuple[str, str]]) -> tuple[dict | None, str | None]:
    """The record of one finished run, or ``(None, reason)`` when it cannot be used."""
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
    accuracy = (record.get("metrics") or {}).get("test_acc_best")
    if not isinstance(accuracy, (int, float)) or isinstance(accuracy, bool) or not math.isfinite(accuracy):
        return None, "status ok but no numeric metrics.test_acc_best"
    if config["task"] not in task_info:
        return None, f"task '{config['task']}' is not registered (load its plugin with --plugins FILE)"
    return record, None


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


def registered_tasks() -> dict[str, tuple[str, str]]:
    """(suite, group) of every task the registry knows, plugins loaded so far included."""
    return {name: (spec.suite, spec.group) for name, spec in registry.tasks().items()}


def load_runs(folders: Sequence[Path],
              task_info: Mapping[str, tuple[str, str]] | None = None) -> tuple[pd.DataFrame, list[Skipped]]:
    """Finished runs of every folder as a tidy frame (one row per run, :func:`harness.results.flatten`'s columns
    plus ``file``, ``device_name``, ``suite`` and ``group``), and what was skipped.

    ``task_info`` maps task names to (suite, group) (default: :func:`registered_tasks`). One config counts once per
    device: a second file with the same config key and device name (a folder passed twice, a copied file) is
    skipped, since seeds, not repeated files, are what the leaderboard averages over.
    """
    task_info = registered_tasks() if task_info is None else task_info
    rows, skipped, seen = [], [], {}
    for folder in folders:
        files, problem = _folder_files(Path(folder))
        if problem:
            skipped.append(Skipped(str(folder), problem))
        for path in files:
            record, reason = read_run(path, task_info)
            if record is not None:
                row = _tidy_row(record, path, task_info)
                identity = (row["key"], row["device_name"])
                if identity in seen:
                    reason = f"the same config on the same device as {seen[identity]}"
            if reason:
                skipped.append(Skipped(str(path), reason))
                continue
            seen[identity] = path
            rows.append(row)
    return _typed(pd.DataFrame(rows)), skipped


def _tidy_row(record: dict, path: Path, task_info: Mapping[str, tuple[str, str]]) -> dict:
    row = flatten(record)
    suite, group = task_info[row["task"]]
    # Mixed machines are allowed; rows are grouped by the device's name, which CPU runs record as the CPU model.
    device_name = record.get("environment", {}).get("device_name") or row["device"]
    # A randomly initialised backbone is another model: its own rows, speed-up reference and small_peft partner.
    backbone = row["backbone"] if row.get("pretrained", True) else f"{row['backbone']} (random init)"
    return {**row, "backbone": backbone, "file": str(path), "device_name": device_name, "suite": suite,
            "group": group}


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    for column in ("small_backbone", *ROW_KEY, "task", "suite", "group", "key", "seed"):
        if column not in frame:
            frame[column] = pd.Series(dtype=object)
    frame["compression"] = frame["compression"].astype(str)
    return frame


# ------------------------------------------------------------------------------------------------ leaderboard

def method_rank(name: str) -> tuple[int, str]:
    """Built-in methods in the README's order, then the others alphabetically."""
    return (METHOD_ORDER.index(name), "") if name in METHOD_ORDER else (len(METHOD_ORDER), name)


def level_rank(level: str) -> tuple[int, str]:
    return (LEVEL_ORDER.index(level), "") if level in LEVEL_ORDER else (len(LEVEL_ORDER), level)


def sort_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Device, backbone, then methods and levels in their natural order (not alphabetical)."""
    if frame.empty:
        return frame.reset_index(drop=True)
    order = sorted(frame.index, key=lambda i: (str(frame.at[i, "device_name"]), str(frame.at[i, "backbone"]),
                                               method_rank(frame.at[i, "method"]),
                                               level_rank(frame.at[i, "compression"])))
    return frame.loc[order].reset_index(drop=True)


def ordered_tasks(runs: pd.DataFrame) -> list[str]:
    """Tasks grouped as VTAB groups them (natural, specialized, structured), by name within a group."""
    groups = runs.drop_duplicates("task").set_index("task")["group"]
    return sorted(groups.index, key=lambda task: (VTAB_GROUPS.index(groups[task]), task))


def ppt(accuracy_pct: pd.Series | float, tunable_params: pd.Series | float) -> pd.Series | float:
    """V-PETL Bench's Performance-Parameter Trade-off: M x exp(-log10(P / C + 1)), C = 1e7, with M the mean
    accuracy as a fraction (so the score is on V-PETL's 0-1 scale) and P the tunable parameters."""
    return accuracy_pct / 100.0 * np.exp(-np.log10(tunable_params / PPT_PARAMS_SCALE + 1))


def pareto_front(x: Sequence[float], y: Sequence[float], x_higher_better: bool) -> np.ndarray:
    """Which points are on the Pareto frontier of (x, y), y higher being better: no other point is at least as
    good on both axes and better on one. Identical points are all on it (neither beats the other); points
    with a NaN coordinate never are."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    gain = x if x_higher_better else -x
    valid = ~(np.isnan(x) | np.isnan(y))
    on_front = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(valid):
        dominates = valid & (gain >= gain[i]) & (y >= y[i]) & ((gain > gain[i]) | (y > y[i]))
        on_front[i] = not dominates.any()
    return on_front


def leaderboard(runs: pd.DataFrame) -> pd.DataFrame:
    """One suite's runs, one row per (device name, backbone, method, compression).

    Per task: ``acc_<task>`` (mean of ``test_acc_best`` over seeds) and ``acc_<task>_std`` (ddof=1, NaN with
    one seed). ``acc_<group>`` is the mean of that VTAB group's task means, ``acc_mean_tasks`` the mean of all
    task means and ``acc_mean_groups`` the mean of the group means. The expected tasks are every task of the
    suite that any run covers: a row lacking one of them gets NaN for every average that would include it, so
    no row's average is over an easier subset than another's.
    """
    tasks = ordered_tasks(runs)
    by_task = runs.groupby(ROW_KEY + ["task"])["test_acc_best"]
    means = by_task.mean().unstack("task").reindex(columns=tasks)
    stds = by_task.std(ddof=1).unstack("task").reindex(columns=tasks)
    board = pd.DataFrame(index=means.index)
    for task in tasks:
        board[f"acc_{task}"], board[f"acc_{task}_std"] = means[task], stds[task]
    group_of = runs.drop_duplicates("task").set_index("task")["group"]
    group_columns = []
    for group in VTAB_GROUPS:
        members = [task for task in tasks if group_of[task] == group]
        if members:
            group_columns.append(f"acc_{group}")
            board[group_columns[-1]] = means[members].mean(axis=1, skipna=False)
    board["acc_mean_tasks"] = means.mean(axis=1, skipna=False)
    board["acc_mean_groups"] = board[group_columns].mean(axis=1, skipna=False)
    per_row = runs.groupby(ROW_KEY)
    board["seeds"] = by_task.count().unstack("task").min(axis=1).astype(int)  # the fewest any of its tasks has
    board["tasks"] = means.notna().sum(axis=1)
    board["runs"] = per_row.size()
    board["infer_img_per_s"] = per_row["infer_img_per_s"].median()  # the median resists one noisy machine
    # Runs of one row are measured minutes apart, so this spread holds the machine's drift between them too.
    rates = per_row["infer_img_per_s"]
    board["infer_img_per_s_iqr_over_runs"] = (rates.quantile(0.75) - rates.quantile(0.25)).where(rates.count() > 1)
    for column in ("gmacs", "tunable_params", "tunable_pct", "train_peak_mem_mb", "infer_peak_mem_mb",
                   "matched_throughput_ratio"):
        board[column] = per_row[column].mean()
    board["small_backbone"] = per_row["small_backbone"].agg(_distinct)
    board = board.reset_index()
    board.insert(0, "suite", runs["suite"].iloc[0])
    board["ppt"] = ppt(board["acc_mean_tasks"], board["tunable_params"])
    board = _with_speedup(board)
    for name, (column, higher) in PARETO_METRICS.items():
        board[f"pareto_{name}"] = _per_device_front(board, column, higher)
    return sort_rows(board)


def _distinct(values: pd.Series) -> str | float:
    """The distinct non-empty values joined by commas (throughput matching may pick different small
    backbones on different runs), or NaN."""
    found = sorted({str(value) for value in values.dropna() if str(value)})
    return ",".join(found) if found else np.nan


def speedup_reference(rows: pd.DataFrame) -> str | None:
    """The uncompressed row that ``speedup`` divides by, among one device's and backbone's rows: ``lora``,
    else ``full_ft``, else the first other uncompressed method by name. ``small_peft`` never is: uncompressed,
    it runs a smaller backbone than the one the row names."""
    candidates = rows[(rows["compression"] == "none") & (rows["method"] != SMALL_PEFT)
                      & rows["infer_img_per_s"].notna()]
    names = set(candidates["method"])
    preferred = [name for name in SPEEDUP_REFERENCES if name in names]
    return preferred[0] if preferred else min(names, default=None)


def _with_speedup(board: pd.DataFrame) -> pd.DataFrame:
    board = board.assign(speedup=np.nan, speedup_reference=None)
    for _, rows in board.groupby(["device_name", "backbone"]):
        reference = speedup_reference(rows)
        if reference is None:
            continue
        base = rows.loc[(rows["method"] == reference) & (rows["compression"] == "none"), "infer_img_per_s"]
        board.loc[rows.index, "speedup"] = rows["infer_img_per_s"] / base.iloc[0]
        board.loc[rows.index, "speedup_reference"] = reference
    return board


def _per_device_front(board: pd.DataFrame, column: str, higher: bool) -> pd.Series:
    """Frontier membership among the rows of each device: throughput and memory of two machines do not
    compete."""
    front = pd.Series(False, index=board.index)
    for _, rows in board.groupby("device_name"):
        front[rows.index] = pareto_front(rows[column], rows["acc_mean_tasks"], higher)
    return front


def row_label(row: Mapping) -> str:
    level = "" if row["compression"] == "none" else f"@{row['compression']}"
    return f"{row['method']}{level} ({row['backbone']}, {row['device_name']})"


def missing_tasks(board: pd.DataFrame) -> dict[str, list[str]]:
    """Rows that lack tasks other rows of the suite have (their averages are NaN), with those tasks."""
    tasks = _task_names(board)
    missing = {}
    for _, row in board.iterrows():
        lacking = [task for task in tasks if pd.isna(row[f"acc_{task}"])]
        if lacking:
            missing[row_label(row)] = lacking
    return missing


def _task_names(board: pd.DataFrame) -> list[str]:
    return [column[4:-4] for column in board.columns if column.startswith("acc_") and column.endswith("_std")]


# ------------------------------------------------------------------------------------------- paired tests

def _result_columns(result: stats.PairedResult, labels: Mapping[str, str]) -> dict:
    return {"n": result.n, "pairing": result.pairing, "mean_diff": result.mean_diff, "ci_low": result.ci_low,
            "ci_high": result.ci_high, "wilcoxon_p": result.p_value, "verdict": labels[result.verdict],
            "note": result.note}


def _select(runs: pd.DataFrame, device: str, backbone: str, method: str, level: str) -> pd.DataFrame:
    return runs[(runs["device_name"] == device) & (runs["backbone"] == backbone) & (runs["method"] == method)
                & (runs["compression"] == level)]


def adverse_compression(runs: pd.DataFrame) -> pd.DataFrame:
    """Every compressed method at every level against ``small_peft`` throughput-matched to that level, on the
    same device and big backbone. Differences are compressed - small_peft, in accuracy points."""
    rows = []
    for (device, backbone, method, level), compressed in runs.groupby(ROW_KEY):
        if method == SMALL_PEFT or level == "none":
            continue
        small = _select(runs, device, backbone, SMALL_PEFT, level)
        row = {"device_name": device, "backbone": backbone, "method": method, "compression": level,
               "small_backbone": _distinct(small["small_backbone"]),
               "matched_throughput_ratio": small["matched_throughput_ratio"].mean()}
        if small.empty:
            row.update(n=0, verdict=f"no {SMALL_PEFT} run",
                       note=f"run {SMALL_PEFT} at compression {level} on this device and backbone")
        else:
            row.update(_result_columns(stats.compare(compressed, small), ADVERSE_LABELS))
        rows.append(row)
    return sort_rows(pd.DataFrame(rows, columns=ADVERSE_COLUMNS))


@dataclass(frozen=True)
class Selector:
    """A method, optionally pinned to one compression level (``tome@high``)."""

    method: str
    level: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Selector":
        method, _, level = text.strip().partition("@")
        if not method:
            raise UserError(f"--compare needs method names, as in tome,small_peft or tome@high,lora; got '{text}'")
        return cls(method, level or None)

    def __str__(self) -> str:
        return self.method if self.level in (None, "none") else f"{self.method}@{self.level}"


def parse_compare(text: str) -> tuple[Selector, Selector]:
    parts = [part for part in text.split(",") if part.strip()]
    if len(parts) != 2:
        raise UserError(f"--compare takes two methods separated by a comma (A,B), not '{text}'")
    return Selector.parse(parts[0]), Selector.parse(parts[1])


def level_pairs(levels_a: Sequence[str], levels_b: Sequence[str]) -> list[tuple[str, str]]:
    """The levels both methods ran, each against itself; if they share none, every level of A against every
    level of B (e.g. ``tome`` at low and high against uncompressed ``lora``)."""
    shared = [level for level in levels_a if level in levels_b]
    if shared:
        return [(level, level) for level in shared]
    return [(a, b) for a in levels_a for b in levels_b]


def compare_methods(runs: pd.DataFrame, a: Selector, b: Selector) -> pd.DataFrame:
    """The paired test of A - B on each device and backbone, at the levels :func:`level_pairs` gives."""
    labels = {stats.WORSE: f"{a.method} worse", stats.BETTER: f"{a.method} better",
              stats.EQUIVALENT: "equivalent", stats.INCONCLUSIVE: "inconclusive"}
    rows = []
    for (device, backbone), group in runs.groupby(["device_name", "backbone"]):
        levels = [_levels(group, selector) for selector in (a, b)]
        for level_a, level_b in level_pairs(*levels):
            result = stats.compare(_select(group, device, backbone, a.method, level_a),
                                   _select(group, device, backbone, b.method, level_b))
            rows.append({"device_name": device, "backbone": backbone, "a": str(Selector(a.method, level_a)),
                         "b": str(Selector(b.method, level_b)), **_result_columns(result, labels)})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def _levels(runs: pd.DataFrame, selector: Selector) -> list[str]:
    found = set(runs.loc[runs["method"] == selector.method, "compression"])
    wanted = found if selector.level is None else found & {selector.level}
    return sorted(wanted, key=level_rank)


# ------------------------------------------------------------------------------------------------- baseline

def baseline_diff(new: pd.DataFrame, old: pd.DataFrame) -> pd.DataFrame:
    """The new leaderboard against an old leaderboard CSV, matched on the row key: for each of
    :data:`BASELINE_METRICS` the old value, the new one and new - old; ``change`` says ``added`` (new only),
    ``removed`` (old only) or ``both``. An old CSV with a ``suite`` column is compared on this suite's rows."""
    absent = [column for column in ROW_KEY if column not in old]
    if absent:
        raise UserError(f"the --baseline file is not a leaderboard CSV: it has no {', '.join(absent)} column; "
                        f"pass a leaderboard.csv written by `run.py report`")
    if "suite" in old and "suite" in new and not new.empty:
        old = old[old["suite"].astype(str) == str(new["suite"].iloc[0])]
    sides = []
    for frame, suffix in ((new, "_new"), (old, "_old")):
        side = frame[ROW_KEY].astype(str)
        for metric in BASELINE_METRICS:
            side[metric + suffix] = pd.to_numeric(frame[metric], errors="coerce") if metric in frame else np.nan
        sides.append(side)
    merged = sides[0].merge(sides[1], on=ROW_KEY, how="outer", indicator="change")
    merged["change"] = merged["change"].map({"both": "both", "left_only": "added", "right_only": "removed"})
    columns = [*ROW_KEY, "change"]
    for metric in BASELINE_METRICS:
        merged[metric + "_delta"] = merged[metric + "_new"] - merged[metric + "_old"]
        columns += [metric + "_old", metric + "_new", metric + "_delta"]
    return sort_rows(merged[columns])


def baseline_summary(diff: pd.DataFrame, name: str) -> str:
    both = diff[diff["change"] == "both"]
    counts = diff["change"].value_counts()
    parts = [f"{len(both)} row(s) in both"]
    for metric in ("acc_mean_tasks", "infer_img_per_s"):
        deltas = both[metric + "_delta"].dropna()
        if not deltas.empty:
            largest = deltas.abs().idxmax()
            parts.append(f"{metric} mean change {deltas.mean():+.3g}, largest {deltas[largest]:+.3g} "
                         f"({row_label(both.loc[largest])})")
    parts.append(f"{counts.get('added', 0)} added, {counts.get('removed', 0)} removed")
    return f"against {name}: " + "; ".join(parts)


# --------------------------------------------------------------------------------------------------- tables

def _number(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    if isinstance(value, (float, np.floating)):
        return f"{value:,.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"
    return str(value)


def _count(value: float) -> str:
    if pd.isna(value):
        return "–"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.0f}"


def _p_value(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.2g}"


def _fixed(digits: int, suffix: str = "") -> Callable[[float], str]:
    return lambda value: "–" if pd.isna(value) else f"{value:.{digits}f}{suffix}"


# Leaderboard columns for Markdown and the console: (column, header, format, higher is better or None).
_ACC = _fixed(2)
_BOARD_COLUMNS = [
    ("seeds", "seeds", _number, None),
    ("acc_natural", "natural", _ACC, True), ("acc_specialized", "specialized", _ACC, True),
    ("acc_structured", "structured", _ACC, True),
    ("acc_mean_tasks", "mean (tasks)", _ACC, True), ("acc_mean_groups", "mean (groups)", _ACC, True),
    ("infer_img_per_s", "img/s (IQR)", _number, True), ("speedup", "speedup", _fixed(2, "x"), True),
    ("gmacs", "GMACs", lambda value: _number(value, 4), False),
    ("tunable_params", "tunable", _count, False), ("train_peak_mem_mb", "train MiB", _fixed(1), False),
    ("ppt", "PPT", _fixed(3), True),
]
_KEY_HEADERS = {"device_name": "device", "backbone": "backbone", "method": "method", "compression": "compression",
                "small_backbone": "small backbone"}


def _best_mask(values: pd.Series, higher: bool | None) -> pd.Series:
    if higher is None or values.isna().all():
        return pd.Series(False, index=values.index)
    best = values.max() if higher else values.min()
    return values == best


def leaderboard_markdown(board: pd.DataFrame) -> str:
    """GitHub Markdown of the main columns; the best value of each column on each device is bold (higher is
    better for accuracies, throughput, speed-up and PPT, lower for GMACs, memory and tunable parameters)."""
    from tabulate import tabulate

    tasks = _task_names(board)
    task_columns = [(f"acc_{task}", task, None, True) for task in tasks] if len(tasks) <= MAX_MARKDOWN_TASKS else []
    columns = [column for column in task_columns + _BOARD_COLUMNS if column[0] in board]
    keys = [key for key in _KEY_HEADERS if key != "small_backbone" or board[key].notna().any()]
    cells = board[keys].fillna("–").astype(str)
    for column, _, formatter, higher in columns:
        text = _with_iqr(board, column, formatter) if formatter else _with_std(board, column)
        best = pd.concat([_best_mask(rows[column], higher) for _, rows in board.groupby("device_name")])
        cells[column] = [f"**{t}**" if is_best else t for t, is_best in zip(text, best.reindex(board.index))]
    headers = [_KEY_HEADERS[key] for key in keys] + [header for _, header, _, _ in columns]
    title = (f"# Leaderboard: {board['suite'].iloc[0]} suite\n\nTop-1 test accuracy (%, best evaluation of each "
             f"run), mean ± std over seeds; group and overall means as defined in the README (\"Analysis and "
             f"publishing\"). Throughput: median over the row's runs, in brackets their interquartile range as % "
             f"of it (the runs were measured at different times, so it holds the machine's drift too). Bold: the "
             f"best value of each column on each device.\n\n")
    return title + tabulate(cells.values.tolist(), headers=headers, tablefmt="github", disable_numparse=True) + "\n"


def _with_std(board: pd.DataFrame, column: str) -> list[str]:
    """``mean ± std`` when there are several seeds; the bold marker goes round the whole cell."""
    stds = board[column + "_std"]
    return [_ACC(mean) + ("" if pd.isna(std) else f" ± {std:.2f}") for mean, std in zip(board[column], stds)]


def _with_iqr(board: pd.DataFrame, column: str, formatter: Callable[[object], str]) -> list[str]:
    """Formatted values; where the board has ``<column>_iqr_over_runs``, that spread follows as % of the value."""
    spread = board.get(f"{column}_iqr_over_runs")
    if spread is None:
        return list(board[column].map(formatter))
    return [formatter(value) + ("" if pd.isna(iqr) or not value else f" ({100 * iqr / value:.0f} %)")
            for value, iqr in zip(board[column], spread)]


def console_leaderboard(board: pd.DataFrame) -> str:
    """A compact text table per device and backbone, for the terminal."""
    from tabulate import tabulate

    columns = [column for column in _BOARD_COLUMNS if column[0] in board]
    blocks = []
    for (device, backbone), rows in board.groupby(["device_name", "backbone"], sort=False):
        cells = [_with_iqr(rows, column, formatter) for column, _, formatter, _ in columns]
        table = [[method, compression, *row_cells]
                 for method, compression, *row_cells in zip(rows["method"], rows["compression"], *cells)]
        headers = ["method", "compr."] + [header for _, header, _, _ in columns]
        blocks.append(f"{backbone} on {device}:\n"
                      + tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True))
    return "\n\n".join(blocks)


def table_markdown(table: pd.DataFrame) -> str:
    """Markdown of an Adverse Compression, ``--compare`` or baseline table: differences to two decimals,
    p-values to four, other numbers to three significant digits."""
    from tabulate import tabulate

    def cell(column: str, value: object) -> str:
        if column == "wilcoxon_p":
            return _p_value(value)
        if column in ("mean_diff", "ci_low", "ci_high") or column.startswith("acc_"):
            return _fixed(2)(value)
        return _number(value) if isinstance(value, (int, float, np.number)) else _plain(value)

    cells = [[cell(column, row[column]) for column in table.columns] for _, row in table.iterrows()]
    return tabulate(cells, headers=list(table.columns), tablefmt="github", disable_numparse=True) + "\n"


def _plain(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def verdict_lines(table: pd.DataFrame) -> str:
    """An Adverse Compression or ``--compare`` table as aligned console lines: who, mean difference, CI, p,
    pairs, verdict."""
    from tabulate import tabulate

    lines = []
    for _, row in table.iterrows():
        who = f"{row['a']} - {row['b']}" if "a" in table else f"{row['method']}@{row['compression']} - {SMALL_PEFT}"
        figures = (["–"] * 3 if pd.isna(row["mean_diff"]) else
                   [f"{row['mean_diff']:+.2f}", f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]",
                    _p_value(row["wilcoxon_p"])])
        lines.append([who, *figures, row["n"], row["verdict"], f"{row['backbone']} on {row['device_name']}"])
    return tabulate(lines, headers=["", "mean diff", "95% CI", "p", "n", "verdict", "where"], tablefmt="simple",
                    disable_numparse=True)


# ----------------------------------------------------------------------------------------- writing a report

@dataclass
class SuiteReport:
    """What one suite's report wrote and what the console should say about it."""

    suite: str
    folder: Path
    board: pd.DataFrame
    adverse: pd.DataFrame
    comparisons: dict[str, pd.DataFrame] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    baseline: str | None = None
    written: list[Path] = field(default_factory=list)


def clear_report_files(folder: Path) -> None:
    """Remove what an earlier report or publication wrote here, so no stale plot of a device that is gone
    survives; other files (notes, a README) stay."""
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file() and any(fnmatch.fnmatch(path.name, pattern) for pattern in REPORT_FILES):
                path.unlink()


def _write_table(frame: pd.DataFrame, markdown: str, folder: Path, stem: str) -> list[Path]:
    csv_path, md_path = folder / f"{stem}.csv", folder / f"{stem}.md"
    frame.to_csv(csv_path, index=False)
    md_path.write_text(markdown)
    return [csv_path, md_path]


def write_suite_report(runs: pd.DataFrame, folder: Path, *, compare: Sequence[tuple[Selector, Selector]] = (),
                       baseline: Path | None = None) -> SuiteReport:
    """Leaderboard, Pareto plots, Adverse Compression table, comparisons and baseline differences of one
    suite's runs, written into ``folder``."""
    from .plots import write_pareto_plots  # matplotlib loads only when a report is made

    folder.mkdir(parents=True, exist_ok=True)
    clear_report_files(folder)
    suite = str(runs["suite"].iloc[0])
    board = leaderboard(runs)
    report = SuiteReport(suite, folder, board, adverse_compression(runs))
    report.warnings += [f"{label} lacks {', '.join(tasks)}: its averages over them are NaN"
                        for label, tasks in missing_tasks(board).items()]
    unpretrained = int((~runs["pretrained"].astype(bool)).sum()) if "pretrained" in runs else 0
    if unpretrained:
        report.warnings.append(f"{unpretrained} of {len(runs)} runs adapted a backbone without pretrained weights")
    report.written += _write_table(board, leaderboard_markdown(board), folder, "leaderboard")
    plots, skipped_plots = write_pareto_plots(board, folder)
    report.written += plots
    report.warnings += skipped_plots
    report.written += _write_table(report.adverse, table_markdown(report.adverse), folder, "adverse_compression")
    for a, b in compare:
        table = compare_methods(runs, a, b)
        if table.empty:
            report.warnings.append(f"--compare {a},{b}: no runs of both on one device and backbone in suite {suite}")
            continue
        stem = _file_safe(f"compare_{a}_vs_{b}")
        report.comparisons[stem] = table
        report.written += _write_table(table, table_markdown(table), folder, stem)
    if baseline is not None:
        diff = baseline_diff(board, _read_baseline(baseline))
        report.baseline = baseline_summary(diff, str(baseline))
        report.written += _write_table(diff, table_markdown(diff), folder, "baseline_diff")
    return report


def _file_safe(name: str) -> str:
    return "".join(char if char.isalnum() or char in "._-" else "-" for char in name)


def _read_baseline(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        raise UserError(f"cannot read the --baseline file {path} ({exc}); pass a leaderboard.csv") from None


# ------------------------------------------------------------------------------------------------ publishing

def results_root() -> Path:
    """Where ``--publish`` writes: the repository's ``results/``, or ``$ADAPTBENCH_RESULTS`` (tests use it)."""
    return Path(os.environ.get(RESULTS_ENV) or _REPO_ROOT / "results")


def provenance(runs: pd.DataFrame, skipped: Iterable[Skipped], command: str) -> dict:
    """Everything needed to trace a published result back: the report command, every run's config hash,
    the environments they ran in (runs with the same environment, apart from the date, grouped), what was
    skipped, and the state of this checkout."""
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
