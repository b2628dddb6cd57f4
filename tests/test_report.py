"""The report as a pure function of hand-made run files whose numbers can be checked by hand."""
import ast
import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import run_record, write_runs

from harness import UserError, report
from harness.cli import main
from harness.vocabulary import REFERENCE, SMALL_MODEL_BASELINE

REPO = Path(__file__).resolve().parent.parent
BUILTIN_METHODS = ("full_ft", "lora", "tome", "pyra", "diffrate", "small_peft")

TASKS = ["digits", "photos", "cells", "count", "orientation"]  # the offline suite: 2 natural, 1 specialized, 2 structured
# Natural (80 + 60) / 2 = 70, specialized 90, structured (40 + 50) / 2 = 45: the mean of the five task means is
# 64, the mean of the three group means 68.33.
ACCURACY = {"digits": 80.0, "photos": 60.0, "cells": 90.0, "count": 40.0, "orientation": 50.0}


def grid(method="lora", compression="none", shift=0.0, seeds=(0,), tasks=TASKS, **metrics) -> list[dict]:
    """One method at one level on every task and seed, accuracy = ACCURACY + shift + seed (``role``, ``order``,
    ``suite`` and ``group`` go to :func:`run_record`'s record info, other keywords to its metrics)."""
    return [run_record(method, task, seed, ACCURACY[task] + shift + seed, compression, **metrics)
            for task in tasks for seed in seeds]


def board_of(tmp_path, records) -> pd.DataFrame:
    runs, skipped = report.load_runs([write_runs(tmp_path / "runs", records)])
    assert not skipped, skipped
    return report.leaderboard(runs).set_index(["method", "compression"])


def test_group_means_and_both_averages(tmp_path):
    row = board_of(tmp_path, grid()).loc[("lora", "none")]
    assert (row["acc_natural"], row["acc_specialized"], row["acc_structured"]) == (70.0, 90.0, 45.0)
    assert row["acc_mean_tasks"] == pytest.approx(64.0)
    assert row["acc_mean_groups"] == pytest.approx((70 + 90 + 45) / 3)
    assert row["tasks"] == 5 and row["suite"] == "offline" and row["device_name"] == "CPU A"


def test_mean_and_std_over_seeds(tmp_path):
    board = board_of(tmp_path, grid(seeds=(0, 1, 2)) + grid("full_ft"))
    lora, full_ft = board.loc[("lora", "none")], board.loc[("full_ft", "none")]
    assert lora["acc_count"] == 41.0 and lora["acc_count_std"] == pytest.approx(1.0)  # 40, 41, 42 (ddof=1)
    assert lora["seeds"] == 3 and lora["runs"] == 15
    assert full_ft["seeds"] == 1 and math.isnan(full_ft["acc_count_std"])


def test_throughput_is_the_median_and_speedup_divides_by_uncompressed_lora(tmp_path):
    records = (grid(infer_img_per_s=1000.0) + grid("full_ft", infer_img_per_s=800.0)
               + grid("tome", "high", infer_img_per_s=2500.0)
               + grid("small_peft", "none", infer_img_per_s=4000.0))
    records[0]["metrics"]["infer_img_per_s"] = 99_999.0  # one outlier of five: the median ignores it
    board = board_of(tmp_path, records)
    assert board.loc[("lora", "none"), "infer_img_per_s"] == 1000.0
    assert board["speedup"].to_dict() == {("full_ft", "none"): 0.8, ("lora", "none"): 1.0, ("tome", "high"): 2.5,
                                          ("small_peft", "none"): 4.0}
    assert set(board["speedup_reference"]) == {"lora"}


def test_throughput_spread_over_a_rows_runs_is_their_interquartile_range(tmp_path):
    """Runs measured at different times differ with the machine; the board says by how much, beside the median."""
    records = grid() + grid("tome", "high") + grid("full_ft", tasks=["digits"])
    for record, rate in zip(records, [900.0, 950.0, 1000.0, 1100.0, 1200.0] + [2000.0] * 5 + [800.0]):
        record["metrics"]["infer_img_per_s"] = rate
    board = report.leaderboard(report.load_runs([write_runs(tmp_path / "runs", records)])[0])
    spread = board.set_index("method")["infer_img_per_s_iqr_over_runs"]
    assert (spread["lora"], spread["tome"]) == (150.0, 0.0) and math.isnan(spread["full_ft"])  # one run: no spread
    lines = report.leaderboard_markdown(board).splitlines()
    assert "1,000 (15 %)" in next(line for line in lines if "| lora" in line)  # quartiles 950, 1100; median 1000
    assert "| 800 " in next(line for line in lines if "| full_ft" in line)
    console = report.console_leaderboard(board)
    assert "1,000 (15 %)" in console and "2,000 (0 %)" in console and "800 (" not in console


def test_speedup_falls_back_to_full_ft_then_nan(tmp_path):
    board = board_of(tmp_path / "a", grid("full_ft", infer_img_per_s=500.0) + grid("tome", "low", infer_img_per_s=1000.0))
    assert board.loc[("tome", "low"), "speedup"] == 2.0 and board.loc[("tome", "low"), "speedup_reference"] == "full_ft"
    # small_peft runs a smaller backbone even uncompressed: never the reference.
    board = board_of(tmp_path / "b", grid("small_peft", infer_img_per_s=500.0) + grid("tome", "low"))
    assert board["speedup"].isna().all()


def test_ppt_is_v_petl_benchs_formula(tmp_path):
    assert report.ppt(64.0, 1e7) == pytest.approx(0.64 * math.exp(-math.log10(2)))
    assert report.ppt(64.0, 0) == pytest.approx(0.64)
    row = board_of(tmp_path, grid(tunable_params=90_000_000)).loc[("lora", "none")]
    assert row["ppt"] == pytest.approx(0.64 * math.exp(-1.0))  # log10(9 + 1) = 1


def test_pareto_front_membership():
    # (throughput, accuracy): b dominates d; a and b trade off; c and c' are identical; e has no accuracy.
    x = [100, 200, 300, 300, 150, 400]
    y = [80, 70, 60, 60, 65, np.nan]
    assert report.pareto_front(x, y, x_higher_better=True).tolist() == [True, True, True, True, False, False]
    # Lower is better (GMACs): now the cheapest point with the best accuracy at its cost wins.
    assert report.pareto_front([1.0, 2.0, 1.0], [60, 70, 50], x_higher_better=False).tolist() == [True, True, False]


def test_pareto_columns_are_per_device(tmp_path):
    records = (grid(infer_img_per_s=1000.0) + grid("tome", "high", shift=-5, infer_img_per_s=500.0)
               + [dict(r, environment={**r["environment"], "device_name": "GPU B"})
                  for r in grid("tome", "low", shift=-9, infer_img_per_s=300.0)])
    runs, _ = report.load_runs([write_runs(tmp_path / "runs", records)])
    board = report.leaderboard(runs).set_index(["device_name", "method", "compression"])
    assert not board.loc[("CPU A", "tome", "high"), "pareto_throughput"]  # slower and less accurate than lora
    assert board.loc[("GPU B", "tome", "low"), "pareto_throughput"]  # alone on its device, so on its frontier


def test_missing_task_makes_averages_nan_and_is_named(tmp_path):
    records = grid() + grid("full_ft", tasks=["digits", "photos", "cells", "count"])
    board = board_of(tmp_path, records)
    full_ft = board.loc[("full_ft", "none")]
    assert math.isnan(full_ft["acc_mean_tasks"]) and math.isnan(full_ft["acc_mean_groups"])
    assert math.isnan(full_ft["acc_structured"]) and full_ft["acc_natural"] == 70.0  # other groups stand
    assert full_ft["tasks"] == 4
    assert report.missing_tasks(board.reset_index()) == {"full_ft (vit_micro_base_patch4_32, CPU A)": ["orientation"]}


def test_leaderboard_markdown_marks_the_best_of_each_column(tmp_path):
    records = grid(gmacs=0.1) + grid("tome", "high", shift=-2, gmacs=0.03)
    text = report.leaderboard_markdown(report.leaderboard(report.load_runs([write_runs(tmp_path / "r", records)])[0]))
    lora = next(line for line in text.splitlines() if "| lora" in line)
    tome = next(line for line in text.splitlines() if "| tome" in line)
    assert "**64.00**" in lora and "**62.00**" not in tome  # accuracy: higher is better
    assert "**0.03**" in tome and "**0.1**" not in lora  # GMACs: lower is better


def test_adverse_compression_verdicts(tmp_path):
    rng = np.random.default_rng(0)

    def noisy(records, spread):
        for record, sign in zip(records, [1, -1] * len(records)):
            record["metrics"]["test_acc_best"] += sign * spread * rng.uniform(0.5, 1)
        return records

    seeds = (0, 1)  # 5 tasks x 2 seeds = 10 pairs
    records = (grid("small_peft", "high", seeds=seeds, matched_throughput_ratio=1.05)
               + grid("small_peft", "low", seeds=seeds, matched_throughput_ratio=0.95)
               + noisy(grid("tome", "high", shift=-3, seeds=seeds), 0.3)
               + noisy(grid("pyra", "high", shift=+3, seeds=seeds), 0.3)
               + noisy(grid("diffrate", "high", seeds=seeds), 3.0)
               + noisy(grid("tome", "low", shift=0.1, seeds=seeds), 0.2)
               + grid("pyra", "2x", seeds=seeds) + grid("lora", seeds=seeds))
    runs, _ = report.load_runs([write_runs(tmp_path / "runs", records)])
    table = report.adverse_compression(runs).set_index(["method", "compression"])
    assert table["verdict"].to_dict() == {
        ("tome", "low"): "equivalent", ("tome", "high"): "adverse", ("pyra", "high"): "compression wins",
        ("pyra", "2x"): "no small-model baseline run", ("diffrate", "high"): "inconclusive"}
    assert table.loc[("pyra", "2x"), "note"] == "run small_peft at compression 2x on this device and backbone"
    tome = table.loc[("tome", "high")]
    assert tome["n"] == 10 and tome["pairing"] == "task x seed" and tome["mean_diff"] == pytest.approx(-3, abs=0.3)
    assert tome["ci_high"] < 0 and tome["wilcoxon_p"] < 0.05


@pytest.mark.parametrize("ratio, tolerance, verdict", [(1.23, 0.10, "unmatched (ratio 1.23x)"),
                                                       (0.85, 0.10, "unmatched (ratio 0.85x)"),
                                                       (1.23, 0.25, "adverse"), (1.08, 0.10, "adverse")])
def test_adverse_compression_gives_a_verdict_only_at_matched_throughput(tmp_path, ratio, tolerance, verdict):
    records = (grid("small_peft", "high", seeds=(0, 1), matched_throughput_ratio=ratio)
               + grid("tome", "high", shift=-3, seeds=(0, 1)))
    runs, _ = report.load_runs([write_runs(tmp_path / "runs", records)])
    (row,) = report.adverse_compression(runs, tolerance=tolerance).to_dict("records")
    assert row["verdict"] == verdict and row["mean_diff"] == pytest.approx(-3)  # the difference is still given
    assert ("outside" in row["note"]) == verdict.startswith("unmatched")


def test_a_method_the_small_model_was_not_timed_against_is_matched_through_the_rows_of_the_one_it_was(tmp_path):
    """small_peft times itself beside tome; diffrate at that level, twice as fast as tome here, is not matched."""
    records = (grid("small_peft", "high", seeds=(0, 1), matched_throughput_ratio=1.02, matched_method="tome")
               + grid("tome", "high", shift=-3, seeds=(0, 1))
               + grid("diffrate", "high", shift=-3, seeds=(0, 1), infer_img_per_s=2000.0)
               + grid("pyra", "high", shift=-3, seeds=(0, 1), infer_img_per_s=1020.0))
    runs, _ = report.load_runs([write_runs(tmp_path / "runs", records)])
    table = report.adverse_compression(runs).set_index("method")
    assert table.loc["tome", "matched_throughput_ratio"] == pytest.approx(1.02)
    assert table.loc["tome", "verdict"] == "adverse" and "side by side" not in table.loc["tome", "note"]
    assert table.loc["diffrate", "matched_throughput_ratio"] == pytest.approx(0.51)
    assert table.loc["diffrate", "verdict"] == "unmatched (ratio 0.51x)"
    assert "ratio 1.02 (timed side by side with tome) x 0.50 (tome's median img/s over diffrate's)" in \
        table.loc["diffrate", "note"]
    assert table.loc["pyra", "matched_throughput_ratio"] == pytest.approx(1.0)
    assert table.loc["pyra", "verdict"] == "adverse"


@pytest.mark.parametrize("ratio", [0.9, 1.1])
def test_the_tolerances_bounds_are_matched_both_ways(tmp_path, ratio):
    records = (grid("small_peft", "high", seeds=(0, 1), matched_throughput_ratio=ratio)
               + grid("tome", "high", shift=-3, seeds=(0, 1)))
    runs, _ = report.load_runs([write_runs(tmp_path / "runs", records)])
    assert report.adverse_compression(runs)["verdict"].tolist() == ["adverse"]


def test_report_match_tolerance_option_reaches_the_verdicts(tmp_path):
    from click.testing import CliRunner

    from harness.cli import main

    records = (grid("small_peft", "high", seeds=(0, 1), matched_throughput_ratio=1.2)
               + grid("tome", "high", shift=-3, seeds=(0, 1)))
    runs = write_runs(tmp_path / "runs", records)
    for tolerance, verdict in (("0.1", "unmatched (ratio 1.20x)"), ("0.3", "adverse")):
        result = CliRunner().invoke(main, ["report", str(runs), "--out", str(tmp_path / "rep"),
                                           "--match-tolerance", tolerance], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert verdict in result.output
        assert verdict in (tmp_path / "rep" / "offline" / "adverse_compression.md").read_text()


def test_the_report_commands_default_tolerance_is_the_reports():
    from harness.cli import report as report_command

    option = next(param for param in report_command.params if param.name == "match_tolerance")
    assert option.default == report.MATCH_TOLERANCE


def test_compare_pairs_levels_each_method_ran(tmp_path):
    records = (grid("tome", "low", seeds=(0, 1)) + grid("tome", "high", shift=-2, seeds=(0, 1))
               + grid("pyra", "high", shift=-1, seeds=(0, 1)) + grid("lora", shift=1, seeds=(0, 1)))
    runs, _ = report.load_runs([write_runs(tmp_path / "runs", records)])
    against_lora = report.compare_methods(runs, *report.parse_compare("tome,lora"))
    assert against_lora[["a", "b"]].values.tolist() == [["tome@low", "lora"], ["tome@high", "lora"]]
    assert against_lora["mean_diff"].tolist() == pytest.approx([-1.0, -3.0])
    assert against_lora["verdict"].tolist() == ["tome worse", "tome worse"]
    shared = report.compare_methods(runs, *report.parse_compare("pyra,tome"))
    assert shared[["a", "b"]].values.tolist() == [["pyra@high", "tome@high"]]  # only the level both ran
    pinned = report.compare_methods(runs, *report.parse_compare("tome@low,pyra"))
    assert pinned[["a", "b", "verdict"]].values.tolist() == [["tome@low", "pyra@high", "tome better"]]
    with pytest.raises(UserError, match="two methods"):
        report.parse_compare("tome")


@pytest.mark.parametrize("make, reason", [
    (lambda folder: folder / "absent", "folder not found"),
    (lambda folder: folder, "no run files (*.json) in it"),
    (lambda folder: _file(folder, "broken.json", '{"key": "abc", "config": '), "not valid JSON"),
    (lambda folder: _file(folder, "other.json", json.dumps({"name": "a tool's settings"})), "not a run record"),
    (lambda folder: _file(folder, "r.json", json.dumps(run_record(status="running"))), "still running"),
    (lambda folder: _file(folder, "f.json", json.dumps(run_record(status="failed"))),
     "failed: loss became nan at epoch 1"),
    (lambda folder: _file(folder, "old.json", json.dumps(schema_1(run_record()))),
     "written by an older adaptbench (schema 1); upgrade it once with: python run.py migrate "),
    (lambda folder: _file(folder, "n.json", json.dumps({**run_record(), "task_info": {"group": "natural"}})),
     "not a run record (task_info names no suite)"),
])
def test_bad_input_is_skipped_with_its_reason(tmp_path, make, reason):
    folder = tmp_path / "runs"
    folder.mkdir()
    target = make(folder)
    runs, skipped = report.load_runs([folder if target.is_file() else target])
    assert runs.empty and len(skipped) == 1
    assert reason in skipped[0].reason and str(target) == skipped[0].path


def _file(folder, name, text):
    (folder / name).write_text(text)
    return folder / name


def schema_1(record):
    """The record as adaptbench wrote it before records described their method and task."""
    return {key: value for key, value in record.items() if key not in ("schema", "method_info", "task_info")}


def test_valid_runs_survive_beside_bad_files_and_results_csv_is_not_a_run(tmp_path):
    folder = write_runs(tmp_path / "runs", grid())
    (folder / "results.csv").write_text("method,task\nlora,count\n")
    _file(folder, "broken.json", "{")
    copy = write_runs(tmp_path / "copy", grid()[:1])  # the same config on the same device again
    runs, skipped = report.load_runs([folder, copy])
    assert len(runs) == 5
    assert [(item.path.split("/")[-1], item.reason.split(" (")[0]) for item in skipped] == [
        ("broken.json", "not valid JSON"), (next(copy.glob("*.json")).name, skipped[1].reason.split(" (")[0])]
    assert skipped[1].reason.startswith("the same config on the same device as ")


def test_baseline_diff(tmp_path):
    old = report.leaderboard(report.load_runs([write_runs(tmp_path / "old", grid() + grid("full_ft"))])[0])
    new = report.leaderboard(report.load_runs([write_runs(
        tmp_path / "new", grid(shift=1.5, infer_img_per_s=1100.0) + grid("tome", "high"))])[0])
    diff = report.baseline_diff(new, old).set_index(["method", "compression"])
    assert diff["change"].to_dict() == {("full_ft", "none"): "removed", ("lora", "none"): "both",
                                        ("tome", "high"): "added"}
    lora = diff.loc[("lora", "none")]
    assert lora["acc_mean_tasks_delta"] == pytest.approx(1.5) and lora["acc_mean_groups_delta"] == pytest.approx(1.5)
    assert lora["infer_img_per_s_delta"] == pytest.approx(100.0) and lora["gmacs_delta"] == 0
    summary = report.baseline_summary(diff.reset_index(), "old.csv")
    assert "1 row(s) in both" in summary and "1 added, 1 removed" in summary and "+1.5" in summary
    with pytest.raises(UserError, match="not a leaderboard CSV"):
        report.baseline_diff(new, pd.DataFrame({"method": ["lora"]}))


def test_baseline_pairs_rows_published_on_another_device(tmp_path):
    old = report.leaderboard(report.load_runs([write_runs(tmp_path / "old", grid() + grid("full_ft"))])[0])
    new = report.leaderboard(report.load_runs([write_runs(tmp_path / "new", grid(shift=2.0))])[0])
    old["device_name"] = "AMD EPYC"
    diff = report.baseline_diff(new, old).set_index(["method", "compression"])
    assert diff["change"].to_dict() == {("full_ft", "none"): "removed", ("lora", "none"): "other device"}
    lora = diff.loc[("lora", "none")]
    assert lora["device_name"] == f"{new['device_name'].iloc[0]} (was AMD EPYC)"
    assert lora["acc_mean_tasks_delta"] == pytest.approx(2.0)
    summary = report.baseline_summary(diff.reset_index(), "old.csv")
    assert "1 row(s) in both (1 on another device)" in summary and "0 added, 1 removed" in summary


def test_provenance_groups_environments_and_lists_every_run(tmp_path):
    records = grid() + [dict(r, environment={**r["environment"], "torch": "3.y", "date": "2026-02-02T00:00:00+00:00"})
                        for r in grid("tome", "high")]
    runs, _ = report.load_runs([write_runs(tmp_path / "runs", records)])
    record = report.provenance(runs, [report.Skipped("x.json", "still running")], "run.py report runs --publish")
    assert record["command"] == "run.py report runs --publish"
    assert sorted(run["key"] for run in record["runs"]) == sorted(r["key"] for r in records)
    assert [(env["environment"]["torch"], len(env["runs"])) for env in record["environments"]] == [("2.x", 5),
                                                                                                ("3.y", 5)]
    assert record["environments"][1]["first_date"] == "2026-02-02T00:00:00+00:00"
    assert set(record["git"]) == {"commit", "dirty"} and record["skipped"] == [{"path": "x.json",
                                                                              "reason": "still running"}]


# ---------------------------------------------------------------------- records describe their methods and tasks

def test_leaderboard_and_adverse_columns_are_the_published_ones(tmp_path):
    """What the records add (roles, orders, split sizes) stays out of the files the report writes."""
    records = grid() + grid("tome", "high") + grid("small_peft", "high")
    runs, _ = report.load_runs([write_runs(tmp_path / "runs", records)])
    published = REPO / "results" / "offline"
    assert list(report.leaderboard(runs).columns) == list(pd.read_csv(published / "leaderboard.csv", nrows=0).columns)
    assert report.ADVERSE_COLUMNS == list(pd.read_csv(published / "adverse_compression.csv", nrows=0).columns)
    assert list(report.adverse_compression(runs).columns) == report.ADVERSE_COLUMNS


def test_rows_follow_the_recorded_order_then_names(tmp_path):
    records = (grid("zeta") + grid("alpha") + grid("late", order=9) + grid("tome", "high") + grid("tome", "low")
               + grid("lora") + grid("early", order=-1) + grid("tome", "2x"))
    board = board_of(tmp_path, records)
    assert board.index.tolist() == [("early", "none"), ("lora", "none"), ("tome", "low"), ("tome", "high"),
                                    ("tome", "2x"), ("late", "none"), ("alpha", "none"), ("zeta", "none")]


def test_the_small_model_baseline_is_whichever_method_declares_the_role(tmp_path):
    """A plugin's baseline is paired exactly as the built-in one; the built-in's name means nothing by itself."""
    seeds = (0, 1)
    records = (grid("mysmall", "high", seeds=seeds, role=SMALL_MODEL_BASELINE, small_backbone="vit_tiny")
               + grid("tome", "high", shift=-3, seeds=seeds) + grid("tome", "low", seeds=seeds)
               + grid("lora", seeds=seeds))
    runs, _ = report.load_runs([write_runs(tmp_path / "runs", records)])
    table = report.adverse_compression(runs)
    assert table[["method", "compression", "small_backbone", "n", "verdict"]].values.tolist() == [
        ["tome", "low", np.nan, 0, "no small-model baseline run"], ["tome", "high", "vit_tiny", 10, "adverse"]]
    assert table["note"].iloc[0] == "run mysmall at compression low on this device and backbone"
    written = report.write_suite_report(runs, tmp_path / "report").written
    console = report.verdict_lines(table) + report.console_leaderboard(report.leaderboard(runs))
    assert "tome@high - small-model baseline" in console
    assert all("small_peft" not in text for text in [console, *(path.read_text() for path in written
                                                                 if path.suffix in (".csv", ".md", ".svg"))])
    # Without the role, small_peft is one more compressed method, and no baseline's name is known.
    runs, _ = report.load_runs([write_runs(tmp_path / "other", grid("small_peft", "high", role=None))])
    table = report.adverse_compression(runs)
    assert table[["method", "verdict"]].values.tolist() == [["small_peft", "no small-model baseline run"]]
    assert table["note"].iloc[0] == ("run a method with role 'small-model baseline' at compression high on this "
                                     "device and backbone")


def test_every_small_model_baseline_at_a_level_gets_its_row(tmp_path):
    records = (grid("tome", "high", shift=-3, seeds=(0, 1)) + grid("small_peft", "high", seeds=(0, 1))
               + grid("mysmall", "high", seeds=(0, 1), role=SMALL_MODEL_BASELINE, order=8))
    runs, _ = report.load_runs([write_runs(tmp_path / "runs", records)])
    table = report.adverse_compression(runs)
    assert table["note"].tolist() == ["against small_peft", "against mysmall"]  # in display order
    assert table["verdict"].tolist() == ["adverse", "adverse"]


def test_a_plugin_method_with_the_reference_role_is_the_speedup_reference(tmp_path):
    records = (grid("full_ft", infer_img_per_s=800.0) + grid("myref", role=REFERENCE, infer_img_per_s=400.0)
               + grid("tome", "high", infer_img_per_s=2000.0)
               + grid("mysmall", role=SMALL_MODEL_BASELINE, order=0, infer_img_per_s=100.0))
    board = board_of(tmp_path / "a", records)
    assert set(board["speedup_reference"]) == {"myref"}  # though full_ft comes first in display order
    assert board.loc[("tome", "high"), "speedup"] == 5.0 and board.loc[("full_ft", "none"), "speedup"] == 2.0
    # Two references: the first in display order. No reference: the first uncompressed method in display
    # order, never a small-model baseline (it runs a smaller backbone).
    board = board_of(tmp_path / "b", records + grid("lora", infer_img_per_s=1000.0))
    assert set(board["speedup_reference"]) == {"lora"}
    board = board_of(tmp_path / "c", grid("alpha", infer_img_per_s=250.0) + grid("zeta", order=7, infer_img_per_s=500.0)
                     + grid("mysmall", role=SMALL_MODEL_BASELINE, order=0, infer_img_per_s=100.0))
    assert set(board["speedup_reference"]) == {"zeta"}


def test_a_schema_1_record_is_skipped_with_the_command_that_upgrades_it(tmp_path):
    records = grid()
    folder = write_runs(tmp_path / "old runs", [schema_1(record) for record in records[:2]] + records[2:])
    runs, skipped = report.load_runs([folder])
    assert len(runs) == 3
    hint = f"upgrade it once with: python run.py migrate {shlex.quote(str(folder))}"  # the folder has a space
    assert [item.reason for item in skipped] == [f"written by an older adaptbench (schema 1); {hint}"] * 2


def test_a_task_without_a_group_counts_in_the_mean_over_tasks_only(tmp_path):
    row = board_of(tmp_path / "a", grid() + [run_record("lora", "extra", 0, 94.0, group=None)]).loc[("lora", "none")]
    assert row["acc_mean_tasks"] == pytest.approx((5 * 64 + 94) / 6)
    assert (row["acc_natural"], row["acc_specialized"], row["acc_structured"]) == (70.0, 90.0, 45.0)
    assert row["acc_mean_groups"] == pytest.approx((70 + 90 + 45) / 3)
    # Free-form groups follow VTAB's by name; tasks no registry knows load all the same (no --plugins).
    mine = [run_record("lora", task, 0, acc, suite="mine", group=group)
            for task, acc, group in [("xrays", 80.0, "medical"), ("maps", 60.0, "aerial"), ("roofs", 70.0, "aerial"),
                                     ("odd", 10.0, None), ("zoo", 40.0, "natural")]]
    board = board_of(tmp_path / "b", mine)
    assert [column for column in board.columns if column.startswith("acc_") and not column.endswith("_std")] == [
        "acc_zoo", "acc_maps", "acc_roofs", "acc_xrays", "acc_odd", "acc_natural", "acc_aerial", "acc_medical",
        "acc_mean_tasks", "acc_mean_groups"]
    row = board.loc[("lora", "none")]
    assert (row["acc_aerial"], row["acc_mean_tasks"], row["acc_mean_groups"]) == (65.0, 52.0, (40 + 65 + 80) / 3)
    header = next(line for line in report.leaderboard_markdown(board.reset_index()).splitlines()
                  if line.startswith("| device"))
    headers = [cell.strip() for cell in header.strip("|").split("|")]
    assert headers[headers.index("seeds"):headers.index("mean (groups)") + 1] == [
        "seeds", "natural", "aerial", "medical", "mean (tasks)", "mean (groups)"]
    # No task with a group: no group average at all.
    row = board_of(tmp_path / "c", [run_record("lora", task, 0, 50.0, suite="flat", group=None)
                                    for task in ("a", "b")]).loc[("lora", "none")]
    assert row["acc_mean_tasks"] == 50.0 and math.isnan(row["acc_mean_groups"])


def _code_words(source: str):
    """Every name and string constant of a module's code: docstrings (any bare string statement) left out."""
    tree = ast.parse(source)
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value
        elif isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, ast.arg):
            yield node.arg
        elif isinstance(node, ast.keyword) and node.arg:
            yield node.arg
        elif isinstance(node, ast.alias):
            yield from (node.name, node.asname or "")
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_the_report_names_no_built_in_method_and_asks_no_registry():
    """Roles and order come from the records, so the report's code knows no method by name."""
    pattern = re.compile(rf"(?<![a-z0-9])({'|'.join(BUILTIN_METHODS)})(?![a-z0-9])", re.IGNORECASE)
    modules = sorted((REPO / "harness" / "report").glob("*.py"))
    assert {path.stem for path in modules} >= {"__init__", "schema", "load", "board", "paired", "plots", "publish"}
    for path in modules:
        words = list(_code_words(path.read_text()))
        assert [word for word in words if pattern.search(word)] == [], path.name
        assert [word for word in words if "registry" in word.split(".")] == [], path.name
    assert not (REPO / "harness" / "report.py").exists() and not (REPO / "harness" / "plots.py").exists()


# ----------------------------------------------------------------------------------------------- command line

def invoke(*args, env=None):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env=env)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """One report over two suites' worth of files, with a comparison, a baseline and --publish."""
    root = tmp_path_factory.mktemp("report")
    seeds = (0, 1)
    runs = write_runs(root / "runs", grid(seeds=seeds) + grid("tome", "high", shift=-3, seeds=seeds,
                                                               infer_img_per_s=2000.0)
                      + grid("small_peft", "high", seeds=seeds, small_backbone="vit_micro_small_patch4_32")
                      + [dict(r, config={**r["config"], "pretrained": False})
                         for r in grid("full_ft", tasks=TASKS[:4])])
    (runs / "stuck.json").write_text(json.dumps(run_record("pyra", "count", status="running")))
    baseline = root / "old.csv"
    report.leaderboard(report.load_runs([write_runs(root / "old", grid(shift=-1))])[0]).to_csv(baseline, index=False)
    results = root / "results"
    (results / "offline").mkdir(parents=True)
    (results / "offline" / "pareto_stale.png").write_text("from an earlier publication")
    (results / "offline" / "NOTES.md").write_text("kept")
    result = invoke("report", str(runs), "--compare", "tome,lora", "--baseline", str(baseline), "--publish",
                    env={"ADAPTBENCH_RESULTS": str(results)})
    return result, runs / "report" / "offline", results / "offline"


def test_report_command_writes_every_output(full_report):
    result, out, _ = full_report
    assert result.exit_code == 0, result.output
    names = {path.name for path in out.iterdir()}
    assert {"leaderboard.csv", "leaderboard.md", "adverse_compression.csv", "adverse_compression.md",
            "compare_tome_vs_lora.csv", "compare_tome_vs_lora.md", "baseline_diff.csv", "baseline_diff.md"} <= names
    for stem in ("pareto_throughput", "pareto_gmacs", "pareto_memory"):
        for suffix in (".png", ".svg"):
            assert (out / f"{stem}{suffix}").stat().st_size > 1000
    board = pd.read_csv(out / "leaderboard.csv")
    assert board["method"].tolist() == ["lora", "tome", "small_peft", "full_ft"]
    # randomly initialised runs are another model: rows of their own, after the pretrained backbone's
    assert board["backbone"].tolist() == ["vit_micro_base_patch4_32"] * 3 + ["vit_micro_base_patch4_32 (random init)"]


def test_report_console_lists_leaderboard_verdicts_skipped_and_paths(full_report):
    output = full_report[0].output
    assert "stuck.json: still running" in output.splitlines()[0]
    assert "vit_micro_base_patch4_32 on CPU A" in output and "mean (groups)" in output
    assert "runs, 4 leaderboard rows; Top-1 test accuracy (%, best evaluation of each run) ==" in output
    assert "Adverse Compression (compressed - small-model baseline, accuracy points, best evaluation)" in output
    assert "tome@high - small-model baseline" in output and "adverse" in output  # 10 pairs, 3 points worse
    assert "tome@high - lora" in output and "tome worse" in output
    assert "Baseline against" in output and "1 row(s) in both" in output
    assert "note: full_ft (vit_micro_base_patch4_32 (random init), CPU A) lacks orientation: its averages" in output
    assert "note: pareto_throughput: left out 1 row(s) without mean accuracy" in output
    assert "note: 4 of 34 runs adapted a backbone without pretrained weights" in output
    assert f"Wrote 14 files to {full_report[1]}/" in output


def test_publish_copies_results_with_provenance(full_report):
    result, _, published = full_report
    names = sorted(path.name for path in published.iterdir())
    assert names == ["NOTES.md", "adverse_compression.csv", "adverse_compression.md", "leaderboard.csv",
                     "leaderboard.md", "pareto_gmacs.png", "pareto_gmacs.svg", "pareto_memory.png",
                     "pareto_memory.svg", "pareto_throughput.png", "pareto_throughput.svg", "provenance.json"]
    provenance = json.loads((published / "provenance.json").read_text())
    assert provenance["command"].split()[1:3] == ["report", str(published.parent.parent / "runs")]
    assert "--publish" in provenance["command"] and len(provenance["runs"]) == 34
    assert provenance["skipped"][0]["reason"].startswith("still running")
    assert f"Published to {published}/" in result.output


def test_report_with_nothing_valid_exits_2_with_one_line(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "f.json").write_text(json.dumps(run_record(status="failed")))
    result = CliRunner().invoke(main, ["report", str(folder), str(tmp_path / "absent")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[-1] == f"error: no finished runs to report in {folder}, {tmp_path / 'absent'} (2 skipped, listed above)"
    assert "f.json: failed: loss became nan" in lines[0] and "absent: folder not found" in lines[1]


def test_run_options_still_route_to_run_and_help_names_report():
    top = invoke("--help").output
    assert "--methods" in top and "report [RUNS]..." in top and "[run] [OPTIONS]" in top
    plan = invoke("run", "--dry-run", "--tasks", "count", "--methods", "lora").output
    assert "lora / count" in plan
    report_help = invoke("report", "--help").output
    assert all(option in report_help for option in ("--out", "--compare", "--baseline", "--publish", "RUNS"))
    assert "--methods" not in report_help


# ------------------------------------------------------------------------------- which accuracy (--accuracy)

def scored(method="lora", compression="none", best=0.0, last=0.0, at_best_val=0.0, seeds=(0,)) -> list[dict]:
    """As :func:`grid`, but test_acc_best, test_acc_last and test_acc_at_best_val each ACCURACY + its own shift
    + seed, so every accuracy choice gives other numbers."""
    return [run_record(method, task, seed, ACCURACY[task] + best + seed, compression,
                       acc_last=ACCURACY[task] + last + seed, at_best_val=ACCURACY[task] + at_best_val + seed)
            for task in TASKS for seed in seeds]


# Per choice: lora's mean over tasks, and tome@high - small_peft@high (and tome@high - lora) in that accuracy.
CHOICES = {"best": (64.0, -3.0, -3.0), "last": (54.0, 3.0, 3.0), "at-best-val": (44.0, 0.0, 8.0)}


@pytest.fixture(scope="module")
def choice_runs(tmp_path_factory):
    seeds = (0, 1)
    records = (scored(best=0, last=-10, at_best_val=-20, seeds=seeds)
               + scored("tome", "high", best=-3, last=-7, at_best_val=-12, seeds=seeds)
               + scored("small_peft", "high", best=0, last=-10, at_best_val=-12, seeds=seeds))
    return write_runs(tmp_path_factory.mktemp("choices") / "runs", records)


@pytest.mark.parametrize("choice", CHOICES)
def test_each_accuracy_choice_picks_its_column(choice_runs, choice):
    runs, skipped = report.load_runs([choice_runs], choice)
    assert not skipped
    mean, adverse_diff, compare_diff = CHOICES[choice]
    board = report.leaderboard(runs, choice)
    lora = board.set_index(["method", "compression"]).loc[("lora", "none")]
    assert lora["acc_mean_tasks"] == pytest.approx(mean + 0.5)  # seeds 0 and 1 add 0.5 on average
    assert lora["acc_count"] == pytest.approx(ACCURACY["count"] + mean - 64 + 0.5)
    assert lora["ppt"] == pytest.approx(report.ppt(mean + 0.5, 10_000))
    adverse = report.adverse_compression(runs, choice)
    assert adverse["mean_diff"].tolist() == pytest.approx([adverse_diff])
    compared = report.compare_methods(runs, *report.parse_compare("tome@high,lora"), accuracy=choice)
    assert compared["mean_diff"].tolist() == pytest.approx([compare_diff])
    # The tables say which accuracy they hold: the default as before (no column), another in a column of its own.
    if choice == "best":
        assert "accuracy" not in board and "accuracy" not in adverse and "accuracy" not in compared
        assert list(adverse.columns) == report.ADVERSE_COLUMNS
    else:
        assert list(board.columns[:2]) == ["suite", "accuracy"] and set(board["accuracy"]) == {choice}
        assert list(adverse.columns) == ["accuracy", *report.ADVERSE_COLUMNS] and set(adverse["accuracy"]) == {choice}
        assert compared.columns[0] == "accuracy" and set(compared["accuracy"]) == {choice}
    assert report.accuracy_of(board).name == report.accuracy_of(adverse).name == choice
    nothing_compressed = report.adverse_compression(runs[runs["method"] == "lora"], choice)
    heading = report.table_markdown(nothing_compressed, report.ACCURACIES[choice]).split("|")[0]
    title = report.accuracy_title(report.ACCURACIES[choice])
    assert nothing_compressed.empty
    assert heading == ("" if choice == "best" else f"{title}; differences in its points.\n\n")


@pytest.mark.parametrize("choice, title", [
    ("best", "Top-1 test accuracy (%, best evaluation of each run)"),
    ("last", "Top-1 test accuracy (%, last evaluation of each run; report --accuracy last)"),
    ("at-best-val", "Top-1 test accuracy (%, at each run's best val evaluation, trained on train alone; report "
                    "--accuracy at-best-val)"),
])
def test_markdown_console_and_provenance_say_which_accuracy(choice_runs, tmp_path, choice, title):
    results = tmp_path / "results"
    result = invoke("report", str(choice_runs), "--out", str(tmp_path / "rep"), "--accuracy", choice,
                    "--compare", "tome@high,lora", "--publish", env={"ADAPTBENCH_RESULTS": str(results)})
    assert result.exit_code == 0, result.output
    folder = tmp_path / "rep" / "offline"
    leaderboard = (folder / "leaderboard.md").read_text()
    assert leaderboard.splitlines()[2].startswith(f"{title}, mean ± std over seeds;")
    label = report.ACCURACIES[choice].label
    assert f"30 runs, 3 leaderboard rows; {title} ==" in result.output
    assert f"Adverse Compression (compressed - small-model baseline, accuracy points, {label}):" in result.output
    assert f"compare_tome-high_vs_lora (A - B, accuracy points, {label}):" in result.output
    provenance = json.loads((results / "offline" / "provenance.json").read_text())
    assert provenance["accuracy"] == {"choice": choice, "metric": report.ACCURACIES[choice].column,
                                      "description": report.ACCURACIES[choice].description}
    for name in ("adverse_compression.md", "compare_tome-high_vs_lora.md"):
        text = (folder / name).read_text()
        if choice == "best":
            assert text.startswith("| device_name ")  # as before: the default adds nothing
        else:
            assert text.startswith(f"{title}; differences in its points.\n\n| device_name ")
            assert "| accuracy " not in text  # said once above the table, not in every row
    for name in ("leaderboard.csv", "adverse_compression.csv", "compare_tome-high_vs_lora.csv"):
        columns = pd.read_csv(folder / name).columns
        assert ("accuracy" in columns) == (choice != "best"), name


def test_the_default_accuracy_writes_what_the_report_wrote_before_it_had_a_choice(choice_runs, tmp_path):
    """--accuracy best is the default, and its files are the published ones byte for byte (the schema-1 fixture
    test checks them against an older commit's report)."""
    for name, extra in (("plain", []), ("best", ["--accuracy", "best"])):
        assert invoke("report", str(choice_runs), "--out", str(tmp_path / name), *extra).exit_code == 0
    for path in sorted((tmp_path / "plain" / "offline").iterdir()):
        assert path.read_bytes() == (tmp_path / "best" / "offline" / path.name).read_bytes(), path.name


def test_runs_without_test_acc_at_best_val_are_skipped_under_at_best_val(tmp_path):
    records = scored(seeds=(0,)) + [run_record("lora", "count", 1, 40.0)]  # seed 1 trained with selection test
    old = run_record("lora", "count", 2, 40.0)
    del old["metrics"]["test_acc_at_best_val"], old["metrics"]["val_acc_best"]  # written before the choice existed
    folder = write_runs(tmp_path / "runs", records + [old])
    runs, skipped = report.load_runs([folder], "at-best-val")
    assert len(runs) == 5 and set(runs["seed"]) == {0}
    assert [item.reason for item in skipped] == ["no test_acc_at_best_val: trained without --selection val"] * 2
    assert report.load_runs([folder], "best")[1] == [] and report.load_runs([folder], "last")[1] == []
    result = invoke("report", str(folder), "--out", str(tmp_path / "rep"), "--accuracy", "at-best-val")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split(": ", 1)[1] for line in lines[:2]] == [
        "no test_acc_at_best_val: trained without --selection val"] * 2
    assert all(line.startswith("skipped ") and "-count-s" in line for line in lines[:2])


def test_nothing_with_the_chosen_accuracy_exits_2(tmp_path):
    folder = write_runs(tmp_path / "runs", grid())
    result = CliRunner().invoke(main, ["report", str(folder), "--accuracy", "at-best-val"])
    assert result.exit_code == 2
    assert result.output.count("no test_acc_at_best_val: trained without --selection val") == 5
    assert result.output.strip().splitlines()[-1].startswith("error: no finished runs to report in ")


def test_a_bad_accuracy_choice_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--accuracy", "median"])
    assert result.exit_code == 2
    assert "Invalid value for '--accuracy'" in result.output and "at-best-val" in result.output
    with pytest.raises(UserError, match="unknown accuracy 'median'; choose one of best, last, at-best-val"):
        report.leaderboard(pd.DataFrame(), "median")


def test_the_command_offers_the_schemas_accuracies_with_best_first():
    from harness.cli import report as report_command

    option = next(param for param in report_command.params if param.name == "accuracy")
    assert list(option.type.choices) == list(report.ACCURACIES) and option.default == report.DEFAULT_ACCURACY
    assert list(report.ACCURACIES)[0] == report.DEFAULT_ACCURACY


def test_a_baseline_of_another_accuracy_is_named_in_the_diff_and_warned_of(choice_runs, tmp_path):
    best = report.leaderboard(report.load_runs([choice_runs])[0])
    last = report.leaderboard(report.load_runs([choice_runs], "last")[0], "last")
    diff = report.baseline_diff(last, best).set_index(["method", "compression"])
    assert diff.loc[("lora", "none"), "acc_mean_tasks_delta"] == pytest.approx(-10.0)
    assert set(diff["accuracy_old"]) == {"best"} and set(diff["accuracy_new"]) == {"last"}
    assert report.table_markdown(diff.reset_index()).startswith(
        "Old board: Top-1 test accuracy (%, best evaluation of each run). New board: Top-1 test accuracy (%, last "
        "evaluation of each run; report --accuracy last).\n\n")
    assert "accuracy_old" not in report.baseline_diff(best, best)  # both the default: as before
    assert report.accuracy_mismatch(last, best, "old.csv") == (
        "--baseline old.csv holds the best evaluation accuracy ('best'), this report the last evaluation ('last'): "
        "the accuracy changes compare two measures")
    assert report.accuracy_mismatch(best, best, "old.csv") is None
    baseline = tmp_path / "old.csv"
    best.to_csv(baseline, index=False)
    written = report.write_suite_report(report.load_runs([choice_runs], "last")[0], tmp_path / "rep",
                                        baseline=baseline, accuracy="last")
    assert report.accuracy_mismatch(last, best, str(baseline)) in written.warnings
    # A leaderboard CSV read back says its accuracy; one without the column holds the default.
    last.to_csv(tmp_path / "last.csv", index=False)
    assert report.accuracy_of(pd.read_csv(tmp_path / "last.csv")).name == "last"
    assert report.accuracy_of(pd.read_csv(baseline)).name == "best"


def test_runs_of_both_training_protocols_in_one_suite_are_noted(tmp_path):
    records = grid() + scored("tome", "high", seeds=(0,))
    runs, _ = report.load_runs([write_runs(tmp_path / "runs", records)])
    warnings = report.write_suite_report(runs, tmp_path / "rep").warnings
    assert ("5 of 10 runs trained on the train split alone (--selection val), the others on train + val: rows may "
            "mix the two protocols") in warnings
    only_val, _ = report.load_runs([write_runs(tmp_path / "val", scored())], "at-best-val")
    assert not any("protocols" in warning for warning in report.write_suite_report(only_val, tmp_path / "r2").warnings)


def test_runs_of_one_row_and_task_on_different_data_are_named_as_pooled(tmp_path):
    def on_data(seed, fingerprint, normalization="backbone"):
        record = run_record("lora", "count", seed=seed)
        record["config"]["data"] = {"fingerprint": fingerprint, "img_size": 32, "normalization": normalization}
        record["key"] = f"{seed}{fingerprint}{normalization}"[:12]
        return record

    same = report.load_runs([write_runs(tmp_path / "same", [on_data(0, "aaa"), on_data(1, "aaa")])])[0]
    assert not any("pools" in note for note in report.write_suite_report(same, tmp_path / "r1").warnings)
    mixed = report.load_runs([write_runs(tmp_path / "mixed", [on_data(0, "aaa"), on_data(1, "bbb", "imagenet")])])[0]
    notes = [note for note in report.write_suite_report(mixed, tmp_path / "r2").warnings if "pools" in note]
    assert len(notes) == 2 and "count on 2 different data (data_fingerprint)" in notes[0]
    assert "2 different normalisations (data_normalization)" in notes[1]


def test_two_configs_of_one_seed_count_as_one_seed_and_are_named_as_averaged(tmp_path):
    def trained(seed, epochs, acc):
        record = run_record("lora", "count", seed=seed, acc=acc)
        record["config"]["train"]["epochs"] = epochs
        record["key"] = f"s{seed}e{epochs}"
        return record

    runs, _ = report.load_runs([write_runs(tmp_path / "runs", [trained(0, 3, 50.0), trained(0, 10, 70.0)])])
    row = report.leaderboard(runs).iloc[0]
    assert (row["seeds"], row["runs"], row["acc_count"]) == (1, 2, 60.0)
    notes = [note for note in report.write_suite_report(runs, tmp_path / "rep").warnings if "averages" in note]
    assert len(notes) == 1 and "averages 2 runs of count seed 0 (configs that differ in more than the seed)" in notes[0]


def test_every_measured_leaderboard_column_has_the_direction_it_is_better_in_and_spreads_have_none():
    from harness.report.schema import higher_is_better

    assert [higher_is_better(column) for column in ("acc_count", "infer_img_per_s", "speedup", "ppt")] == [True] * 4
    assert [higher_is_better(column) for column in ("gmacs", "tunable_params", "tunable_pct", "train_peak_mem_mb",
                                                    "infer_peak_mem_mb")] == [False] * 5
    assert [higher_is_better(column) for column in ("acc_count_std", "infer_img_per_s_iqr_over_runs", "seeds",
                                                    "method")] == [None] * 4


def test_without_runs_of_the_method_it_was_timed_against_the_ratio_is_the_rows_medians(tmp_path):
    records = (grid("small_peft", "high", seeds=(0, 1), matched_throughput_ratio=1.0, matched_method="tome")
               + grid("diffrate", "high", shift=-3, seeds=(0, 1), infer_img_per_s=1250.0))
    runs, _ = report.load_runs([write_runs(tmp_path / "runs", records)])
    (row,) = report.adverse_compression(runs).to_dict("records")
    assert row["matched_throughput_ratio"] == pytest.approx(0.8) and row["verdict"] == "unmatched (ratio 0.80x)"
    assert "ratio of the rows' median throughputs (tome, which the small model was timed against, has no runs here)" \
        in row["note"]


def test_seeds_is_the_fewest_distinct_seeds_of_any_task(tmp_path):
    records = grid("lora", seeds=(0, 1, 2), tasks=["count"]) + grid("lora", seeds=(0, 1), tasks=["cells"])
    assert board_of(tmp_path, records).loc[("lora", "none"), "seeds"] == 2
