"""``--paper NAME``: a leaderboard beside the figures a paper published for the same set-up, the ``[published]``
table of ``harness/presets/paper/NAME.toml``.

Accuracies are compared as they are (ours minus the paper's, in points). Throughputs of two machines are not:
each side's is divided by its own row with compression ``none`` (the paper's uncompressed PEFT row), so the
comparison is of speed-ups.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from .. import presets
from ..errors import UserError
from ..vocabulary import NONE
from .schema import ACCURACIES, ROW_KEY, Accuracy, method_label, row_label

PAPER_THROUGHPUT = "img_per_s"  # a published row's throughput, on the paper's machine
_ROW_NAMES = ("method", "compression")


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
            found.update((key, None) for key in row if key not in _ROW_NAMES and key != PAPER_THROUGHPUT)
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
    accuracy = table.get("accuracy", "best")
    if accuracy not in ACCURACIES:
        raise UserError(f"{where}: [published] accuracy '{accuracy}' is none of {', '.join(ACCURACIES)}")
    tasks = table.get("tasks")
    if tasks is not None and not (isinstance(tasks, int) and tasks > 0):
        raise UserError(f"{where}: [published] tasks = {tasks!r} is not a count of tasks")
    rows = tuple(table.get("rows", ()))
    for number, row in enumerate(rows, 1):
        absent = [key for key in _ROW_NAMES if key not in row]
        if absent:
            raise UserError(f"{where}: [published] row {number} has no {', '.join(absent)}")
        for key, value in row.items():
            if key not in _ROW_NAMES and not (key.startswith("acc_") or key == PAPER_THROUGHPUT):
                raise UserError(f"{where}: [published] row {number} gives '{key}', which the report cannot compare "
                                f"(accuracies acc_..., and {PAPER_THROUGHPUT})")
            if key not in _ROW_NAMES and not isinstance(value, (int, float)):
                raise UserError(f"{where}: [published] row {number}: {key} = {value!r} is not a number")
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


def paper_comparison(board: pd.DataFrame, paper: Published) -> pd.DataFrame:
    """Per device that ran the paper's backbone, one row per published (method, level): ``ran`` (whether this
    board has it), ``tasks`` (how many tasks its averages are over), for each of the paper's metrics ``<metric>_paper``, ``<metric>_ours`` and ``<metric>_delta``
    (ours - paper), then ``speedup_paper`` and ``speedup_ours`` (each side's throughput over its own row of the
    paper's uncompressed method). Empty when no row of the board is of the paper's backbone."""
    ours = board[board["backbone"].astype(str) == paper.backbone]
    reference = paper.reference
    rows = []
    for device, device_rows in ours.groupby("device_name", sort=False):
        by_key = {(row["method"], row["compression"]): row for _, row in device_rows.iterrows()}
        base = by_key.get((reference["method"], NONE)) if reference is not None else None
        for figures in paper.rows:
            mine = by_key.get((figures["method"], figures["compression"]))
            row = {"device_name": device, "backbone": paper.backbone, "method": figures["method"],
                   "compression": figures["compression"], "ran": mine is not None,
                   "tasks": mine["tasks"] if mine is not None else np.nan}
            for metric in paper.metrics:
                theirs = float(figures.get(metric, np.nan))
                value = float(mine[metric]) if mine is not None and metric in mine else np.nan
                row.update({f"{metric}_paper": theirs, f"{metric}_ours": value, f"{metric}_delta": value - theirs})
            row["speedup_paper"] = _ratio(figures.get(PAPER_THROUGHPUT), reference and reference.get(PAPER_THROUGHPUT))
            row["speedup_ours"] = _ratio(mine["infer_img_per_s"] if mine is not None else None,
                                         base["infer_img_per_s"] if base is not None else None)
            rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else [*ROW_KEY, "ran"])


def _ratio(value: object, base: object) -> float:
    if value is None or base is None or pd.isna(value) or pd.isna(base) or not base:
        return np.nan
    return float(value) / float(base)


def paper_notes(table: pd.DataFrame, paper: Published, accuracy: Accuracy) -> list[str]:
    """What a reader must know to read the comparison: rows the paper has and the board lacks (one note per
    device), rows averaged over fewer tasks than the paper's, and an accuracy other than the paper's."""
    notes = []
    for device, rows in table[~table["ran"]].groupby("device_name", sort=False):
        names = ", ".join(method_label(row) for _, row in rows.iterrows())
        notes.append(f"--paper {paper.name}: no runs of {names} ({paper.backbone}, {device})")
    fewer = table[table["ran"] & (table["tasks"] < (paper.tasks or 0))]
    if len(fewer):
        low, high = int(fewer["tasks"].min()), int(fewer["tasks"].max())
        covered = str(low) if low == high else f"{low}-{high}"
        notes.append(f"--paper {paper.name}: {len(fewer)} row(s) cover {covered} of the paper's {paper.tasks} tasks: "
                     f"their averages are over those alone")
    if accuracy != paper.accuracy:
        notes.append(f"--paper {paper.name}: the paper reports the {paper.accuracy.label} ('{paper.accuracy.name}'), "
                     f"this report the {accuracy.label} ('{accuracy.name}')")
    return notes


def paper_summary(table: pd.DataFrame, paper: Published) -> str:
    """One line: the main accuracy's mean and largest difference from the paper over the rows run."""
    metric = paper.main_metric
    deltas = table[f"{metric}_delta"].dropna()
    if deltas.empty:
        return f"{metric}: no row of the paper has run here"
    largest = deltas.abs().idxmax()
    return (f"{metric} ours - paper: mean {deltas.mean():+.2f} points over {len(deltas)} row(s), largest "
            f"{deltas[largest]:+.2f} ({row_label(table.loc[largest])})")
