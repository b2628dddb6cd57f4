"""One suite's report written into its folder: leaderboard, Pareto plots, the Adverse Compression table,
``--compare`` tables, ``--baseline`` differences and the ``--paper`` comparison."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from .baseline import accuracy_mismatch, baseline_diff, baseline_summary, read_baseline
from .board import leaderboard, missing_tasks
from .paired import MATCH_TOLERANCE, Selector, adverse_compression, compare_methods
from .paper import Published, paper_comparison, paper_difference, paper_notes
from .publish import clear_report_files
from .schema import ACCURACIES, DEFAULT_ACCURACY, ROW_KEY, Accuracy, Methods, accuracy_choice, row_label
from .tables import leaderboard_markdown, table_markdown


@dataclass
class SuiteReport:
    """What one suite's report wrote and what the console should say about it."""

    suite: str
    folder: Path
    board: pd.DataFrame
    adverse: pd.DataFrame
    accuracy: Accuracy = ACCURACIES[DEFAULT_ACCURACY]  # the per-run accuracy every table holds
    comparisons: dict[str, pd.DataFrame] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    baseline: str | None = None
    paper: Published | None = None  # --paper, where this suite has runs of the paper's backbone
    paper_table: pd.DataFrame | None = None
    paper_difference: str | None = None  # the main accuracy's mean and largest difference, one line
    written: list[Path] = field(default_factory=list)


# What a row's runs of one task should share besides the row key: the same data, seen the same way.
DATA_COLUMNS = {"data_fingerprint": "data", "data_img_size": "image sizes", "data_normalization": "normalisations"}


def pooled_data(runs: pd.DataFrame) -> list[str]:
    """Rows whose runs of one task differ in data, image size or normalisation (two copies of VTAB-1k, or
    --normalize changed between sweeps): the leaderboard averages them as if they were seeds, so say so."""
    notes = []
    for column, what in DATA_COLUMNS.items():
        if column not in runs:
            continue
        counts = runs.groupby([*ROW_KEY, "task"])[column].nunique()
        for (device, backbone, method, level, task), count in counts[counts > 1].items():
            label = row_label({"device_name": device, "backbone": backbone, "method": method, "compression": level})
            notes.append(f"{label} pools runs of {task} on {count} different {what} ({column}); report them "
                         f"from separate folders to keep them apart")
    return notes


def pooled_seeds(runs: pd.DataFrame) -> list[str]:
    """Rows holding several runs of one task and seed (other configs of it: another recipe, epochs or timing
    settings, swept into one folder): the leaderboard averages them, and its ``seeds`` counts seeds, not runs."""
    counts = runs.groupby([*ROW_KEY, "task", "seed"]).size()
    notes = []
    for (device, backbone, method, level, task, seed), count in counts[counts > 1].items():
        label = row_label({"device_name": device, "backbone": backbone, "method": method, "compression": level})
        notes.append(f"{label} averages {count} runs of {task} seed {seed} (configs that differ in more than the "
                     f"seed); report them from separate folders to keep them apart")
    return notes


def training_settings(runs: pd.DataFrame) -> list[str]:
    """Runs not trained as the paper trains (fp32, no TF32, eager): the fast settings are one flag away, and the
    leaderboard says when they were taken. A record without the column (schema 1, or from before the switches)
    trained in fp32, eagerly and without TF32; TF32 counts only where it was in effect (a GPU that has it)."""
    def count(column: str) -> int:
        return int(runs[column].eq(True).sum()) if column in runs else 0

    notes = []
    precisions = runs["train_precision"] if "train_precision" in runs else pd.Series(dtype=object)
    for precision, number in sorted(precisions[precisions.notna() & (precisions != "fp32")].value_counts().items()):
        notes.append(f"{number} of {len(runs)} runs trained in {precision} (--train-precision), not the paper's fp32")
    if count("train_tf32_effective"):
        notes.append(f"{count('train_tf32_effective')} of {len(runs)} runs used TF32 matmuls and convolutions "
                     f"(--tf32), not the paper's full fp32")
    if count("train_compile"):
        notes.append(f"{count('train_compile')} of {len(runs)} runs trained a torch.compile of the model "
                     f"(--compile-train)")
    return notes


def timing_settings(runs: pd.DataFrame) -> list[str]:
    """Runs timed without a warm-up time (``--bench-preset quick``): a process's first figures can read low, so
    their throughput is a smoke test's, not a leaderboard's."""
    unwarmed = int(runs["measure_warmup_seconds"].eq(0).sum()) if "measure_warmup_seconds" in runs else 0
    if not unwarmed:
        return []
    return [f"{unwarmed} of {len(runs)} runs were timed without a warm-up time (--bench-preset quick): their "
            f"throughput can read low"]


def _write_table(frame: pd.DataFrame, markdown: str, folder: Path, stem: str) -> list[Path]:
    csv_path, md_path = folder / f"{stem}.csv", folder / f"{stem}.md"
    frame.to_csv(csv_path, index=False)
    md_path.write_text(markdown)
    return [csv_path, md_path]


def write_suite_report(runs: pd.DataFrame, folder: Path, *, compare: Sequence[tuple[Selector, Selector]] = (),
                       baseline: Path | None = None, accuracy: str = DEFAULT_ACCURACY,
                       match_tolerance: float = MATCH_TOLERANCE, paper: Published | None = None) -> SuiteReport:
    """Leaderboard, Pareto plots, Adverse Compression table (verdicts for pairs within ``match_tolerance`` of
    equal throughput), comparisons, baseline differences and, for the suite and backbone of ``paper``, the
    comparison with its published figures, of one suite's runs, written into ``folder``, all of the per-run
    ``accuracy`` (:data:`~.schema.ACCURACIES`)."""
    from .plots import write_pareto_plots  # matplotlib loads only when a report is made

    folder.mkdir(parents=True, exist_ok=True)
    clear_report_files(folder)
    suite = str(runs["suite"].iloc[0])
    methods = Methods.of(runs)
    board = leaderboard(runs, accuracy)
    report = SuiteReport(suite, folder, board, adverse_compression(runs, accuracy, match_tolerance),
                         accuracy_choice(accuracy))
    report.warnings += [f"{label} lacks {', '.join(tasks)}: its averages over them are NaN"
                        for label, tasks in missing_tasks(board).items()]
    unpretrained = int((~runs["pretrained"].astype(bool)).sum()) if "pretrained" in runs else 0
    if unpretrained:
        report.warnings.append(f"{unpretrained} of {len(runs)} runs adapted a backbone without pretrained weights")
    on_train_only = int((runs["train_selection"] == "val").sum()) if "train_selection" in runs else 0
    if 0 < on_train_only < len(runs):
        report.warnings.append(f"{on_train_only} of {len(runs)} runs trained on the train split alone (--selection "
                               f"val), the others on train + val: rows may mix the two protocols")
    report.warnings += training_settings(runs) + timing_settings(runs)
    report.warnings += pooled_data(runs) + pooled_seeds(runs)
    report.written += _write_table(board, leaderboard_markdown(board), folder, "leaderboard")
    plots, skipped_plots = write_pareto_plots(board, folder, methods)
    report.written += plots
    report.warnings += skipped_plots
    report.written += _write_table(report.adverse, table_markdown(report.adverse, report.accuracy), folder,
                                   "adverse_compression")
    for a, b in compare:
        table = compare_methods(runs, a, b, accuracy)
        if table.empty:
            report.warnings.append(f"--compare {a},{b}: no runs of both on one device and backbone in suite {suite}")
            continue
        stem = _file_safe(f"compare_{a}_vs_{b}")
        report.comparisons[stem] = table
        report.written += _write_table(table, table_markdown(table, report.accuracy), folder, stem)
    if baseline is not None:
        old = read_baseline(baseline)
        diff = baseline_diff(board, old, methods)
        report.baseline = baseline_summary(diff, str(baseline))
        mismatch = accuracy_mismatch(board, old, str(baseline))
        if mismatch:
            report.warnings.append(mismatch)
        report.written += _write_table(diff, table_markdown(diff), folder, "baseline_diff")
    if paper is not None and paper.suite == suite:
        _add_paper(report, paper)
    return report


def _add_paper(report: SuiteReport, paper: Published) -> None:
    table = paper_comparison(report.board, paper)
    if table.empty:
        backbones = ", ".join(sorted(set(report.board["backbone"].astype(str))))
        report.warnings.append(f"--paper {paper.name}: no runs of {paper.backbone} in suite {report.suite} to "
                               f"compare with the paper (the suite's backbones: {backbones})")
        return
    report.paper, report.paper_table, report.paper_difference = paper, table, paper_difference(table, paper)
    report.warnings += paper_notes(table, paper, report.accuracy)
    heading = f"{paper.source}, beside this board (ours - paper; speed-ups over each side's own uncompressed row).\n\n"
    report.written += _write_table(table, heading + table_markdown(table, report.accuracy), report.folder,
                                   _file_safe(f"paper_{paper.name}"))


def _file_safe(name: str) -> str:
    return "".join(char if char.isalnum() or char in "._-" else "-" for char in name)
