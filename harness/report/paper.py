"""``--paper NAME``: a leaderboard beside the figures a paper published for the same set-up, the ``[published]``
table of ``harness/presets/paper/NAME.toml``.

Accuracies are compared as they are (ours minus the paper's, in points). Throughputs of two machines are not:
each side's is divided by its own row of the paper's uncompressed method, so the comparison is of speed-ups.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from .. import presets
from ..errors import UserError
from ..vocabulary import NONE, named_levels
from .schema import ACCURACIES, ROW_KEY, Accuracy, method_label, row_label

PAPER_THROUGHPUT = "img_per_s"  # a published row's throughput, on the paper's machine
_PUBLISHED_KEY = ("method", "compression")  # what identifies a published row, as a leaderboard's row key does


@dataclass(frozen=True)
class Published:
    """One paper preset's published figures: per (method, level) the paper's leaderboard values."""

    name: str  # the preset's
    source: str  # where in the paper the figures are
    suite: str
    backbone: str  # the preset's backbone: the runs compared are of it
    accuracy: Accuracy  # which per-run accuracy the paper's figures are
    rows: tuple[Mapping[str, object], ...]
    tasks: int | None = None  # how many tasks the paper's averages are over

    @property
    def metrics(self) -> list[str]:
        """The leaderboard columns the paper gives for some row, in the order they first appear."""
        found: dict[str, None] = {}
        for row in self.rows:
            found.update((key, None) for key in row if key not in _PUBLISHED_KEY and key != PAPER_THROUGHPUT)
        return list(found)

    @property
    def main_metric(self) -> str:
        """The accuracy the console shows and the summary averages: the first the paper gives."""
        return self.metrics[0]

    @property
    def reference(self) -> Mapping[str, object] | None:
        """The uncompressed row that speed-ups divide by, where the paper gives throughputs."""
        return next((row for row in self.rows if row["compression"] == NONE), None)


def published(name: str) -> Published:
    """The published figures of paper preset ``name``; a preset without them, or figures the report cannot
    compare, are a :class:`UserError` naming the file."""
    where = f"harness/presets/{presets.PAPER_DIR}/{name}.toml"
    preset = presets.paper_presets().get(name)
    if preset is None or "published" not in preset:
        raise UserError(f"{where} lists no published figures ([published]); --paper takes one of "
                        f"{', '.join(presets.published_presets()) or 'none'}")
    table = preset["published"]
    absent = [f"[published] {key}" for key in ("source", "suite") if not isinstance(table.get(key), str)]
    if not isinstance(preset.get("run", {}).get("backbone"), str):
        absent.append("[run] backbone")
    if absent:
        raise UserError(f"{where}: needs {' and '.join(absent)}, as text")
    accuracy = table.get("accuracy", "best")
    if accuracy not in ACCURACIES:
        raise UserError(f"{where}: [published] accuracy '{accuracy}' is none of {', '.join(ACCURACIES)}")
    tasks = table.get("tasks")
    if tasks is not None and (isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1):
        raise UserError(f"{where}: [published] tasks = {tasks!r} is not a count of tasks")
    rows = tuple(table.get("rows", ()))
    for number, row in enumerate(rows, 1):
        problem = _row_problem(row)
        if problem:
            raise UserError(f"{where}: [published] row {number} {problem}")
    keys = [(row["method"], row["compression"]) for row in rows]
    if len(set(keys)) < len(keys):
        raise UserError(f"{where}: [published] lists a method and level twice")
    result = Published(name, table["source"], table["suite"], preset["run"]["backbone"], ACCURACIES[accuracy], rows,
                       tasks)
    if not result.metrics:
        raise UserError(f"{where}: [published] gives no accuracy (acc_...) to compare")
    if any(PAPER_THROUGHPUT in row for row in rows) and result.reference is None:
        raise UserError(f"{where}: [published] gives throughputs but no row with compression \"{NONE}\" to divide "
                        f"them by")
    return result


def _row_problem(row: object) -> str | None:
    """What makes one ``[[published.rows]]`` entry unusable, or None."""
    if not isinstance(row, dict):
        return f"is {row!r}, not a table"
    absent = [key for key in _PUBLISHED_KEY if key not in row]
    if absent:
        return f"has no {', '.join(absent)}"
    levels = (NONE, *named_levels())
    if row["compression"] not in levels:
        return f"has compression {row['compression']!r}, none of {', '.join(levels)}"
    for key, value in row.items():
        if key in _PUBLISHED_KEY:
            continue
        if not (key.startswith("acc_") or key == PAPER_THROUGHPUT):
            return f"gives '{key}', which the report cannot compare (accuracies acc_..., and {PAPER_THROUGHPUT})"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"gives {key} = {value!r}, not a number"
    return None


def paper_comparison(board: pd.DataFrame, paper: Published) -> pd.DataFrame:
    """Per device that ran the paper's backbone, one row per published (method, level): ``ran`` (whether this
    board has it), ``tasks`` (how many tasks its averages are over), for each of the paper's metrics
    ``<metric>_paper``, ``<metric>_ours`` and ``<metric>_delta`` (ours - paper), then ``speedup_paper`` and
    ``speedup_ours``: each side's throughput over its own row of the paper's uncompressed method (the board's
    ``speedup`` where the board divided by that method, else NaN). Empty when no row of the board is of the
    paper's backbone."""
    ours = board[board["backbone"].astype(str) == paper.backbone]
    reference, metrics = paper.reference, paper.metrics
    paper_base = reference.get(PAPER_THROUGHPUT) if reference is not None else None
    rows = []
    for device, device_rows in ours.groupby("device_name", sort=False):
        by_key = {(row["method"], row["compression"]): row for _, row in device_rows.iterrows()}
        for theirs in paper.rows:
            mine = by_key.get((theirs["method"], theirs["compression"]))
            row = {"device_name": device, "backbone": paper.backbone, "method": theirs["method"],
                   "compression": theirs["compression"], "ran": mine is not None,
                   "tasks": mine["tasks"] if mine is not None else pd.NA}
            for metric in metrics:
                published_value = float(theirs.get(metric, np.nan))
                value = float(mine[metric]) if mine is not None and metric in mine else np.nan
                row.update({f"{metric}_paper": published_value, f"{metric}_ours": value,
                            f"{metric}_delta": value - published_value})
            row["speedup_paper"] = (theirs[PAPER_THROUGHPUT] / paper_base
                                    if PAPER_THROUGHPUT in theirs and paper_base else np.nan)
            divided_by_reference = (mine is not None and reference is not None
                                    and mine["speedup_reference"] == reference["method"])
            row["speedup_ours"] = float(mine["speedup"]) if divided_by_reference else np.nan
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=[*ROW_KEY, "ran", "tasks"])
    return pd.DataFrame(rows).astype({"tasks": "Int64"})


def paper_notes(table: pd.DataFrame, paper: Published, accuracy: Accuracy) -> list[str]:
    """What a reader must know to read the comparison: rows the paper has and the board lacks (one note per
    device), rows over fewer tasks than the paper's, and an accuracy other than the paper's."""
    notes = []
    for device, rows in table[~table["ran"]].groupby("device_name", sort=False):
        names = ", ".join(method_label(row) for _, row in rows.iterrows())
        notes.append(f"--paper {paper.name}: no runs of {names} ({paper.backbone}, {device})")
    fewer = table[table["ran"] & (table["tasks"] < (paper.tasks or 0)).fillna(False)]
    if len(fewer):
        low, high = int(fewer["tasks"].min()), int(fewer["tasks"].max())
        covered = str(low) if low == high else f"{low}-{high}"
        notes.append(f"--paper {paper.name}: {len(fewer)} row(s) have runs of {covered} of the paper's {paper.tasks} "
                     f"tasks, so their averages are not over the paper's tasks")
    if accuracy != paper.accuracy:
        notes.append(f"--paper {paper.name}: the paper reports the {paper.accuracy.label} ('{paper.accuracy.name}'), "
                     f"this report the {accuracy.label} ('{accuracy.name}')")
    return notes


def paper_difference(table: pd.DataFrame, paper: Published) -> str:
    """One line: the main accuracy's mean and largest difference from the paper over the rows run."""
    metric = paper.main_metric
    deltas = table[f"{metric}_delta"].dropna()
    if deltas.empty:
        ran = int(table["ran"].sum())
        return (f"{metric}: none of the {ran} row(s) that ran has one (NaN: a task missing, or tasks without "
                f"groups)" if ran else f"{metric}: no row of the paper has run here")
    largest = deltas.abs().idxmax()
    return (f"{metric} ours - paper: mean {deltas.mean():+.2f} points over {len(deltas)} row(s), largest "
            f"{deltas[largest]:+.2f} ({row_label(table.loc[largest])})")
