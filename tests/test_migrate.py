"""Run files of schema 1 (written before records described their method and task) upgrade and report as before.

``fixtures/schema1_runs`` are 24 real run files written by adaptbench at commit 66eeeee (full_ft, lora,
tome@high and small_peft@high on three offline tasks, two seeds, one epoch); ``fixtures/schema1_report`` is what
that commit's ``run.py report`` made of them.
"""
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
REPORT_FILES = ("leaderboard.csv", "adverse_compression.csv", "leaderboard.md", "adverse_compression.md")


def invoke(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


@pytest.fixture
def old_runs(tmp_path: Path) -> Path:
    return shutil.copytree(FIXTURES / "schema1_runs", tmp_path / "runs")


def test_migrated_runs_report_exactly_as_the_old_code_reported_them(old_runs, tmp_path):
    result = invoke("migrate", old_runs)
    assert result.exit_code == 0 and "24 run file(s) upgraded" in result.output, result.output
    # The old code gave a verdict whatever the throughput match; an infinite tolerance is that rule.
    result = invoke("report", old_runs, "--out", tmp_path / "report", "--match-tolerance", "inf")
    assert result.exit_code == 0, result.output
    for name in REPORT_FILES:
        assert (tmp_path / "report" / "offline" / name).read_text() == (FIXTURES / "schema1_report" / name).read_text()


def test_migration_adds_descriptions_and_changes_nothing_else(old_runs):
    before = {path.name: json.loads(path.read_text()) for path in old_runs.glob("*.json")}
    invoke("migrate", old_runs)
    for name, old in before.items():
        new = json.loads((old_runs / name).read_text())
        added = {key: new.pop(key) for key in ("schema", "method_info", "task_info")}
        assert new == old
        assert added["schema"] == 2 and added["task_info"]["suite"] == "offline"
    assert invoke("migrate", old_runs).output.startswith("0 run file(s) upgraded, 24 already current")


def test_unmigrated_runs_are_skipped_with_the_command_that_upgrades_them(old_runs, tmp_path):
    result = invoke("report", old_runs, "--out", tmp_path / "report")
    assert result.exit_code == 2
    assert "schema 1" in result.output and "python run.py migrate" in result.output


def test_a_run_whose_plugin_is_not_loaded_is_named_and_the_others_upgrade(old_runs):
    path = next(old_runs.glob("lora-*.json"))
    record = json.loads(path.read_text())
    record["config"]["method"] = "not_loaded_method"
    path.write_text(json.dumps(record))
    result = invoke("migrate", old_runs)
    assert result.exit_code == 1
    assert f"not upgraded: {path}: unknown method 'not_loaded_method'" in result.output
    assert "23 run file(s) upgraded" in result.output
    assert "schema" not in json.loads(path.read_text())
