"""The analysis report: a pure function of the run files.

Run records (one JSON per run, see :mod:`harness.store` and :mod:`harness.results`) from any number of folders
become a tidy frame of finished runs plus a list of skipped files with reasons (:mod:`.load`); from that frame
come the leaderboard (one row per device, backbone, method and compression level; :mod:`.board`), the Adverse
Compression and ``--compare`` tables (:mod:`.paired`), ``--baseline`` differences (:mod:`.baseline`), their
Markdown and console forms (:mod:`.tables`), Pareto plots (:mod:`.plots`, which loads matplotlib, imported only
when a report is written), the board beside a paper's published figures (``--paper``: :mod:`.paper`), one
suite's written report (:mod:`.write`) and the provenance of a published result (:mod:`.publish`). What the
frames' columns mean, the order of levels, groups and methods, and which per-run accuracy a report is about
(``--accuracy``: :data:`.schema.ACCURACIES`) is :mod:`.schema`'s. Each record says its own suite, group, method
role and display order, so no plugin registry is consulted.
"""
from .baseline import accuracy_mismatch, baseline_diff, baseline_summary, read_baseline
from .board import (distinct, leaderboard, missing_tasks, ordered_groups, ordered_tasks, pareto_front, ppt,
                    speedup_reference)
from .load import Skipped, load_runs, read_run
from .paper import Published, paper_comparison, published
from .paired import (ADVERSE_COLUMNS, COMPARE_COLUMNS, MATCH_TOLERANCE, Selector, adverse_compression, check_compare,
                     compare_methods, level_pairs, parse_compare)
from .publish import PUBLISHED_FILES, REPORT_FILES, clear_report_files, provenance, publish, results_root
from .schema import (ACCURACIES, ACCURACY_COLUMN, BASELINE_METRICS, DEFAULT_ACCURACY, PARETO_METRICS, ROW_KEY,
                     Accuracy, Methods, accuracy_choice, accuracy_of, higher_is_better, row_label, sort_rows)
from .tables import (accuracy_title, console_leaderboard, leaderboard_markdown, paper_lines, table_markdown,
                     verdict_lines)
from .write import SuiteReport, write_suite_report

__all__ = [
    "accuracy_mismatch", "baseline_diff", "baseline_summary", "read_baseline", "distinct", "leaderboard",
    "missing_tasks", "ordered_groups", "ordered_tasks", "pareto_front", "ppt", "speedup_reference", "Skipped",
    "load_runs", "read_run", "Published", "paper_comparison", "published", "ADVERSE_COLUMNS",
    "COMPARE_COLUMNS", "MATCH_TOLERANCE", "Selector", "adverse_compression", "check_compare", "compare_methods",
    "level_pairs", "parse_compare", "PUBLISHED_FILES", "REPORT_FILES",
    "clear_report_files", "provenance", "publish", "results_root", "ACCURACIES", "ACCURACY_COLUMN",
    "BASELINE_METRICS", "DEFAULT_ACCURACY", "PARETO_METRICS", "ROW_KEY", "Accuracy", "Methods", "accuracy_choice",
    "accuracy_of", "higher_is_better", "row_label", "sort_rows", "accuracy_title", "console_leaderboard",
    "leaderboard_markdown", "paper_lines", "table_markdown", "verdict_lines", "SuiteReport", "write_suite_report",
]
