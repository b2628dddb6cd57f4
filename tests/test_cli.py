import json
import os
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from harness.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_run(plugin_file, tmp_path_factory):
    """One real end-to-end run of an external plugin's method and task through the CLI."""
    out = tmp_path_factory.mktemp("runs")
    result = invoke("--plugins", str(plugin_file), "--methods", "bitfit,lora", "--tasks", "tiny",
                    "--bench-batch", "8", "--seeds", "0,1", "--out", str(out))
    return result, out


def test_external_plugin_runs_end_to_end(tiny_run):
    result, out = tiny_run
    assert result.exit_code == 0, result.output
    assert "4 ok, 0 failed" in result.output and "| bitfit" in result.output
    records = [json.loads(path.read_text()) for path in sorted(out.glob("*.json"))]
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    metrics = records[0]["metrics"]
    for key in ("test_acc_best", "test_acc_last", "infer_img_per_s", "infer_img_per_s_iqr", "train_img_per_s",
                "train_peak_mem_mb", "infer_peak_mem_mb", "gmacs", "total_params", "tunable_params"):
        assert metrics[key] > 0, key
    environment = records[0]["environment"]
    assert {"torch", "timm", "device_name", "git_commit", "cpu_threads", "cpu_allocator"} <= set(environment)
    # Self-describing: the report reads suite, group, roles and order from here, not from the plugin.
    by_method = {record["config"]["method"]: record for record in records}
    assert by_method["bitfit"]["method_info"] == {"compresses": False, "role": None, "order": None}
    assert by_method["lora"]["method_info"] == {"compresses": False, "role": "reference", "order": 1}
    task_info = records[0]["task_info"]
    assert records[0]["schema"] == 2 and {key: task_info[key] for key in ("suite", "group", "num_classes")} == {
        "suite": "tiny", "group": "natural", "num_classes": 2}
    assert task_info["split_sizes"] == {"train": 48, "val": 16, "test": 32}
    # A plugin task that says nothing of its data is fingerprinted by content, and the key depends on it.
    assert len(task_info["data"]["fingerprint"]) == 12
    assert records[0]["config"]["data"]["fingerprint"] == task_info["data"]["fingerprint"]


def test_results_csv_has_one_flat_row_per_run(tiny_run):
    _, out = tiny_run
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 4
    assert set(frame["method"]) == {"bitfit", "lora"} and set(frame["seed"]) == {0, 1}
    assert {"key", "status", "test_acc_best", "gmacs", "train_lr", "env_torch"} <= set(frame.columns)


def test_finished_runs_are_reused_not_repeated(plugin_file, tiny_run):
    _, out = tiny_run
    before = {path: path.stat().st_mtime_ns for path in out.glob("*.json")}
    result = invoke("--plugins", str(plugin_file), "--methods", "bitfit", "--tasks", "tiny", "--bench-batch", "8",
                    "--seeds", "0", "--out", str(out))
    assert result.exit_code == 0 and "already done" in result.output
    assert {path: path.stat().st_mtime_ns for path in out.glob("*.json")} == before


def test_failed_run_is_recorded_and_others_go_on(plugin_file, tmp_path):
    nan_plugin = tmp_path / "nan_plugin.py"
    nan_plugin.write_text(
        "import harness\n\n"
        "@harness.register_method('nan_head')\n"
        "def nan_head(model, compression=None):\n"
        "    '''Makes every logit NaN.'''\n"
        "    model.head.register_forward_hook(lambda m, i, o: o * float('nan'))\n"
        "    return model\n")
    result = invoke("--plugins", f"{plugin_file},{nan_plugin}", "--methods", "nan_head,bitfit", "--tasks", "tiny",
                    "--bench-batch", "8", "--out", str(tmp_path / "runs"))
    assert result.exit_code == 1
    assert "1 ok, 1 failed" in result.output
    statuses = {json.loads(p.read_text())["config"]["method"]: json.loads(p.read_text())
                for p in (tmp_path / "runs").glob("*.json")}
    assert statuses["nan_head"]["status"] == "failed"
    assert "loss became nan" in statuses["nan_head"]["reason"]
    assert statuses["bitfit"]["status"] == "ok"
    assert len(pd.read_csv(tmp_path / "runs" / "results.csv")) == 2


@pytest.mark.parametrize("args, message", [
    (["--methods", "pyra,tome", "--tasks", "vtab"], "error: VTAB-1k task 'cifar100' needs its data on disk"),
    (["--methods", "nope"], "error: unknown method 'nope'; valid methods: "),
    (["--tasks", "imagenet"], "error: unknown task 'imagenet'; valid tasks: "),
    (["--backbone", "resnet_999"], "error: unknown backbone 'resnet_999'"),
    (["--backbone", "resnet18"], "not a timm VisionTransformer"),
    (["--tasks", "cifar100"], "error: VTAB-1k task 'cifar100' needs its data on disk: pass --data-root"),
    (["--device", "cuda:0"], "no CUDA device is available") if not __import__("torch").cuda.is_available() else
    (["--device", "tpu"], "unsupported --device"),
    (["--methods", "full_ft,lora", "--compression", "high"], "none of full_ft, lora compresses"),
    (["--methods", "tome", "--compression", "medium"], "unknown compression 'medium'"),
    (["--methods", "tome", "--compression", "[1,2]"], "compression list has 2 entries"),
    (["--plugins", "/nonexistent/plugin.py"], "error: plugin file not found: /nonexistent/plugin.py"),
])
def test_bad_input_gets_one_clear_line_and_exit_2(args, message, tmp_path):
    result = CliRunner().invoke(main, args + ["--out", str(tmp_path / "runs"), "--epochs", "1"])
    assert result.exit_code == 2, result.output
    last_line = result.output.strip().splitlines()[-1]
    assert message in last_line and "Traceback" not in result.output


def test_bad_option_values_are_rejected_by_click(tmp_path):
    for args in (["--epochs", "0"], ["--seeds", "a,b"], ["--batch-size", "-1"], ["--lr", "0"]):
        result = CliRunner().invoke(main, args + ["--dry-run"])
        assert result.exit_code == 2 and "Invalid value" in result.output, args


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = CliRunner().invoke(main, ["--out", str(locked / "runs"), "--tasks", "count"])
    assert result.exit_code == 2 and "is not writable" in result.output


def test_a_run_folder_whose_claims_lock_another_user_made_stops_the_sweep_in_one_line(monkeypatch, tmp_path):
    from harness.claims import LOCK_NAME

    lock = tmp_path / "runs" / LOCK_NAME
    lock.parent.mkdir()
    lock.touch()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == lock else access(path, mode))
    result = CliRunner().invoke(main, ["--out", str(lock.parent), "--tasks", "count", "--epochs", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"error: {lock}, which every sweep in {lock.parent} writes to claim its runs, is not writable" \
        in result.output
    assert [path.name for path in lock.parent.iterdir()] == [LOCK_NAME]  # stopped before any run


def test_output_path_that_is_a_file_is_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["--out", str(blocker / "runs"), "--tasks", "count"])
    assert result.exit_code == 2
    assert f"output folder {blocker / 'runs'} is not writable" in result.output


def test_a_data_cache_that_cannot_be_written_stops_everything_in_one_line(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(blocker / "cache"))
    result = CliRunner().invoke(main, ["--out", str(tmp_path / "runs"), "--tasks", "count", "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == (f"error: the data cache {blocker / 'cache'} is not writable (Not a directory); "
                                     f"point $ADAPTBENCH_CACHE at a writable folder")


def test_list_and_dry_run():
    listing = invoke("--list").output
    assert "lora" in listing and "vit_micro_base_patch4_32" in listing and "offline-structured" in listing
    plan = invoke("--dry-run", "--tasks", "count", "--seeds", "0,1", "--epochs", "2", "--no-estimate").output
    assert plan.count("lora / count") == 2 and "epochs=2" in plan and "[8/8]" in plan  # 4 default methods
    assert plan.count("@high / count") == 6  # tome, pyra and small_peft, each at the default level


def test_help_names_every_option():
    text = invoke("--help").output
    for option in ("--methods", "--tasks", "--backbone", "--epochs", "--seeds", "--batch-size", "--device", "--out",
                   "--plugins", "--list", "--dry-run"):
        assert option in text


def test_measurement_options_reach_the_row_and_the_run_folder(plugin_file, tmp_path):
    out = tmp_path / "runs"
    result = invoke("--plugins", str(plugin_file), "--methods", "lora", "--tasks", "tiny", "--bench-batch", "4,1",
                    "--amp", "bf16", "--flops-breakdown", "--profile", "--threads", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads(next(out.glob("*.json")).read_text())
    metrics = record["metrics"]
    assert metrics["infer_batch"] == 4 and metrics["infer_img_per_s_b1"] > 0 and metrics["latency_ms_b1"] > 0
    assert metrics["precision"] == "bf16" and len(metrics["gmacs_per_block"].split(",")) == 12
    assert record["environment"]["cpu_threads"] == 2 and isinstance(metrics["infer_noisy"], bool)
    run_dir = out / next(out.glob("*.json")).stem
    traces = sorted(path.name for path in (run_dir / "profile").glob("*.pt.trace.json*"))
    assert any(name.startswith("train") for name in traces) and any(name.startswith("inference") for name in traces)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_isolated_runs_write_the_same_kind_of_record(plugin_file, tmp_path):
    out = tmp_path / "runs"
    result = invoke("--plugins", str(plugin_file), "--methods", "bitfit", "--tasks", "tiny", "--bench-batch", "8",
                    "--isolate", "--out", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["status"] == "ok" and record["metrics"]["test_acc_best"] > 0


def test_report_reads_the_runners_own_files(plugin_file, tiny_run, tmp_path):
    """The report on real run files (the plugin's suite) beside hand-made ones of another suite."""
    from conftest import run_record, write_runs

    _, out = tiny_run
    offline = write_runs(tmp_path / "offline_runs", [run_record("lora", "count")])
    result = invoke("report", str(out), str(offline), "--plugins", str(plugin_file), "--out", str(tmp_path / "rep"))
    assert result.exit_code == 0, result.output
    board = pd.read_csv(tmp_path / "rep" / "tiny" / "leaderboard.csv")
    assert board["method"].tolist() == ["lora", "bitfit"] and board["seeds"].tolist() == [2, 2]
    assert board["speedup_reference"].tolist() == ["lora", "lora"] and (board["acc_tiny_bright"] > 0).all()
    assert (tmp_path / "rep" / "offline" / "leaderboard.csv").exists()  # one report folder per suite


@pytest.mark.parametrize("refuse", [False, True])
def test_noisy_throughput_is_measured_again_then_flagged_or_refused(plugin_file, tmp_path, monkeypatch, refuse):
    import harness.pipeline
    from harness.measure import Throughput

    calls = []

    def noisy(model, image_size, device, *, batch_size, settings):
        calls.append(batch_size)
        return Throughput(median=100.0, iqr=50.0 - len(calls), repeats=7, batch_size=batch_size)

    monkeypatch.setattr(harness.pipeline, "inference_throughput", noisy)
    out = tmp_path / "runs"
    result = invoke("--plugins", str(plugin_file), "--methods", "bitfit", "--tasks", "tiny", "--bench-batch", "8",
                    "--out", str(out), *(["--refuse-noisy"] if refuse else []))
    record = json.loads(next(out.glob("*.json")).read_text())
    metrics = record["metrics"]
    assert len(calls) == 3 and metrics["infer_attempts"] == 3
    assert metrics["infer_noisy"] and metrics["infer_spread"] == pytest.approx(47 / 100)  # the least noisy of 3
    assert metrics["test_acc_best"] > 0  # a refused run keeps everything it measured
    if refuse:
        assert result.exit_code == 1 and record["status"] == "failed"
        assert "too noisy" in record["reason"] and "--max-spread 0.1" in record["reason"]
    else:
        assert result.exit_code == 0 and record["status"] == "ok"


BASELINE_PLUGIN = '''
import harness


@harness.register_method("twin_baseline", compresses=True, role="small-model baseline")
def twin_baseline(model, compression=None):
    """LoRA on the same backbone, declared as the small-model baseline by this plugin alone."""
    return harness.adapt(model, "lora")
'''


def test_a_plugin_declared_as_the_small_model_baseline_is_paired_by_adverse_compression(plugin_file, tmp_path):
    baseline = tmp_path / "baseline_plugin.py"
    baseline.write_text(BASELINE_PLUGIN)
    out = tmp_path / "runs"
    result = invoke("--plugins", f"{plugin_file},{baseline}", "--methods", "tome,twin_baseline", "--tasks", "tiny",
                    "--compression", "high", "--bench-batch", "8", "--out", str(out))
    assert result.exit_code == 0, result.output
    result = invoke("report", str(out), "--out", str(tmp_path / "rep"))  # no --plugins: the records suffice
    assert result.exit_code == 0, result.output
    adverse = pd.read_csv(tmp_path / "rep" / "tiny" / "adverse_compression.csv")
    assert adverse[["method", "compression", "n"]].values.tolist() == [["tome", "high", 1]]
    assert "tome@high - small-model baseline" in result.output
