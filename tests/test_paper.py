"""``report --paper``: the board beside a paper's published figures, read from the preset files themselves."""
import math

import pandas as pd

import pytest
from click.testing import CliRunner
from conftest import run_record, write_runs

import harness
from harness import UserError, presets, registry, report
from harness.cli import main
from harness.presets import tomllib
from harness.report.paper import paper_difference
from harness.vocabulary import NONE, VTAB_GROUPS, named_levels

VIT_B = "vit_base_patch16_224.orig_in21k"
# Offline task names stand in for VTAB-1k's: 2 natural, 1 specialized, 2 structured (conftest's groups). Group
# means of lora: natural (80 + 60) / 2 = 70, specialized 90, structured (40 + 50) / 2 = 45; their mean 68.33.
ACCURACY = {"digits": 80.0, "photos": 60.0, "cells": 90.0, "count": 40.0, "orientation": 50.0}


def vtab_runs(method="lora", compression="none", shift=0.0, backbone=VIT_B, seed=0, **metrics) -> list[dict]:
    return [run_record(method, task, seed, acc + shift, compression, backbone=backbone, suite="vtab", **metrics)
            for task, acc in ACCURACY.items()]


def board(tmp_path, records):
    runs, skipped = report.load_runs([write_runs(tmp_path / "runs", records)])
    assert not skipped
    return report.leaderboard(runs)


def read_published(name: str) -> dict:
    with open(presets.PRESETS_DIR / presets.PAPER_DIR / f"{name}.toml", "rb") as handle:
        return tomllib.load(handle)["published"]


def test_the_presets_with_published_figures_are_the_files_with_a_published_table():
    assert presets.published_presets() == ["pyra-vit-b", "pyra-vit-l"]
    # --paper takes any preset's name (the command line is built without reading the files); published() refuses
    # one without figures
    choices = next(param for param in report_command().params if param.name == "paper").type.choices
    assert list(choices) == presets.paper_preset_names() == ["pyra-deit-b", "pyra-vit-b", "pyra-vit-l"]


def report_command():
    return main.commands["report"]


@pytest.mark.parametrize("name", presets.published_presets())
def test_published_figures_are_what_the_file_lists_and_hold_together(name):
    harness.load_plugins()
    table = read_published(name)
    paper = report.published(name)
    assert [dict(row) for row in paper.rows] == table["rows"]
    assert (paper.source, paper.suite, paper.accuracy.name, paper.tasks) == \
        (table["source"], table["suite"], table["accuracy"], table["tasks"])
    assert paper.backbone == presets.paper_presets()[name]["run"]["backbone"]
    levels = {NONE, *named_levels()}
    for row in paper.rows:
        registry.get_method(row["method"])  # every row is of a method adaptbench runs
        assert row["compression"] in levels
        groups = [row[f"acc_{group}"] for group in VTAB_GROUPS if f"acc_{group}" in row]
        if groups:  # the paper's average is the mean of its group means, to its rounding
            assert len(groups) == 3 and abs(sum(groups) / 3 - row["acc_mean_groups"]) <= 0.005
    assert [row["method"] for row in paper.rows if row["compression"] == NONE] == ["lora"]


def test_the_comparison_by_hand(tmp_path):
    # The other backbone's runs differ in everything, so a comparison that took them would show it.
    records = (vtab_runs(infer_img_per_s=1000.0) + vtab_runs("tome", "high", shift=-3, infer_img_per_s=2500.0)
               + vtab_runs("lora", shift=20, backbone="vit_small_patch16_224.augreg_in21k", infer_img_per_s=5000.0)
               + vtab_runs("tome", "high", shift=20, backbone="vit_small_patch16_224.augreg_in21k",
                           infer_img_per_s=6000.0))
    paper = report.published("pyra-vit-b")
    table = report.paper_comparison(board(tmp_path, records), paper).set_index(["method", "compression"])
    assert len(table) == 7
    lora, tome = table.loc[("lora", "none")], table.loc[("tome", "high")]
    assert lora["ran"] and tome["ran"] and table["ran"].sum() == 2 and lora["tasks"] == 5
    assert lora["acc_mean_groups_ours"] == pytest.approx(205 / 3)
    assert lora["acc_mean_groups_delta"] == pytest.approx(205 / 3 - 74.76)
    assert tome["acc_natural_ours"] == 67.0 and tome["acc_natural_delta"] == pytest.approx(67.0 - 72.87)
    # The paper gives group means only for its ablation's rows, not for LoRA's.
    assert math.isnan(lora["acc_natural_paper"]) and math.isnan(lora["acc_natural_delta"])
    assert (tome["speedup_ours"], tome["speedup_paper"]) == (2.5, pytest.approx(1381 / 425))
    pyra = table.loc[("pyra", "high")]
    assert not pyra["ran"] and pyra["acc_mean_groups_paper"] == 72.06 and math.isnan(pyra["acc_mean_groups_ours"])
    assert math.isnan(pyra["speedup_ours"]) and pyra["speedup_paper"] == pytest.approx(1365 / 425)
    assert pd.isna(pyra["tasks"])


def test_each_device_is_compared_on_its_own_throughputs(tmp_path):
    records = (vtab_runs(infer_img_per_s=1000.0) + vtab_runs("tome", "high", infer_img_per_s=2500.0)
               + vtab_runs(shift=5, seed=1, device_name="GPU B", infer_img_per_s=4000.0)
               + vtab_runs("tome", "high", seed=1, device_name="GPU B", infer_img_per_s=12000.0)
               + vtab_runs("tome", "high", seed=2, device_name="GPU C", infer_img_per_s=9000.0))  # C ran no LoRA
    table = report.paper_comparison(board(tmp_path, records), report.published("pyra-vit-b"))
    tome = table[(table["method"] == "tome") & (table["compression"] == "high")].set_index("device_name")
    assert tome["speedup_ours"].loc[["CPU A", "GPU B"]].tolist() == [2.5, 3.0]
    assert math.isnan(tome.loc["GPU C", "speedup_ours"])  # nothing of the paper's uncompressed method to divide by
    lora = table[table["method"] == "lora"].set_index("device_name")["acc_mean_groups_ours"]
    assert lora["GPU B"] == pytest.approx(205 / 3 + 5) and math.isnan(lora["GPU C"])


def test_a_board_without_the_papers_backbone_compares_nothing(tmp_path):
    records = vtab_runs(backbone="vit_small_patch16_224.augreg_in21k")
    assert report.paper_comparison(board(tmp_path, records), report.published("pyra-vit-b")).empty


def test_a_preset_without_published_figures_is_refused_with_its_file():
    with pytest.raises(UserError, match=r"harness/presets/paper/pyra-deit-b.toml lists no published figures"):
        report.published("pyra-deit-b")


GOOD_ROW = {"method": "lora", "compression": "none", "acc_mean_groups": 74.0, "img_per_s": 400}


@pytest.mark.parametrize("change, problem", [
    ({"rows": [{**GOOD_ROW, "acc_mean_groups": "74.76"}]}, "row 1 gives acc_mean_groups = '74.76', not a number"),
    ({"rows": [{**GOOD_ROW, "acc_mean_groups": True}]}, "not a number"),
    ({"rows": [{**GOOD_ROW, "acc_mean_groups": float("nan")}]}, "not a number"),
    ({"rows": [{**GOOD_ROW, "gpu_hours": 3}]}, "row 1 gives 'gpu_hours', which the report cannot compare"),
    ({"rows": [{"compression": "none", "acc_mean_groups": 74.0}]}, "row 1 has no method"),
    ({"rows": [GOOD_ROW, {**GOOD_ROW, "compression": "hihg"}]}, "row 2 has compression 'hihg', none of none, low"),
    ({"rows": [1]}, "row 1 is 1, not a table"),
    ({"rows": [GOOD_ROW, GOOD_ROW]}, "lists a method and level twice"),
    ({"rows": [{**GOOD_ROW, "compression": "low"}]}, "no row with compression \"none\""),
    ({"rows": [{"method": "lora", "compression": "none", "img_per_s": 400}]}, "gives no accuracy"),
    ({"tasks": "19"}, "tasks = '19' is not a count of tasks"),
    ({"accuracy": "median"}, "accuracy 'median' is none of best"),
    ({"source": None}, r"needs \[published\] source, as text$"),
    ({"source": None, "suite": None}, r"needs \[published\] source and \[published\] suite, as text$"),
])
def test_published_figures_the_report_cannot_use_are_named(monkeypatch, change, problem):
    table = {key: value for key, value in {"source": "S", "suite": "vtab", "rows": [GOOD_ROW], **change}.items()
             if value is not None}
    monkeypatch.setattr(presets, "paper_presets", lambda: {"made-up": {"run": {"backbone": VIT_B}, "published": table}})
    with pytest.raises(UserError, match=r"harness/presets/paper/made-up.toml: .*" + problem):
        report.published("made-up")
    monkeypatch.setattr(presets, "paper_presets", lambda: {"made-up": {"run": {"backbone": VIT_B},
                                                                         "published": {"source": "S", "suite": "vtab",
                                                                                       "rows": [GOOD_ROW]}}})
    assert report.published("made-up").rows == (GOOD_ROW,)  # the same table without the fault is taken


def test_a_paper_preset_without_a_backbone_is_named_for_it_alone(monkeypatch):
    monkeypatch.setattr(presets, "paper_presets", lambda: {"made-up": {"run": {}, "published": {
        "source": "S", "suite": "vtab", "rows": [GOOD_ROW]}}})
    with pytest.raises(UserError, match=r"made-up.toml: needs \[run\] backbone, as text$"):
        report.published("made-up")


def test_report_paper_writes_the_table_prints_it_and_notes_what_did_not_run(tmp_path):
    runs = write_runs(tmp_path / "runs", vtab_runs(infer_img_per_s=1000.0)
                      + vtab_runs("tome", "high", shift=-3, infer_img_per_s=2500.0))
    results = tmp_path / "results"
    result = CliRunner().invoke(main, ["report", str(runs), "--paper", "pyra-vit-b", "--publish"],
                                env={"ADAPTBENCH_RESULTS": str(results)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = runs / "report" / "vtab"
    assert (folder / "paper_pyra-vit-b.csv").is_file() and (results / "vtab" / "paper_pyra-vit-b.md").is_file()
    markdown = (folder / "paper_pyra-vit-b.md").read_text()
    assert markdown.startswith("Xiong et al., PYRA, ECCV 2024") and "| tome " in markdown
    assert "Against the paper: Xiong et al., PYRA, ECCV 2024" in result.output
    assert "acc_mean_groups ours - paper: mean -5.76 points over 2 row(s), largest -6.43 (lora" in result.output
    comparison = result.output.split("Against the paper")[1].splitlines()
    tome_line = next(line for line in comparison if line.startswith("tome@high"))
    assert tome_line.split()[1:6] == ["70.43", "65.33", "-5.10", "3.25x", "2.50x"]
    assert "note: --paper pyra-vit-b: no runs of diffrate@low, tome@low, pyra@low, small_peft@high, pyra@high " \
           "(vit_base_patch16_224.orig_in21k, CPU A)" in result.output
    assert "note: --paper pyra-vit-b: 2 row(s) have runs of 5 of the paper's 19 tasks, so their averages are not " \
           "over the paper's tasks" in result.output
    assert "| +6.22 " in markdown  # tome@high's specialized group: 87 against the paper's 80.78
    last = CliRunner().invoke(main, ["report", str(runs), "--paper", "pyra-vit-b", "--accuracy", "last"])
    assert "the paper reports the best evaluation ('best'), this report the last evaluation ('last')" in last.output


def test_report_paper_says_when_no_run_is_the_papers(tmp_path):
    runs = write_runs(tmp_path / "runs", vtab_runs(backbone="vit_small_patch16_224.augreg_in21k")
                      + [run_record("lora", "count")])
    result = CliRunner().invoke(main, ["report", str(runs), "--paper", "pyra-vit-l"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "note: --paper pyra-vit-l: no runs of vit_large_patch16_224.orig_in21k in suite vtab" in result.output
    assert not list((runs / "report").rglob("paper_*"))
    offline = write_runs(tmp_path / "offline", [run_record("lora", "count")])
    alone = CliRunner().invoke(main, ["report", str(offline), "--paper", "pyra-vit-l"], catch_exceptions=False)
    assert "note: --paper pyra-vit-l: no runs of suite vtab to compare with the paper" in alone.output


def test_only_a_preset_with_published_figures_reports_beside_its_paper(monkeypatch):
    seen = {}
    monkeypatch.setattr("harness.cli._main", lambda **options: seen.update(paper=options["paper"]) or 0)
    cases = ((["--preset", "pyra-vit-b"], "pyra-vit-b"), (["--preset", "pyra-deit-b"], None), ([], None))
    for arguments, paper in cases:
        assert CliRunner().invoke(main, arguments).exit_code == 0
        assert seen.pop("paper") == paper, arguments


def test_a_run_with_a_preset_closes_with_the_comparison(tmp_path):
    """The whole path: the preset's run, its closing report, the paper's note (this micro run is not the paper's)."""
    result = CliRunner().invoke(main, [
        "--preset", "pyra-vit-b", "--tasks", "count", "--methods", "lora", "--backbone", "vit_micro_base_patch4_32",
        "--img-size", "32", "--normalize", "backbone", "--epochs", "1", "--bench-preset", "default",
        "--bench-batch", "8", "--out", str(tmp_path / "runs")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "1 ok, 0 failed" in result.output
    assert "note: --paper pyra-vit-b: no runs of suite vtab to compare with the paper" in result.output


def test_rows_without_the_papers_average_say_why(tmp_path):
    records = [dict(record, task_info={**record["task_info"], "group": None}) for record in vtab_runs()]
    paper = report.published("pyra-vit-b")
    table = report.paper_comparison(board(tmp_path, records), paper)
    assert paper_difference(table, paper) == ("acc_mean_groups: none of the 1 row(s) that ran has one (NaN: a task "
                                              "missing, or tasks without groups)")
