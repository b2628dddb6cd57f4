"""The report's tables as GitHub Markdown (files) and plain text (the console)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd

from ..vocabulary import SMALL_MODEL_BASELINE
from .schema import (ACCURACY_COLUMN, BASELINE_ACCURACY_COLUMNS, Accuracy, accuracy_choice, accuracy_of, group_names,
                     higher_is_better, method_label, task_names)

MAX_MARKDOWN_TASKS = 8  # leaderboard.md shows per-task accuracies up to this many tasks; the CSV always does


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


def _signed(value: float) -> str:
    """A difference in accuracy points, with its sign."""
    return "–" if pd.isna(value) else f"{value:+.2f}"


# Leaderboard columns for Markdown and the console: (column, header, format); the group averages
# (acc_<group>) come after ``seeds``, and whether higher is better is :func:`higher_is_better`'s.
_ACC = _fixed(2)
_LEADING_COLUMNS = [("seeds", "seeds", _number)]
_TRAILING_COLUMNS = [
    ("acc_mean_tasks", "mean (tasks)", _ACC), ("acc_mean_groups", "mean (groups)", _ACC),
    ("infer_img_per_s", "img/s (IQR)", _number), ("speedup", "speedup", _fixed(2, "x")),
    ("gmacs", "GMACs", lambda value: _number(value, 4)),
    ("tunable_params", "tunable", _count), ("train_peak_mem_mb", "train MiB", _fixed(1)),
    ("ppt", "PPT", _fixed(3)),
]
_KEY_HEADERS = {"device_name": "device", "backbone": "backbone", "method": "method", "compression": "compression",
                "small_backbone": "small backbone"}


def _board_columns(board: pd.DataFrame) -> list[tuple[str, str, Callable[[object], str]]]:
    groups = [(f"acc_{group}", group, _ACC) for group in group_names(board)]
    return [column for column in _LEADING_COLUMNS + groups + _TRAILING_COLUMNS if column[0] in board]


def _best_mask(values: pd.Series, higher: bool | None) -> pd.Series:
    if higher is None or values.isna().all():
        return pd.Series(False, index=values.index)
    best = values.max() if higher else values.min()
    return values == best


def accuracy_title(choice: Accuracy) -> str:
    """What a report's accuracies are: "Top-1 test accuracy (%, best evaluation of each run)", naming the
    ``--accuracy`` option for a choice other than the default."""
    option = "" if choice.is_default else f"; report --accuracy {choice.name}"
    return f"Top-1 test accuracy (%, {choice.description}{option})"


def leaderboard_markdown(board: pd.DataFrame) -> str:
    """GitHub Markdown of the main columns; the best value of each column on each device is bold (higher is
    better for accuracies, throughput, speed-up and PPT, lower for GMACs, memory and tunable parameters). The
    title says which accuracy the board holds (:func:`~.schema.accuracy_of`)."""
    from tabulate import tabulate

    tasks = task_names(board)
    task_columns = [(f"acc_{task}", task, None) for task in tasks] if len(tasks) <= MAX_MARKDOWN_TASKS else []
    columns = [column for column in task_columns + _board_columns(board) if column[0] in board]
    keys = [key for key in _KEY_HEADERS if key != "small_backbone" or board[key].notna().any()]
    cells = board[keys].fillna("–").astype(str)
    for column, _, formatter in columns:
        text = _with_iqr(board, column, formatter) if formatter else _with_std(board, column)
        higher = higher_is_better(column)
        best = pd.concat([_best_mask(rows[column], higher) for _, rows in board.groupby("device_name")])
        cells[column] = [f"**{t}**" if is_best else t for t, is_best in zip(text, best.reindex(board.index))]
    headers = [_KEY_HEADERS[key] for key in keys] + [header for _, header, _ in columns]
    title = (f"# Leaderboard: {board['suite'].iloc[0]} suite\n\n{accuracy_title(accuracy_of(board))}, mean ± std "
             f"over seeds; group and overall means as defined in the README (\"Analysis and "
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

    columns = _board_columns(board)
    blocks = []
    for (device, backbone), rows in board.groupby(["device_name", "backbone"], sort=False):
        cells = [_with_iqr(rows, column, formatter) for column, _, formatter in columns]
        table = [[method, compression, *row_cells]
                 for method, compression, *row_cells in zip(rows["method"], rows["compression"], *cells)]
        headers = ["method", "compr."] + [header for _, header, _ in columns]
        blocks.append(f"{backbone} on {device}:\n"
                      + tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True))
    return "\n\n".join(blocks)


def table_markdown(table: pd.DataFrame, accuracy: Accuracy | None = None) -> str:
    """Markdown of an Adverse Compression, ``--compare``, baseline or ``--paper`` table: differences to two
    decimals (accuracy changes, ``acc_..._delta``, with their sign), p-values to two significant digits, other
    numbers to three. A table of another accuracy than the default (``accuracy``, else the table's ``accuracy``
    column; a baseline table's ``accuracy_old`` and ``accuracy_new``) opens with a line naming it instead of
    repeating it in every row."""
    from tabulate import tabulate

    def cell(column: str, value: object) -> str:
        if column == "wilcoxon_p":
            return _p_value(value)
        if column.startswith("acc_") and column.endswith("_delta"):
            return _signed(value)
        if column in ("mean_diff", "ci_low", "ci_high") or column.startswith("acc_"):
            return _fixed(2)(value)
        return _number(value) if isinstance(value, (int, float, np.number)) else _plain(value)

    heading = _accuracy_heading(table, accuracy or accuracy_of(table))
    table = table.drop(columns=[column for column in BASELINE_ACCURACY_COLUMNS + (ACCURACY_COLUMN,)
                                if column in table])
    cells = [[cell(column, row[column]) for column in table.columns] for _, row in table.iterrows()]
    return heading + tabulate(cells, headers=list(table.columns), tablefmt="github", disable_numparse=True) + "\n"


def _accuracy_heading(table: pd.DataFrame, accuracy: Accuracy) -> str:
    if not accuracy.is_default:
        return f"{accuracy_title(accuracy)}; differences in its points.\n\n"
    if all(column in table for column in BASELINE_ACCURACY_COLUMNS) and len(table):
        old, new = (accuracy_choice(str(table[column].iloc[0])) for column in BASELINE_ACCURACY_COLUMNS)
        return f"Old board: {accuracy_title(old)}. New board: {accuracy_title(new)}.\n\n"
    return ""


def _plain(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def verdict_lines(table: pd.DataFrame) -> str:
    """An Adverse Compression or ``--compare`` table as aligned console lines: who (``A - B``, or a compressed
    row against the small-model baseline), mean difference, CI, p, pairs, verdict."""
    from tabulate import tabulate

    lines = []
    for _, row in table.iterrows():
        who = (f"{row['a']} - {row['b']}" if "a" in table
               else f"{method_label(row)} - {SMALL_MODEL_BASELINE}")
        figures = (["–"] * 3 if pd.isna(row["mean_diff"]) else
                   [_signed(row["mean_diff"]), f"[{_signed(row['ci_low'])}, {_signed(row['ci_high'])}]",
                    _p_value(row["wilcoxon_p"])])
        lines.append([who, *figures, row["n"], row["verdict"], f"{row['backbone']} on {row['device_name']}"])
    return tabulate(lines, headers=["", "mean diff", "95% CI", "p", "n", "verdict", "where"], tablefmt="simple",
                    disable_numparse=True)


def paper_lines(table: pd.DataFrame, metric: str) -> str:
    """A ``--paper`` comparison as console lines: per published row the paper's ``metric``, ours and the
    difference, and the two speed-ups."""
    from tabulate import tabulate

    lines = []
    for _, row in table.iterrows():
        figures = [_ACC(row[f"{metric}_paper"]), _ACC(row[f"{metric}_ours"]), _signed(row[f"{metric}_delta"])]
        speedups = [_fixed(2, "x")(row["speedup_paper"]), _fixed(2, "x")(row["speedup_ours"])]
        lines.append([method_label(row), *figures, *speedups, f"{row['backbone']} on {row['device_name']}"])
    return tabulate(lines, headers=["", f"{metric} paper", "ours", "ours - paper", "speed-up paper", "ours", "where"],
                    tablefmt="simple", disable_numparse=True)
