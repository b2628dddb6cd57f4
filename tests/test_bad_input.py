"""Bad input found by trying it: each gets one line naming the problem and the fix, exit code 2, and leaves
nothing written."""
import re
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import run_record, write_runs

import harness
from harness import registry
from harness.cli import main

REPO = Path(__file__).resolve().parent.parent


def refused(*args: str) -> str:
    """The one line the CLI answers bad input with (exit code 2, no traceback), without its ``error: ``."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


def _plugin(folder: Path, body: str) -> Path:
    path = folder / "their_plugin.py"
    path.write_text("import harness\n" + textwrap.dedent(body))
    return path.resolve()


def test_a_method_that_raises_at_plan_time_is_named_with_its_plugin(plugin_file, tmp_path, own_registry):
    boom = _plugin(tmp_path, '''
        @harness.register_method("boom")
        def boom(model, compression=None):
            """Breaks on every model."""
            raise RuntimeError("kaboom\\non two lines")
    ''')
    out = tmp_path / "runs"
    line = refused("--plugins", f"{plugin_file},{boom}", "--methods", "boom", "--tasks", "tiny", "--out", str(out))
    assert line == (f"method 'boom' (plugin {boom}) failed while adapting vit_micro_small_patch4_32 at level none: "
                    f"RuntimeError: kaboom on two lines; fix the plugin or drop it from --methods")
    assert not list(out.glob("*.json"))


@pytest.mark.parametrize("kind, name, options, function, builtin", [
    ("method", "lora", "", "lora", REPO / "methods" / "lora.py"),
    ("task", "count", ', suite="offline"', "offline_count", REPO / "tasks" / "offline.py"),
])
def test_a_plugin_reusing_a_builtin_name_is_refused(tmp_path, own_registry, kind, name, options, function, builtin):
    """Even under the built-in function's own name, which is how a copied-and-edited method is named."""
    clash = _plugin(tmp_path, f'''
        @harness.register_{kind}("{name}"{options})
        def {function}(*args, **kwargs):
            """Someone else's function of a taken name."""
    ''')
    line = refused("--plugins", str(clash), "--methods", "lora", "--tasks", "count", "--dry-run", "--no-estimate")
    assert line == f"{kind} '{name}' is registered twice ({builtin} and {clash}); rename one of them"
    specs = registry.methods() if kind == "method" else registry.tasks()
    assert specs[name].source == str(builtin)


def test_the_same_plugin_loaded_again_is_no_clash(loaded_plugin, own_registry, monkeypatch):
    """A plugin file imported again under another module name (by path, then by name) defines its functions anew:
    new objects of the same code, one definition, not a clash; so is the very same function registered again."""
    monkeypatch.syspath_prepend(str(loaded_plugin.resolve().parent))
    first = registry.get_method("bitfit").fn
    try:
        harness.load_plugins([loaded_plugin.stem])
    finally:
        sys.modules.pop(loaded_plugin.stem, None)
    again = registry.get_method("bitfit").fn
    assert again is not first and again.__module__ == loaded_plugin.stem
    assert registry.get_task("tiny_bright").fn.__module__ == loaded_plugin.stem
    harness.register_method("bitfit")(again)
    assert registry.get_method("bitfit").fn is again


@pytest.fixture
def report_runs(tmp_path) -> Path:
    return write_runs(tmp_path / "runs", [run_record("lora", "count", seed) for seed in (0, 1)]
                      + [run_record("tome", "count", seed, compression=level) for seed in (0, 1)
                         for level in ("low", "high")])


@pytest.mark.parametrize("args, message", [
    (["--compare", "nosuch,lora"], "--compare nosuch,lora: no finished runs of method 'nosuch' in {runs} "
                                   "(methods there: lora, tome)"),
    (["--compare", "tome@nosuch,lora"], "--compare tome@nosuch,lora: no finished runs of method 'tome' at "
                                        "compression 'nosuch' in {runs} (its levels there: low, high)"),
    (["--compare", "tome@high,tome@high"], "--compare tome@high,tome@high: compares tome@high with itself; name two "
                                           "methods, or two levels of one (A@low,A@high)"),
    (["--baseline", "{not_a_board}"], "the --baseline file {not_a_board} is not a leaderboard CSV: it has no "
                                      "device_name, backbone, method, compression column; pass a leaderboard.csv "
                                      "written by `run.py report`"),
    (["--baseline", "{ragged}"], "cannot read the --baseline file {ragged} (Error tokenizing data. C error: Expected "
                                 "1 fields in line 3, saw 3); pass a leaderboard.csv"),
])
def test_bad_report_options_are_refused_before_any_report_is_written(report_runs, tmp_path, args, message):
    files = {"runs": report_runs, "not_a_board": tmp_path / "other.csv", "ragged": tmp_path / "ragged.csv"}
    files["not_a_board"].write_text("a,b\n1,2\n")
    files["ragged"].write_text("a\n1\n1,2,3\n")
    out = tmp_path / "report"
    line = refused("report", str(report_runs), "--out", str(out), *(arg.format(**files) for arg in args))
    assert line == message.format(**files)
    assert not out.exists()


@pytest.mark.parametrize("compression", ["16,16", "[1,2]", "medium"])
def test_the_compression_hint_is_a_list_the_command_line_takes(plugin_file, compression):
    tiny = ["--plugins", str(plugin_file), "--methods", "tome", "--tasks", "tiny", "--dry-run", "--no-estimate"]
    line = refused(*tiny, "--compression", compression)
    hint = re.search(r"such as '(\[[\d,]+\])'", line)
    assert hint, line
    accepted = CliRunner().invoke(main, [*tiny, "--compression", hint.group(1)])
    assert accepted.exit_code == 0, accepted.output
    assert f"[1/1] tome@{hint.group(1)} / tiny_bright" in accepted.output  # one level, the whole list


def test_a_method_that_fails_on_a_real_model_leaves_the_plan_unestimated_and_fails_its_runs(plugin_file, tmp_path,
                                                                                          own_registry):
    flaky = _plugin(tmp_path, '''
        @harness.register_method("real_boom")
        def real_boom(model, compression=None):
            """Fine on the plan's meta-device model, broken on a real one."""
            if not next(model.parameters()).is_meta:
                raise RuntimeError("real boom")
            return model
    ''')
    result = CliRunner().invoke(main, ["--plugins", f"{plugin_file},{flaky}", "--methods", "real_boom,bitfit",
                                       "--tasks", "tiny", "--epochs", "1", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "not estimated (real_boom on vit_micro_small_patch4_32 failed while being timed (RuntimeError: real " \
           "boom); its runs will record it)" in result.output
    assert "1 ok, 1 failed" in result.output


@pytest.mark.parametrize("body, problem", [
    ("raise KeyError('no such split')", "raised KeyError: 'no such split' while loading its data"),
    ("return None", "returned NoneType, not a harness.TaskData"),
])
def test_a_task_plugin_that_breaks_fails_its_runs_in_one_line(plugin_file, tmp_path, own_registry, body, problem):
    broken = _plugin(tmp_path, f'''
        @harness.register_task("broken_task", suite="tiny")
        def broken_task(data_root=None):
            """A task plugin with a bug."""
            {body}
    ''')
    result = CliRunner().invoke(main, ["--plugins", f"{plugin_file},{broken}", "--methods", "bitfit", "--tasks",
                                       "broken_task,tiny_bright", "--epochs", "1", "--no-estimate",
                                       "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"broken_task: cannot run, its runs are recorded as failed: task 'broken_task' {problem}; fix the task " \
           f"plugin ({broken})" in result.output
    assert "1 ok, 1 failed" in result.output


def _liar(tmp_path: Path, facts: str) -> Path:
    return _plugin(tmp_path, f'''
        @harness.register_method("liar")
        def liar(model, compression=None):
            """Records facts named like the run's own figures or identity; and a list, which the row joins."""
            harness.record_info(model, {facts}, kept=[1, 2, 3])
            return model
    ''')


def test_facts_that_would_hide_a_measured_figure_fail_the_run_in_one_line(plugin_file, tmp_path, own_registry):
    liar = _liar(tmp_path, "test_acc_best=100.0, gmacs=0.1")
    result = CliRunner().invoke(main, ["--plugins", f"{plugin_file},{liar}", "--methods", "liar", "--tasks", "tiny",
                                       "--epochs", "1", "--no-estimate", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "liar recorded facts named gmacs, test_acc_best (harness.record_info), which " \
                                     "would hide the run's own figures or identity in its row" in result.output


def test_facts_that_would_hide_a_runs_identity_fail_it_before_it_trains(plugin_file, tmp_path, own_registry,
                                                                        monkeypatch):
    from harness import pipeline

    def no_training(*args, **kwargs):
        raise AssertionError("trained a run whose recorded facts already hid its identity")

    monkeypatch.setattr(pipeline, "fit", no_training)
    liar = _liar(tmp_path, "seed=7, method='other'")
    result = CliRunner().invoke(main, ["--plugins", f"{plugin_file},{liar}", "--methods", "liar", "--tasks", "tiny",
                                       "--epochs", "1", "--no-estimate", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "liar recorded facts named method, seed (harness.record_info)" in result.output, \
        result.output


def test_lists_recorded_as_facts_reach_the_flat_row_joined():
    from harness.results import flatten

    row = flatten(run_record("lora", "count", 0, kept=[1, 2, 3], curve=[{"epoch": 1, "test_acc": 50.0}]))
    assert row["kept"] == "1,2,3" and "curve" not in row


@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "Invalid value for --lr: nan is not a finite number"),
    (["--seeds", "99999999999999999999"], "Invalid value for --seeds: give one or more integers from 0 to 4294967295"),
])
def test_values_the_runs_would_refuse_are_refused_before_any_run(plugin_file, args, message):
    result = CliRunner().invoke(main, ["--plugins", str(plugin_file), "--tasks", "tiny", "--dry-run", "--no-estimate",
                                       *args])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("seeds", ["0,0", "0,00"])
def test_a_name_given_twice_runs_once(plugin_file, seeds):
    result = CliRunner().invoke(main, ["--plugins", str(plugin_file), "--methods", "bitfit,bitfit", "--seeds", seeds,
                                       "--tasks", "tiny", "--dry-run", "--no-estimate"])
    assert result.exit_code == 0 and result.output.count("[1/1] bitfit / tiny_bright") == 1, result.output


@pytest.mark.parametrize("registration, message", [
    ('register_method("sub/dir")', "method name 'sub/dir' must be letters, digits"),
    ('register_method("ctx", context=("measure"))', "context takes a tuple of names, such as ('measure',), not the "
                                                    "string 'measure'"),
    ('register_task("offline", suite="mine")', "would share the name 'offline' for a task and a task group"),
    ('register_task("mine", suite="count")', "would share the name 'count' for a task and a task group"),
])
def test_a_registration_that_would_misfile_or_shadow_is_refused(tmp_path, own_registry, registration, message):
    bad = _plugin(tmp_path, f'''
        @harness.{registration}
        def whatever(*args, **kwargs):
            """A registration mistake."""
    ''')
    assert message in refused("--plugins", str(bad), "--methods", "lora", "--tasks", "count", "--dry-run",
                              "--no-estimate")


def test_migrate_names_a_file_whose_schema_is_no_version_number(tmp_path):
    record = run_record("lora", "count", 0)
    record["schema"] = "1"
    runs = write_runs(tmp_path / "runs", [record])
    result = CliRunner().invoke(main, ["migrate", str(runs)])
    assert "Traceback" not in result.output and "schema '1' is not a version number" in result.output, result.output


def test_publishing_into_a_folder_that_cannot_be_written_is_refused_before_the_report(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ADAPTBENCH_RESULTS", str(blocker / "results"))
    runs = write_runs(tmp_path / "runs", [run_record("lora", "count", seed) for seed in (0, 1)])
    line = refused("report", str(runs), "--publish", "--out", str(tmp_path / "report"))
    assert line == (f"the results folder {blocker / 'results'} is not writable (Not a directory); point "
                    f"$ADAPTBENCH_RESULTS at a writable folder")
