"""Pareto plots of a leaderboard: mean accuracy against inference throughput, GMACs and peak training memory.

matplotlib's object API (``Figure``, rendered by the Agg canvas for PNG) is used instead of ``pyplot``, so
making a plot never touches a global backend or opens a window, on a headless machine or in tests.
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Iterable

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from ..vocabulary import NONE, is_uncompressed
from .schema import PARETO_METRICS, Methods, accuracy_of

AXIS_LABELS = {
    "throughput": "Inference throughput (images/s, higher is better)",
    "gmacs": "Compute (GMACs per image, lower is better)",
    "memory": "Peak training memory (MiB, lower is better)",
}
TITLES = {"throughput": "inference throughput", "gmacs": "compute", "memory": "training memory"}
# One palette: a method's recorded display order picks its marker and colour (order % its length), so a method
# keeps them in every plot whatever else is plotted; the built-in methods' orders 0-5 take the first six. A
# method without an order takes one of the spare styles by a hash of its name.
_PALETTE = [("s", "#555555"), ("o", "#1f77b4"), ("^", "#ff7f0e"), ("D", "#2ca02c"), ("v", "#9467bd"),
            ("P", "#d62728"), ("X", "#8c564b"), ("h", "#e377c2"), ("<", "#17becf"), (">", "#bcbd22"),
            ("p", "#7f7f7f"), ("*", "#393b79"), ("d", "#637939"), ("8", "#843c39")]
_SPARE = _PALETTE[6:]
LOG_SCALE_RATIO = 20  # an axis spanning more than this factor is drawn logarithmic
DPI = 150


def method_style(name: str, order: int | None) -> tuple[str, str]:
    """Marker and colour of a method: by its recorded display order, or, without one, by its name alone."""
    if order is not None:
        return _PALETTE[order % len(_PALETTE)]
    return _SPARE[zlib.crc32(name.encode()) % len(_SPARE)]


def method_styles(names: Iterable[str], methods: Methods | None = None) -> dict[str, tuple[str, str]]:
    """Marker and colour of each method (:func:`method_style`, the orders from ``methods``)."""
    methods = methods or Methods()
    return {name: method_style(name, methods.orders.get(name)) for name in names}


def _annotation(row: pd.Series, several_backbones: bool) -> str:
    level = "" if is_uncompressed(row["compression"]) else str(row["compression"])
    if len(level) > 12:  # a bracketed per-block schedule
        level = level[:10] + "…"
    backbone = str(row["backbone"]).split(".")[0] if several_backbones else ""
    return ", ".join(part for part in (level, backbone) if part)


def _frontier(ax, points: pd.DataFrame, column: str, higher: bool, front: pd.Series) -> None:
    """The frontier as a step line: the best accuracy reachable at each throughput (or budget)."""
    on = points[front.reindex(points.index).fillna(False).astype(bool)].sort_values(column)
    if len(on) == 0:
        return
    # Sorted by x, frontier accuracies fall when more x is better and rise when less is; the step changes
    # level at the point that sets the new best, hence "pre" for the first and "post" for the second.
    ax.step(on[column], on["acc_mean_tasks"], where="pre" if higher else "post", color="#888888",
            linestyle="--", linewidth=1.2, zorder=1)


def pareto_figure(board: pd.DataFrame, metric: str, title: str, methods: Methods | None = None) -> Figure:
    """One device's leaderboard rows as points of (metric, mean accuracy), frontier drawn; ``methods`` gives
    each method's recorded display order (legend order and style)."""
    column, higher = PARETO_METRICS[metric]
    methods = methods or Methods()
    points = board.dropna(subset=[column, "acc_mean_tasks"])
    styles = method_styles(board["method"], methods)
    figure = Figure(figsize=(7.2, 4.6), layout="constrained")
    ax = figure.add_subplot()
    _frontier(ax, points, column, higher, board[f"pareto_{metric}"])
    several_backbones = points["backbone"].nunique() > 1
    for _, row in points.iterrows():
        marker, colour = styles[row["method"]]
        compressed = not is_uncompressed(row["compression"])
        ax.plot(row[column], row["acc_mean_tasks"], marker=marker, markersize=8, color=colour,
                markerfacecolor="white" if compressed else colour, markeredgewidth=1.6, linestyle="none", zorder=3)
    values = points[column].to_numpy(dtype=float)
    if len(values) and values.min() > 0 and values.max() / values.min() > LOG_SCALE_RATIO:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,g}"))  # 100, not 10^2
    tasks = int(points["tasks"].max()) if len(points) else 0
    ax.set_xlabel(AXIS_LABELS[metric])
    ax.set_ylabel(f"Mean top-1 accuracy over {tasks} task{'s' if tasks != 1 else ''} (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, color="#e6e6e6", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    ax.margins(x=0.12, y=0.12)
    names = sorted(points["method"].unique(), key=methods.rank)
    handles = [Line2D([], [], marker=styles[name][0], color=styles[name][1], linestyle="none", markersize=8,
                      label=name) for name in names]
    if (points["compression"] != NONE).any():
        handles.append(Line2D([], [], marker="o", color="#333333", markerfacecolor="white", linestyle="none",
                              markersize=8, label="open: compressed\n(level labelled)"))
    handles.append(Line2D([], [], color="#888888", linestyle="--", label="Pareto frontier"))
    figure.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=9)
    labels = [(row[column], row["acc_mean_tasks"], _annotation(row, several_backbones)) for _, row in points.iterrows()]
    _place_labels(figure, ax, labels)
    return figure


LABEL_SIZE = 8  # points
# Where a label may sit relative to its point, in points (x offset as a fraction of the label's width): right
# above, right below, left above, left below, centred above, centred below.
_LABEL_SLOTS = [(0, 6, 2), (0, 6, -10), (-1, -6, 2), (-1, -6, -10), (-0.5, 0, 7), (-0.5, 0, -16)]
_MARKER_HALF = 5  # points: half a marker's extent, kept clear of labels


def _place_labels(figure: Figure, ax, labels: list[tuple[float, float, str]]) -> None:
    """Annotate points without labels covering each other or a marker: each label takes the first free slot
    around its point (or the least covered one), judged on the laid-out figure in points."""
    figure.draw_without_rendering()  # lays the figure out, so data -> display transforms are final
    to_points = 72.0 / figure.dpi
    anchors = [tuple(ax.transData.transform((x, y)) * to_points) for x, y, _ in labels]
    taken = [(px - _MARKER_HALF, py - _MARKER_HALF, px + _MARKER_HALF, py + _MARKER_HALF) for px, py in anchors]
    for (x, y, text), (px, py) in zip(labels, anchors):
        if not text:
            continue
        width, height = 0.6 * LABEL_SIZE * len(text), LABEL_SIZE  # a plain sans-serif's average glyph width
        boxes = [(px + fraction * width + dx, py + dy, px + fraction * width + dx + width, py + dy + height)
                 for fraction, dx, dy in _LABEL_SLOTS]
        box = min(boxes, key=lambda candidate: sum(_overlap(candidate, other) for other in taken))
        taken.append(box)
        ax.annotate(text, (x, y), xytext=(box[0] - px, box[1] - py), textcoords="offset points",
                    fontsize=LABEL_SIZE, color="#333333", va="bottom", ha="left")


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_pareto_plots(board: pd.DataFrame, folder: Path,
                       methods: Methods | None = None) -> tuple[list[Path], list[str]]:
    """``pareto_<metric>.png`` and ``.svg`` for throughput, GMACs and memory; with several devices, one file
    per device (``pareto_<metric>_<device>``). ``methods``: the runs' :class:`Methods` (display order, styles).
    A board of another accuracy than the default names it in the titles. Returns the files and notes on rows
    left out."""
    written, notes = [], []
    choice = accuracy_of(board)
    accuracy = "accuracy" if choice.is_default else f"accuracy ({choice.label})"
    folder.mkdir(parents=True, exist_ok=True)
    devices = list(dict.fromkeys(board["device_name"]))
    suite = str(board["suite"].iloc[0])
    for device in devices:
        rows = board[board["device_name"] == device]
        backbones = ", ".join(dict.fromkeys(rows["backbone"]))
        suffix = f"_{_slug(device)}" if len(devices) > 1 else ""
        for metric, (column, _) in PARETO_METRICS.items():
            left_out = rows[rows[[column, "acc_mean_tasks"]].isna().any(axis=1)]
            if len(left_out):
                notes.append(f"pareto_{metric}{suffix}: left out {len(left_out)} row(s) without mean accuracy or "
                             f"{column}: {', '.join(left_out['method'] + '@' + left_out['compression'])}")
            if len(left_out) == len(rows):
                continue
            title = f"{suite} suite: {accuracy} vs {TITLES[metric]}\n{backbones} on {device}"
            written += _save(pareto_figure(rows, metric, title, methods), folder / f"pareto_{metric}{suffix}")
    return written, notes


def _save(figure: Figure, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    # A fixed SVG id salt and no dates keep re-publishing unchanged results byte-identical in git.
    with matplotlib.rc_context({"svg.hashsalt": "adaptbench"}):
        figure.savefig(paths[0], dpi=DPI, metadata={"Software": None})
        figure.savefig(paths[1], metadata={"Date": None})
    return paths

