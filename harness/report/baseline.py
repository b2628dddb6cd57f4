"""``--baseline OLD.csv``: what changed against an earlier leaderboard."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from .schema import BASELINE_ACCURACY_COLUMNS, BASELINE_METRICS, ROW_KEY, Methods, accuracy_of, row_label, sort_rows


def read_baseline(path: Path) -> pd.DataFrame:
    """The leaderboard CSV at ``path``; a file that cannot be read or is no leaderboard is a :class:`UserError`.
    The report calls it before writing anything, so a bad ``--baseline`` leaves no half-written report."""
    try:
        old = pd.read_csv(path)
    except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors, some with line breaks
        raise UserError(f"cannot read the --baseline file {path} ({' '.join(str(exc).split())}); "
                        f"pass a leaderboard.csv") from None
    _check_leaderboard(old, f"the --baseline file {path}")
    return old


def _check_leaderboard(old: pd.DataFrame, what: str) -> None:
    absent = [column for column in ROW_KEY if column not in old]
    if absent:
        raise UserError(f"{what} is not a leaderboard CSV: it has no {', '.join(absent)} column; "
                        f"pass a leaderboard.csv written by `run.py report`")


def baseline_diff(new: pd.DataFrame, old: pd.DataFrame, methods: Methods | None = None) -> pd.DataFrame:
    """The new leaderboard against an old leaderboard CSV, matched on the row key: for each of
    :data:`BASELINE_METRICS` the old value, the new one and new - old; ``change`` says ``added`` (new only),
    ``removed`` (old only) or ``both``. An old CSV with a ``suite`` column is compared on this suite's rows.
    Rows are in the display order of ``methods`` (the new runs' :class:`Methods`); a method only the old board
    has follows the ordered ones, by name. Unless both boards hold the default accuracy, ``accuracy_old`` and
    ``accuracy_new`` (after ``change``) name each board's (:func:`~.schema.accuracy_of`; see
    :func:`accuracy_mismatch`)."""
    _check_leaderboard(old, "the --baseline file")
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
    old_accuracy, new_accuracy = accuracy_of(old), accuracy_of(new)
    if not (old_accuracy.is_default and new_accuracy.is_default):
        merged = merged.assign(**dict(zip(BASELINE_ACCURACY_COLUMNS, (old_accuracy.name, new_accuracy.name))))
        columns += BASELINE_ACCURACY_COLUMNS
    for metric in BASELINE_METRICS:
        merged[metric + "_delta"] = merged[metric + "_new"] - merged[metric + "_old"]
        columns += [metric + "_old", metric + "_new", metric + "_delta"]
    return sort_rows(merged[columns], methods)


def accuracy_mismatch(new: pd.DataFrame, old: pd.DataFrame, name: str) -> str | None:
    """A warning when the old board holds another accuracy than the new one (their accuracy deltas then
    measure the choice as much as the runs), or None."""
    old_accuracy, new_accuracy = accuracy_of(old), accuracy_of(new)
    if old_accuracy == new_accuracy:
        return None
    return (f"--baseline {name} holds the {old_accuracy.label} accuracy ('{old_accuracy.name}'), this report the "
            f"{new_accuracy.label} ('{new_accuracy.name}'): the accuracy changes compare two measures")


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
