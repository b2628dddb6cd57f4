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
    ``removed`` (old only), ``both``, or ``other device``: a row only the new board has and one only the old board
    has that differ in nothing but the device (a board republished on another machine); its ``device_name`` reads
    ``new (was old)``, and its throughput delta compares two machines. An old CSV with a ``suite`` column is
    compared on this suite's rows.
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
    merged = _pair_across_devices(merged)
    columns = [*ROW_KEY, "change"]
    old_accuracy, new_accuracy = accuracy_of(old), accuracy_of(new)
    if not (old_accuracy.is_default and new_accuracy.is_default):
        merged = merged.assign(**dict(zip(BASELINE_ACCURACY_COLUMNS, (old_accuracy.name, new_accuracy.name))))
        columns += BASELINE_ACCURACY_COLUMNS
    for metric in BASELINE_METRICS:
        delta = merged[metric + "_new"] - merged[metric + "_old"]
        # The same value summed in another order differs in its last bits; that is no change.
        merged[metric + "_delta"] = delta.mask(delta.abs() <= 1e-9 * merged[metric + "_new"].abs(), 0.0)
        columns += [metric + "_old", metric + "_new", metric + "_delta"]
    return sort_rows(merged[columns], methods)


def _pair_across_devices(merged: pd.DataFrame) -> pd.DataFrame:
    """Join each added row to the removed row with the same key but the device, where exactly one of each has it."""
    rest = [column for column in ROW_KEY if column != "device_name"]
    added, removed = merged[merged["change"] == "added"], merged[merged["change"] == "removed"]
    unique = [side.drop_duplicates(rest, keep=False) for side in (added, removed)]
    new_columns = [column for column in merged if column.endswith("_new")]
    old_columns = [column for column in merged if column.endswith("_old")]
    paired = unique[0][rest + ["device_name"] + new_columns].merge(
        unique[1][rest + ["device_name"] + old_columns], on=rest, suffixes=("", "_was"))
    if paired.empty:
        return merged
    paired["device_name"] = paired["device_name"] + " (was " + paired.pop("device_name_was") + ")"
    paired["change"] = "other device"
    keys = paired[rest].apply(tuple, axis=1)
    moved = merged["change"].isin(["added", "removed"]) & merged[rest].apply(tuple, axis=1).isin(keys)
    return pd.concat([merged[~moved], paired], ignore_index=True)


def accuracy_mismatch(new: pd.DataFrame, old: pd.DataFrame, name: str) -> str | None:
    """A warning when the old board holds another accuracy than the new one (their accuracy deltas then
    measure the choice as much as the runs), or None."""
    old_accuracy, new_accuracy = accuracy_of(old), accuracy_of(new)
    if old_accuracy == new_accuracy:
        return None
    return (f"--baseline {name} holds the {old_accuracy.label} accuracy ('{old_accuracy.name}'), this report the "
            f"{new_accuracy.label} ('{new_accuracy.name}'): the accuracy changes compare two measures")


def baseline_summary(diff: pd.DataFrame, name: str) -> str:
    both = diff[diff["change"].isin(["both", "other device"])]
    counts = diff["change"].value_counts()
    parts = [f"{len(both)} row(s) in both"
             + (f" ({counts['other device']} on another device)" if counts.get("other device") else "")]
    for metric in ("acc_mean_tasks", "infer_img_per_s"):
        deltas = both[metric + "_delta"].dropna()
        if not deltas.empty:
            largest = deltas.abs().idxmax()
            parts.append(f"{metric} mean change {deltas.mean():+.3g}, largest {deltas[largest]:+.3g} "
                         f"({row_label(both.loc[largest])})")
    parts.append(f"{counts.get('added', 0)} added, {counts.get('removed', 0)} removed")
    return f"against {name}: " + "; ".join(parts)
