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
