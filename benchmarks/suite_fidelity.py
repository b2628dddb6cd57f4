"""Does a board behave like VTAB-1k? Reads a sweep's run files (as the report does) and prints, per task, full
fine-tuning against LoRA with the suite's bounds on full fine-tuning (above chance + 15 points, at most 95 %),
then how far seeds disagree against the gaps the board's conclusions rest on.

    python benchmarks/suite_fidelity.py [RUNS ...]  (default: runs/final, the board's sweep)

Seed spread is the standard deviation over seeds of a row's accuracy (per task, or of its mean over tasks); a
gap between two rows is read against the larger of their two spreads.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from harness.report.load import load_runs
from harness.report.schema import ACCURACIES, DEFAULT_ACCURACY
from harness.vocabulary import is_uncompressed

FLOOR_ABOVE_CHANCE, CEILING = 15.0, 95.0
ACCURACY = ACCURACIES[DEFAULT_ACCURACY].column  # what the board reports


def row_label(frame: pd.DataFrame) -> pd.Series:
    return frame["method"] + frame["compression"].map(lambda level: "" if is_uncompressed(level) else f"@{level}")


def per_task(runs: pd.DataFrame) -> pd.DataFrame:
    """Full fine-tuning and LoRA per task: mean and seed spread, LoRA's gap, and whether full FT is in bounds."""
    chance = 100.0 / runs.groupby("task")["num_classes"].first()
    stats = runs[runs["row"].isin(["full_ft", "lora"])].groupby(["task", "row"])[ACCURACY].agg(["mean", "std"])
    table = stats.unstack("row")
    table.columns = [f"{row} {stat}" for stat, row in table.columns]
    table = table[["full_ft mean", "full_ft std", "lora mean", "lora std"]]
    table.insert(0, "chance", chance)
    table["lora - full_ft"] = table["lora mean"] - table["full_ft mean"]
    table["full_ft in bounds"] = ((table["full_ft mean"] >= table["chance"] + FLOOR_ABOVE_CHANCE)
                                  & (table["full_ft mean"] <= CEILING))
    return table


def seed_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Each row's mean over tasks, per seed (seeds missing a task are left out)."""
    tasks = runs["task"].nunique()
    complete = runs.groupby(["row", "seed"]).filter(lambda group: group["task"].nunique() == tasks)
    return complete.groupby(["row", "seed"])[ACCURACY].mean().unstack("seed")


def comparisons(rows: list[str]) -> list[tuple[str, str]]:
    """The gaps the board's conclusions rest on: LoRA against full FT, each compressed row against the small
    model at its level, PYRA against tome."""
    pairs = [("lora", "full_ft")]
    for row in rows:
        method, _, level = row.partition("@")
        if level and method != "small_peft" and f"small_peft@{level}" in rows:
            pairs.append((row, f"small_peft@{level}"))
        if method == "pyra" and f"tome@{level}" in rows:
            pairs.append((row, f"tome@{level}"))
    return [pair for pair in pairs if set(pair) <= set(rows)]


def gap_table(runs: pd.DataFrame, by_seed: pd.DataFrame) -> pd.DataFrame:
    """Each comparison's gap, on the mean over tasks and per task, against the seed spread."""
    means, spread = by_seed.mean(axis=1), by_seed.std(axis=1)
    task_stats = runs.groupby(["row", "task"])[ACCURACY].agg(["mean", "std"])
    lines = []
    for a, b in comparisons(list(by_seed.index)):
        gaps = task_stats.loc[a, "mean"] - task_stats.loc[b, "mean"]
        spreads = pd.concat([task_stats.loc[a, "std"], task_stats.loc[b, "std"]], axis=1).max(axis=1)
        lines.append({"comparison": f"{a} - {b}", "gap (mean over tasks)": means[a] - means[b],
                      "seed spread": max(spread[a], spread[b]),
                      "tasks where |gap| > spread": f"{int((gaps.abs() > spreads).sum())} of {len(gaps)}"})
    return pd.DataFrame(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, default=[Path("runs/final")])
    args = parser.parse_args()
    runs, _ = load_runs(args.runs)
    runs["row"] = row_label(runs)
    print(f"{len(runs)} runs, {runs['seed'].nunique()} seeds, {ACCURACY} in %\n")
    print("Full fine-tuning and LoRA per task (mean and std over seeds):")
    print(per_task(runs).round(1).reset_index().to_markdown(index=False))
    by_seed = seed_means(runs)
    print("\nMean over tasks per seed, and the spread over seeds:")
    summary = by_seed.assign(mean=by_seed.mean(axis=1), spread=by_seed.std(axis=1))
    summary.columns = [f"seed {column}" if isinstance(column, int) else column for column in summary.columns]
    print(summary.round(2).reset_index().to_markdown(index=False))
    print("\nGaps against seed spread (a gap smaller than the spread is within seed noise):")
    print(gap_table(runs, by_seed).round(2).to_markdown(index=False))


if __name__ == "__main__":
    main()
