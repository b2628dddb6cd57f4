"""The leaderboard: one row per device, backbone, method and compression level, with group and overall
averages, speed-up, V-PETL Bench's PPT and Pareto frontier membership."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..vocabulary import NONE, REFERENCE, SMALL_MODEL_BASELINE, group_rank
from .schema import (DEFAULT_ACCURACY, PARETO_METRICS, ROW_KEY, Methods, accuracy_choice, row_label, sort_rows,
                     task_names, with_accuracy)

PPT_PARAMS_SCALE = 1e7  # V-PETL Bench's normalising constant C


def ordered_tasks(runs: pd.DataFrame) -> list[str]:
    """Tasks grouped as VTAB groups them (natural, specialized, structured; then other groups by name, then
    tasks without a group), by name within a group."""
    groups = task_groups(runs)
    return sorted(groups.index, key=lambda task: (group_rank(groups[task]), task))


def task_groups(runs: pd.DataFrame) -> pd.Series:
    """The group of each task (None or NaN for a task without one), as its first run recorded it."""
    return runs.drop_duplicates("task").set_index("task")["group"]


def ordered_groups(runs: pd.DataFrame) -> list[str]:
    """The task groups the runs name, in :func:`ordered_tasks`'s order (tasks without a group have none)."""
    return sorted({group for group in task_groups(runs) if isinstance(group, str)}, key=group_rank)


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


def leaderboard(runs: pd.DataFrame, accuracy: str = DEFAULT_ACCURACY) -> pd.DataFrame:
    """One suite's runs, one row per (device name, backbone, method, compression).

    ``accuracy`` names the per-run accuracy (:data:`~.schema.ACCURACIES`: ``best`` is ``test_acc_best``);
    another than the default adds the column ``accuracy`` (after ``suite``) holding its name.
    Per task: ``acc_<task>`` (mean of that accuracy over seeds) and ``acc_<task>_std`` (ddof=1, NaN with
    one seed). ``acc_<group>`` is the mean of that group's task means, ``acc_mean_tasks`` the mean of all
    task means (tasks without a group included) and ``acc_mean_groups`` the mean of the group means (NaN when
    no task has a group). The expected tasks are every task of the suite that any run covers: a row lacking
    one of them gets NaN for every average that would include it, so no row's average is over an easier subset
    than another's. Rows are in the recorded method order (:class:`Methods`).
    """
    choice = accuracy_choice(accuracy)
    methods = Methods.of(runs)
    tasks = ordered_tasks(runs)
    by_task = runs.groupby(ROW_KEY + ["task"])[choice.column]
    means = by_task.mean().unstack("task").reindex(columns=tasks)
    stds = by_task.std(ddof=1).unstack("task").reindex(columns=tasks)
    board = pd.DataFrame(index=means.index)
    for task in tasks:
        board[f"acc_{task}"], board[f"acc_{task}_std"] = means[task], stds[task]
    group_of = task_groups(runs)
    group_columns = []
    for group in ordered_groups(runs):
        members = [task for task in tasks if group_of[task] == group]
        group_columns.append(f"acc_{group}")
        board[group_columns[-1]] = means[members].mean(axis=1, skipna=False)
    board["acc_mean_tasks"] = means.mean(axis=1, skipna=False)
    board["acc_mean_groups"] = board[group_columns].mean(axis=1, skipna=False)
    per_row = runs.groupby(ROW_KEY)
    seeds = runs.groupby(ROW_KEY + ["task"])["seed"].nunique()
    board["seeds"] = seeds.unstack("task").min(axis=1).astype(int)  # distinct seeds, the fewest any task has
    board["tasks"] = means.notna().sum(axis=1)
    board["runs"] = per_row.size()
    board["infer_img_per_s"] = per_row["infer_img_per_s"].median()  # the median resists one noisy machine
    # Runs of one row are measured minutes apart, so this spread holds the machine's drift between them too.
    rates = per_row["infer_img_per_s"]
    board["infer_img_per_s_iqr_over_runs"] = (rates.quantile(0.75) - rates.quantile(0.25)).where(rates.count() > 1)
    for column in ("gmacs", "tunable_params", "tunable_pct", "train_peak_mem_mb", "infer_peak_mem_mb",
                   "matched_throughput_ratio"):
        board[column] = per_row[column].mean()
    board["small_backbone"] = per_row["small_backbone"].agg(distinct)
    board = board.reset_index()
    board.insert(0, "suite", runs["suite"].iloc[0])
    with_accuracy(board, choice, position=1)
    board["ppt"] = ppt(board["acc_mean_tasks"], board["tunable_params"])
    board = _with_speedup(board, methods)
    for name, (column, higher) in PARETO_METRICS.items():
        board[f"pareto_{name}"] = _per_device_front(board, column, higher)
    return sort_rows(board, methods)


def distinct(values: pd.Series) -> str | float:
    """The distinct non-empty values joined by commas (throughput matching may pick different small
    backbones on different runs), or NaN."""
    found = sorted({str(value) for value in values.dropna() if str(value)})
    return ",".join(found) if found else np.nan


def speedup_reference(rows: pd.DataFrame, methods: Methods | None = None) -> str | None:
    """The uncompressed row that ``speedup`` divides by, among one device's and backbone's rows: a method whose
    role is ``reference`` (the first in display order, should several have run), else the first other
    uncompressed method in display order (then by name). A small-model baseline never is: uncompressed, it runs
    a smaller backbone than the one the row names. ``methods``: the runs' :class:`Methods` (roles and order)."""
    methods = methods or Methods()
    candidates = rows[(rows["compression"] == NONE) & rows["infer_img_per_s"].notna()]
    names = [name for name in set(candidates["method"]) if methods.role(name) != SMALL_MODEL_BASELINE]
    references = [name for name in names if methods.role(name) == REFERENCE]
    return min(references or names, key=methods.rank, default=None)


def _with_speedup(board: pd.DataFrame, methods: Methods) -> pd.DataFrame:
    board = board.assign(speedup=np.nan, speedup_reference=None)
    for _, rows in board.groupby(["device_name", "backbone"]):
        reference = speedup_reference(rows, methods)
        if reference is None:
            continue
        base = rows.loc[(rows["method"] == reference) & (rows["compression"] == NONE), "infer_img_per_s"]
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


def missing_tasks(board: pd.DataFrame) -> dict[str, list[str]]:
    """Rows that lack tasks other rows of the suite have (their averages are NaN), with those tasks."""
    tasks = task_names(board)
    missing = {}
    for _, row in board.iterrows():
        lacking = [task for task in tasks if pd.isna(row[f"acc_{task}"])]
        if lacking:
            missing[row_label(row)] = lacking
    return missing
