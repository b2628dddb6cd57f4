"""What the report's frames mean: the row key, the order of levels, groups and methods, which way each
metric is better, and which per-run accuracy the report is about (``--accuracy``).

Nothing here knows a method by name: a method's display order and role (:mod:`harness.vocabulary`) come from its
run records (``method_order``, ``method_role``), gathered into :class:`Methods`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd

from ..errors import UserError
from ..vocabulary import is_uncompressed, level_rank


@dataclass(frozen=True)
class Accuracy:
    """One choice of ``report --accuracy``: the per-run metric every accuracy of the report is computed from."""

    name: str  # the option's value, and what a non-default report writes into its tables' ``accuracy`` column
    column: str  # the run metric
    description: str  # for Markdown and console titles: "Top-1 test accuracy (%, <description>)"
    label: str  # short: plot titles, console verdict titles, notes
    missing: str | None = None  # why a run lacking the metric is skipped, where it says more than "no number"

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_ACCURACY


ACCURACIES = {choice.name: choice for choice in (
    Accuracy("best", "test_acc_best", "best evaluation of each run", "best evaluation"),
    Accuracy("last", "test_acc_last", "last evaluation of each run", "last evaluation"),
    Accuracy("at-best-val", "test_acc_at_best_val",
             "at each run's best val evaluation, trained on train alone", "at best val",
             missing="no test_acc_at_best_val: trained without --selection val"),
)}
DEFAULT_ACCURACY = "best"  # PYRA's and V-PETL Bench's: the best of the periodic test evaluations
# A report with another choice adds this column (holding the choice's name) to every table it writes; the default
# adds none, so boards published before the choice existed (results/offline, tests/fixtures/schema1_report)
# rebuild byte-identical, and a table without the column holds the best evaluation.
ACCURACY_COLUMN = "accuracy"
BASELINE_ACCURACY_COLUMNS = ("accuracy_old", "accuracy_new")  # a baseline table's, where not both the default


def accuracy_choice(name: str) -> Accuracy:
    """The :class:`Accuracy` called ``name`` (one of :data:`ACCURACIES`)."""
    try:
        return ACCURACIES[name]
    except KeyError:
        raise UserError(f"unknown accuracy '{name}'; choose one of {', '.join(ACCURACIES)}") from None


def accuracy_of(table: pd.DataFrame) -> Accuracy:
    """Which accuracy a report table (leaderboard, paired table, a leaderboard CSV read back) holds: its
    ``accuracy`` column, the default without one."""
    if ACCURACY_COLUMN in table and len(table):
        return accuracy_choice(str(table[ACCURACY_COLUMN].iloc[0]))
    return ACCURACIES[DEFAULT_ACCURACY]


def with_accuracy(table: pd.DataFrame, choice: Accuracy, position: int = 0) -> pd.DataFrame:
    """``table`` with the ``accuracy`` column at ``position`` for a non-default choice; unchanged otherwise."""
    if not choice.is_default:
        table.insert(position, ACCURACY_COLUMN, choice.name)
    return table


ROW_KEY = ["device_name", "backbone", "method", "compression"]
PARETO_METRICS = {  # name: (column, higher is better)
    "throughput": ("infer_img_per_s", True),
    "gmacs": ("gmacs", False),
    "memory": ("train_peak_mem_mb", False),
}
BASELINE_METRICS = ("acc_mean_tasks", "acc_mean_groups", "infer_img_per_s", "gmacs")
# Which way a leaderboard column is better (every ``acc_`` column: higher), for bold best values in tables.
HIGHER_IS_BETTER = {"infer_img_per_s": True, "speedup": True, "ppt": True, "gmacs": False, "tunable_params": False,
                    "tunable_pct": False, "train_peak_mem_mb": False, "infer_peak_mem_mb": False}
SPREADS = ("_std", "_iqr_over_runs")  # a spread is neither better high nor low, whatever it spreads
_AVERAGES = ("acc_mean_tasks", "acc_mean_groups")


def higher_is_better(column: str) -> bool | None:
    """True for accuracies, throughput, speed-up and PPT; False for GMACs, tunable parameters and memory; None
    for columns without a better direction (counts, names, spreads such as ``acc_<task>_std``)."""
    if column.endswith(SPREADS):
        return None
    return True if column.startswith("acc_") else HIGHER_IS_BETTER.get(column)


@dataclass(frozen=True)
class Methods:
    """What the run records say of each method: its display order and its role, where it declared them."""

    orders: Mapping[str, int] = field(default_factory=dict)
    roles: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, runs: pd.DataFrame) -> "Methods":
        """The recorded ``method_order`` and ``method_role`` of every method in ``runs`` (the smallest order and
        the first role by name, should records of one method disagree)."""
        orders, roles = {}, {}
        for name, rows in runs.groupby("method"):
            order = pd.to_numeric(rows["method_order"], errors="coerce").dropna() if "method_order" in rows else ()
            if len(order):
                orders[str(name)] = int(order.min())
            role = sorted(str(value) for value in rows["method_role"].dropna()) if "method_role" in rows else []
            if role:
                roles[str(name)] = role[0]
        return cls(orders, roles)

    def rank(self, name: str) -> tuple[int, int, str]:
        """Methods by recorded order (ties by name), then those without an order by name."""
        return (0, self.orders[name], name) if name in self.orders else (1, 0, name)

    def role(self, name: str) -> str | None:
        return self.roles.get(name)

    def with_role(self, role: str) -> list[str]:
        return sorted((name for name, found in self.roles.items() if found == role), key=self.rank)


def sort_rows(frame: pd.DataFrame, methods: Methods | None = None) -> pd.DataFrame:
    """Device, backbone, then methods and levels in their natural order (not alphabetical): methods by their
    recorded order (``methods``; without it, or for a method without one, after the ordered ones by name)."""
    if frame.empty:
        return frame.reset_index(drop=True)
    methods = methods or Methods()
    order = sorted(frame.index, key=lambda i: (str(frame.at[i, "device_name"]), str(frame.at[i, "backbone"]),
                                               methods.rank(str(frame.at[i, "method"])),
                                               level_rank(frame.at[i, "compression"])))
    return frame.loc[order].reset_index(drop=True)


def method_label(row: Mapping) -> str:
    """``method@level``, or the method alone when uncompressed."""
    return row["method"] if is_uncompressed(row["compression"]) else f"{row['method']}@{row['compression']}"


def row_label(row: Mapping) -> str:
    return f"{method_label(row)} ({row['backbone']}, {row['device_name']})"


def task_names(board: pd.DataFrame) -> list[str]:
    """The tasks of a leaderboard (those with ``acc_<task>`` and ``acc_<task>_std`` columns), in column order."""
    return [column[4:-4] for column in board.columns if column.startswith("acc_") and column.endswith("_std")]


def group_names(board: pd.DataFrame) -> list[str]:
    """The task groups a leaderboard averages (its ``acc_<group>`` columns), in column order."""
    tasks = set(task_names(board))
    return [column[4:] for column in board.columns if column.startswith("acc_") and not column.endswith("_std")
            and column not in _AVERAGES and column[4:] not in tasks]
