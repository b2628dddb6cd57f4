"""Sweeps that survive: claims, dead runs, checkpoints, failure isolation, executors, progress and status."""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from submitit.core.utils import UncompletedJobError

from harness import runner, worker
from harness.claims import Claims
from harness.cli import main
from harness.config import RunConfig
from harness.progress import SweepProgress
from harness.store import STATUS_FAILED, STATUS_OK, STATUS_RUNNING, RunStore, read_json
from harness.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]

FAULTS = textwrap.dedent('''
    """Methods that go wrong in training, each its own way, and one that counts how often it really runs."""
    import os
    import time

    import torch
    import harness


    def _in_training(model, act):
        def hook(module, inputs, output):
            return act(output) if module.training else output
        model.register_forward_hook(hook)
        return model


    @harness.register_method("boom")
    def boom(model, compression=None):
        def act(output):
            raise RuntimeError("the plugin broke")
        return _in_training(model, act)


    @harness.register_method("nan_loss")
    def nan_loss(model, compression=None):
        return _in_training(model, lambda output: output * float("nan"))


    @harness.register_method("oom")
    def oom(model, compression=None):
        def act(output):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return _in_training(model, act)


    @harness.register_method("sleepy")
    def sleepy(model, compression=None):
        def act(output):
            time.sleep(float(os.environ.get("SLEEPY_SECONDS", "3")))
            return output
        return _in_training(model, act)


    @harness.register_method("counted")
    def counted(model, compression=None):
        """LoRA, and one line in $COUNT_FILE each time a run adapts a real (not meta-device) model."""
        if os.environ.get("COUNT_FILE") and next(model.parameters()).device.type != "meta":
            with open(os.environ["COUNT_FILE"], "a") as handle:
                handle.write(f"{os.getpid()}\\n")
        return harness.registry.get_method("lora").fn(model, compression)
''')


@pytest.fixture(scope="module")
def faults_plugin(tmp_path_factory, plugin_file) -> str:
    """The faulty methods' plugin, with the tiny task's beside it (a --plugins value)."""
    path = tmp_path_factory.mktemp("faults") / "faults.py"
    path.write_text(FAULTS)
    return f"{plugin_file},{path}"


def sweep_args(plugin_file: Path | str, out: Path, *extra: str, methods: str = "lora,full_ft", seeds: str = "0,1",
               epochs: str = "3") -> list[str]:
    return ["--plugins", str(plugin_file), "--methods", methods, "--tasks", "tiny_bright", "--seeds", seeds,
            "--epochs", epochs, "--no-pretrained", "--threads", "1", "--bench-batch", "8", "--no-estimate",
            "--out", str(out), *extra]


def run_cli(*args: str):
    from click.testing import CliRunner

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def start_sweep(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def rows(out: Path) -> dict[str, dict]:
    """Every run file of a folder, by key; each must be a whole JSON record."""
    found = {}
    for path in sorted(out.glob("*.json")):
        record = json.loads(path.read_text())  # a partial file would not parse
        assert record["key"] not in found, f"two files for one run: {path.name}"
        found[record["key"]] = record
    return found


def outcome(record: dict) -> tuple:
    """What must not depend on how a run was executed: its status, accuracies and its whole loss curve."""
    metrics = record.get("metrics", {})
    return (record["status"], metrics.get("test_acc_best"), metrics.get("test_acc_last"),
            tuple(entry["loss"] for entry in metrics.get("curve", [])))


@pytest.fixture(scope="module")
def uninterrupted(plugin_file, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli(*sweep_args(plugin_file, out, "--checkpoint-every", "1"))
    assert result.exit_code == 0, result.output
    return rows(out)


# --- claims -------------------------------------------------------------------------------------------------


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_live_claim_is_refused_and_a_dead_owners_claim_is_taken_over(tmp_path):
    claims = Claims(tmp_path)
    held = claims.take("run", {"name": "inline"})
    assert held is not None and claims.take("run", {"name": "inline"}) is None  # we are alive
    held.release()
    assert not claims.path("run").exists()
    claims.path("run").write_text(json.dumps({"host": os.uname().nodename, "pid": dead_pid()}))
    assert claims.owner("run") is None
    taken = claims.take("run", {"name": "inline"})
    assert taken is not None and read_json(claims.path("run"))["pid"] == os.getpid()
    taken.release()


def test_a_live_process_on_this_host_keeps_its_claim_against_a_job_of_the_same_id(tmp_path):
    """Two local sweeps on one folder both have a worker 0: the job-id takeover (a requeued Slurm job) must not let
    the second take the first's live claim and train the same config at the same time."""
    claims = Claims(tmp_path)
    held = claims.take("run", {"name": "local", "job_id": "worker0"})
    assert held is not None
    assert claims.take("run", {"name": "local", "job_id": "worker0"}) is None
    held.release()


def test_a_local_worker_on_another_host_keeps_its_live_claim_against_a_worker_of_the_same_pid_and_slot(tmp_path):
    """Two hosts' sweeps on one shared folder, each in a container whose sweep is pid 1: their worker 0s have one job
    id, which names no single job as a Slurm job's does."""
    claims = Claims(tmp_path)
    claims.path("run").write_text(json.dumps({"host": "node-17", "pid": 1, "name": "local", "job_id": "1.worker0"}))
    assert claims.owner("run", job_id="1.worker0") is not None
    assert claims.take("run", {"name": "local", "job_id": "1.worker0"}) is None


def test_local_workers_of_two_sweeps_have_two_job_ids(tmp_path, monkeypatch):
    class Built(Exception):
        pass

    def built(*args):
        raise Built(args[-1]["job_id"])
    monkeypatch.setattr(runner, "worker_job", built)
    executor = runner.LocalExecutor(1, {}, RunStore(tmp_path), torch.device("cpu"), [], None)
    with pytest.raises(Built, match=rf"^{os.getpid()}\.worker0$"):  # the sweep's own pid: another sweep's differs
        executor._run(configs_of(1)[0], 0)


def test_a_claim_from_another_host_is_dead_once_its_heartbeat_is_stale(tmp_path):
    claims = Claims(tmp_path)
    claims.path("run").write_text(json.dumps({"host": "node-17", "pid": 1, "name": "slurm", "job_id": "42_3"}))
    assert claims.owner("run") is not None  # fresh heartbeat: a live run on node-17
    assert claims.owner("run", job_id="42_3") is None  # ... unless we are that job, requeued
    stale = time.time() - 600
    os.utime(claims.path("run"), (stale, stale))
    assert claims.owner("run") is None


def test_a_dead_running_record_is_marked_died_and_results_csv_never_lists_it_running(tmp_path):
    import pandas as pd

    store = RunStore(tmp_path)
    config = RunConfig("lora", "tiny_bright", "vit_micro_small_patch4_32", 0, "none", False, "cpu",
                       TrainConfig(epochs=1))
    store.write(config, {"key": config.key, "config": config.to_dict(), "status": STATUS_RUNNING,
                         "executor": {"host": os.uname().nodename, "pid": dead_pid()}})
    store.claims.path(config.file_stem).write_text(json.dumps({"host": os.uname().nodename, "pid": dead_pid()}))
    frame = pd.read_csv(store.write_csv())
    assert frame["status"].tolist() == [STATUS_FAILED]
    record = read_json(store.path(config))
    assert record["failure"] == "died" and "died before finishing" in record["reason"]


# --- failure isolation ----------------------------------------------------------------------------------------


def test_a_raise_a_nan_an_oom_and_a_timeout_each_fail_their_run_and_the_others_go_on(faults_plugin, own_registry,
                                                                                    tmp_path, monkeypatch):
    monkeypatch.setenv("SLEEPY_SECONDS", "4")
    out = tmp_path / "runs"
    result = run_cli(*sweep_args(faults_plugin, out, "--timeout", "6", methods="boom,lora,nan_loss,oom,sleepy",
                                 seeds="0", epochs="2"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    by_method = {record["config"]["method"]: record for record in rows(out).values()}
    assert by_method["lora"]["status"] == STATUS_OK
    kinds = {method: (record["status"], record.get("failure")) for method, record in by_method.items()}
    assert kinds == {"lora": ("ok", None), "boom": ("failed", "error"), "nan_loss": ("failed", "nan"),
                     "oom": ("failed", "oom"), "sleepy": ("failed", "timeout")}
    assert "the plugin broke" in by_method["boom"]["reason"]
    assert "lower --batch-size" in by_method["oom"]["reason"] and "\n" not in by_method["oom"]["reason"]
    assert "--timeout 6" in by_method["sleepy"]["reason"]
    for method in ("boom", "nan_loss", "oom", "sleepy"):
        assert f"FAILED {method} / tiny_bright" in result.output
    assert "4 failed" in result.output


def test_a_failed_run_waits_for_rerun_failed(faults_plugin, own_registry, tmp_path):
    out = tmp_path / "runs"
    args = sweep_args(faults_plugin, out, methods="boom", seeds="0", epochs="1")
    assert run_cli(*args).exit_code == 1
    again = run_cli(*args)
    assert again.exit_code == 1 and "failed before (error: RuntimeError: the plugin broke)" in again.output
    retried = run_cli(*args, "--rerun-failed")
    assert retried.exit_code == 1 and "failed before" not in retried.output


# --- checkpoints ----------------------------------------------------------------------------------------------


# Ctrl-C; submitit's exit once it has requeued a preempted or timed-out Slurm job, and its error where it does not
@pytest.mark.parametrize("stop, failure", [(KeyboardInterrupt, "interrupted"), (SystemExit(-1), "stopped"),
                                           (UncompletedJobError("Job not requeued because: timed-out too many times."),
                                            "stopped")], ids=["ctrl-c", "requeued", "not-requeued"])
def test_a_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(loaded_plugin, tmp_path, monkeypatch,
                                                                         stop, failure):
    from harness.plan import load_tasks, plan_runs

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # as on a Slurm node, where submitit raises the last two
    monkeypatch.setattr(runner, "TOLD_TO_STOP", threading.Event())  # this test's, unset again by undo()

    tasks = load_tasks(["tiny_bright"], None)
    task = tasks["tiny_bright"]
    (config,) = plan_runs(["lora"], tasks, seeds=[0], compressions=None, backbone=None, pretrained=False,
                          device=torch.device("cpu"), train_overrides={"epochs": 6}, threads=1)
    options = runner.RunOptions(checkpoint_every=1, save_adapters=False)
    whole = runner.execute(config, task, RunStore(tmp_path / "whole"), torch.device("cpu"), lambda line: None,
                           options)
    assert whole["status"] == STATUS_OK, whole.get("reason")
    store = RunStore(tmp_path / "cut")

    def interrupt_at_step_seven(timeout, started):
        steps = []

        def tick():
            steps.append(1)
            if len(steps) == 7:  # in epoch 4 of 6 (two steps an epoch): epoch 3's checkpoint is the last
                if not isinstance(stop, type):  # submitit's signal handler calls the job's hook, then raises
                    worker.SubmititRun(None).checkpoint()
                raise stop
        return tick

    monkeypatch.setattr(runner, "_deadline", interrupt_at_step_seven)
    if isinstance(stop, Exception):  # recorded, as any failure; the job ends as submitit's own error would end it
        runner.execute(config, task, store, torch.device("cpu"), lambda line: None, options)
    else:
        with pytest.raises(type(stop) if isinstance(stop, BaseException) else stop):
            runner.execute(config, task, store, torch.device("cpu"), lambda line: None, options)
    assert read_json(store.path(config))["failure"] == failure and store.checkpoint_path(config).exists()
    assert store.claims.owner(config.file_stem) is None  # released: the requeued job or a rerun takes it
    monkeypatch.undo()
    lines = []
    resumed = runner.execute(config, task, store, torch.device("cpu"), lines.append, options)
    assert any("resumed from the checkpoint after epoch 3/6" in line for line in lines)
    assert outcome(resumed) == outcome(whole) and resumed["metrics"]["curve"] == whole["metrics"]["curve"]
    assert not store.checkpoint_path(config).exists()  # a finished run leaves none
    events = list((store.run_dir(config) / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1  # one curve, not one per start


@pytest.mark.parametrize("submitit_job", [False, True], ids=["outside-submitit", "in-a-submitit-job"])
def test_a_run_calling_sys_exit_itself_is_an_error_and_the_sweep_goes_on(loaded_plugin, tmp_path, monkeypatch,
                                                                         submitit_job):
    """Only submitit's exit, after it called the job's checkpoint hook, stops a run; its own sys.exit is a bug."""
    from harness.plan import load_tasks, plan_runs

    if submitit_job:
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    else:
        monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    tasks = load_tasks(["tiny_bright"], None)
    (config,) = plan_runs(["lora"], tasks, seeds=[0], compressions=None, backbone=None, pretrained=False,
                          device=torch.device("cpu"), train_overrides={"epochs": 1}, threads=1)
    task = tasks["tiny_bright"]
    store = RunStore(tmp_path)

    def exits(timeout, started):
        def tick():
            sys.exit(3)
        return tick
    monkeypatch.setattr(runner, "_deadline", exits)
    record = runner.execute(config, task, store, torch.device("cpu"), lambda line: None,
                            runner.RunOptions(checkpoint_every=1, save_adapters=False))
    assert record["failure"] == "error" and record["reason"] == "the run called sys.exit(3) before finishing"
    assert "SystemExit" in record["traceback"] and read_json(store.path(config))["failure"] == "error"


# --- fault injection ------------------------------------------------------------------------------------------


def test_sigkill_at_random_moments_loses_duplicates_and_corrupts_nothing(plugin_file, uninterrupted, tmp_path):
    """The sweep is killed (SIGKILL) at several random moments, resumed each time, and ends with exactly the rows
    of an uninterrupted sweep. More kills: ADAPTBENCH_TEST_KILLS."""
    out = tmp_path / "runs"
    args = sweep_args(plugin_file, out, "--checkpoint-every", "1")
    chance = random.Random(int(os.environ.get("ADAPTBENCH_TEST_KILL_SEED", "0")))
    kills = 0
    for _ in range(int(os.environ.get("ADAPTBENCH_TEST_KILLS", "3"))):
        process = start_sweep(args)
        time.sleep(chance.uniform(2.0, 9.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        for path in out.glob("*.json"):
            json.loads(path.read_text())  # every file whole after every kill
    assert kills > 0
    final = start_sweep(args)
    output, _ = final.communicate(timeout=300)
    assert final.returncode == 0, output
    found = rows(out)
    assert set(found) == set(uninterrupted)
    assert {key: outcome(record) for key, record in found.items()} == \
        {key: outcome(record) for key, record in uninterrupted.items()}
    assert not list(out.glob("*.claim")) and not list(out.glob("*.checkpoint.pt"))
    csv = (out / "results.csv").read_text().splitlines()
    assert len(csv) == 1 + len(uninterrupted) and STATUS_RUNNING not in "".join(csv)


def test_two_sweeps_on_one_folder_run_each_config_once(faults_plugin, own_registry, tmp_path):
    out, count = tmp_path / "runs", tmp_path / "adapted.txt"
    args = sweep_args(faults_plugin, out, methods="counted", seeds="0,1,2,3", epochs="2")
    sweeps = [start_sweep(args, env={**os.environ, "COUNT_FILE": str(count)}) for _ in range(2)]
    outputs = [sweep.communicate(timeout=300)[0] for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    assert len(count.read_text().split()) == 4  # each of the 4 configs trained once, by one sweep or the other
    assert all("4 ok, 0 failed" in output for output in outputs)  # each sweep waited for the other's runs
    assert len(rows(out)) == 4


# --- executors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("executor", [["--executor", "local", "--jobs", "2"],
                                      ["--executor", "slurm", "--slurm-cluster", "local", "--wait"]],
                         ids=["local-jobs-2", "submitit-local"])
def test_worker_executors_give_the_inline_result_set(plugin_file, uninterrupted, tmp_path, executor):
    out = tmp_path / "runs"
    result = run_cli(*sweep_args(plugin_file, out, "--checkpoint-every", "1", *executor))
    assert result.exit_code == 0, result.output
    found = rows(out)
    assert {key: outcome(record) for key, record in found.items()} == \
        {key: outcome(record) for key, record in uninterrupted.items()}
    names = {record["executor"]["name"] for record in found.values()}
    assert names == {executor[1]} and all(record["executor"]["job_id"] for record in found.values())
    if executor[1] == "slurm":
        submitted = json.loads((out / "slurm" / "submitted.json").read_text())
        assert {record["executor"]["job_id"] for record in found.values()} == \
            {entry["job_id"] for entry in submitted.values()}


def test_jobs_need_the_local_executor():
    result = run_cli("--jobs", "2", "--dry-run", "--no-estimate")
    assert result.exit_code == 2 and "add --executor local" in result.output


def test_local_workers_split_the_cpu_threads_and_record_them(plugin_file, tmp_path, monkeypatch):
    monkeypatch.delenv("ADAPTBENCH_BENCH_PRESET")  # the configs below are planned with the default protocol
    result = run_cli("--plugins", str(plugin_file), "--methods", "lora", "--tasks", "tiny_bright", "--dry-run",
                     "--no-estimate", "--executor", "local", "--jobs", "2", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    expected = max(1, (os.cpu_count() or 1) // 2)
    from harness.plan import load_tasks, plan_runs

    configs = plan_runs(["lora"], load_tasks(["tiny_bright"], None), seeds=[0], compressions=None, backbone=None,
                        pretrained=None, device=torch.device("cpu"), train_overrides={}, threads=expected)
    assert configs[0].file_stem in result.output


def test_the_slurm_dry_run_shows_submitits_array_script(plugin_file, tmp_path):
    result = run_cli(*sweep_args(plugin_file, tmp_path, "--dry-run", "--executor", "slurm", "--slurm-partition",
                                 "gpu", "--slurm-time", "2:30:00", "--slurm-array-parallelism", "2",
                                 "--slurm-opt", "constraint=h100"))
    assert result.exit_code == 0, result.output
    assert "#SBATCH --array=0-3%2" in result.output and "#SBATCH --partition=gpu" in result.output
    assert "#SBATCH --time=150" in result.output and "#SBATCH --constraint=h100" in result.output
    assert "4 missing" in result.output
    if not torch.cuda.is_available():  # planned for the nodes' GPUs, not for the machine that submits
        assert "device=cuda" in result.output and "device=cpu" not in result.output


@pytest.mark.parametrize("limit, minutes", [("90", 90), ("90:00", 90), ("90:30", 91), ("4:00:00", 240),
                                            ("1-0", 1440), ("1-2:30", 1590), ("1-2:30:01", 1591), ("0:30", 1)])
def test_slurm_time_reads_as_sbatch_reads_it(limit, minutes):
    from harness.slurm import parse_time

    assert parse_time(limit) == minutes


@pytest.mark.parametrize("limit, problem", [("1:99", "99 seconds out of range"), ("2:60:00", "60 minutes out of range"),
                                            ("1-24", "24 hours out of range"), ("0:00", "no time at all"),
                                            ("1-2-3", "not one of sbatch's time formats")])
def test_a_slurm_time_sbatch_would_read_otherwise_is_one_line(plugin_file, tmp_path, limit, problem):
    result = run_cli(*sweep_args(plugin_file, tmp_path, "--dry-run", "--executor", "slurm", "--slurm-time", limit))
    assert result.exit_code != 0 and problem in result.output and "Traceback" not in result.output


# --- progress and status ----------------------------------------------------------------------------------------


def configs_of(count: int) -> list[RunConfig]:
    return [RunConfig("lora", "tiny_bright", "vit_micro_small_patch4_32", seed, "none", False, "cpu",
                      TrainConfig(epochs=1)) for seed in range(count)]


def test_the_eta_scales_the_plans_estimate_by_how_finished_runs_compared():
    configs = configs_of(3)
    lines = []
    progress = SweepProgress(configs, {config.key: 10.0 for config in configs}, log=lines.append, bar=False)
    assert progress.eta() == 30.0
    progress.finished(configs[0], {"status": "failed", "reason": "x", "wall_seconds": 20.0})
    assert progress.eta() == 40.0  # twice as slow as estimated: the 2 runs left take 2 x 10 s each
    assert lines[-1] == "  1/3 done, about 40 s to go"
    halved = SweepProgress(configs, log=lines.append, bar=False, parallel=2)
    halved.finished(configs[0], {"status": "failed", "reason": "x", "wall_seconds": 20.0})
    assert halved.eta() == 20.0  # no estimates: the mean so far, two at a time


def test_status_shows_done_running_and_failed_runs(tmp_path):
    store = RunStore(tmp_path)
    done, live, dead = configs_of(3)
    store.write(done, {"key": done.key, "config": done.to_dict(), "status": STATUS_OK})
    claim = store.claims.take(live.file_stem, {"name": "local", "job_id": "worker1", "log": "runs/logs/x.log"})
    store.write(live, {"key": live.key, "config": live.to_dict(), "status": STATUS_RUNNING})
    store.write(dead, {"key": dead.key, "config": dead.to_dict(), "status": STATUS_RUNNING,
                       "executor": {"host": "vm", "pid": dead_pid()}})
    result = run_cli("status", str(tmp_path))
    claim.release()
    assert result.exit_code == 1, result.output
    assert "1 done, 1 running, 1 failed" in result.output
    assert "local job worker1" in result.output and "log runs/logs/x.log" in result.output
    assert "(died)" in result.output and "seed 2" in result.output


@pytest.mark.parametrize("refusal", [PermissionError(errno.EACCES, "Permission denied"),
                                     OSError(errno.EROFS, "Read-only file system")], ids=["other-user", "read-only"])
def test_status_of_a_folder_it_may_not_write_shows_a_dead_run_died_and_leaves_the_file(tmp_path, monkeypatch,
                                                                                       refusal):
    """Another user's run folder or a read-only mount: its lock cannot be opened for writing, so a dead run is
    settled as read."""
    import harness.claims

    store = RunStore(tmp_path)
    (dead,) = configs_of(1)
    store.write(dead, {"key": dead.key, "config": dead.to_dict(), "status": STATUS_RUNNING,
                       "executor": {"host": "vm", "pid": dead_pid()}})

    def read_only(lock):
        raise refusal
    monkeypatch.setattr(harness.claims, "folder_lock", read_only)
    result = run_cli("status", str(tmp_path))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # none raised
    assert "1 failed" in result.output and "(died)" in result.output and "Traceback" not in result.output
    assert read_json(store.path(dead))["status"] == STATUS_RUNNING


def test_settling_a_dead_run_does_not_hide_a_folder_error_other_than_a_refused_write(tmp_path, monkeypatch):
    import harness.claims

    store = RunStore(tmp_path)
    (dead,) = configs_of(1)
    store.write(dead, {"key": dead.key, "config": dead.to_dict(), "status": STATUS_RUNNING,
                       "executor": {"host": "vm", "pid": dead_pid()}})

    def disk_full(lock):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(harness.claims, "folder_lock", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.read(dead)


def test_on_a_terminal_progress_is_a_bar_over_the_sweep_and_one_over_the_epochs(capsys):
    configs = configs_of(2)
    progress = SweepProgress(configs, {config.key: 5.0 for config in configs}, bar=True)
    on_epoch = progress.epochs(configs[0])
    on_epoch({"epoch": 1})
    assert progress.epoch_bar.n == 1 and progress.bar.n == 0
    progress.finished(configs[0], {"status": "failed", "reason": "x", "wall_seconds": 5.0})
    assert progress.bar.n == 1 and progress.epoch_bar is None
    progress.close()
    err = capsys.readouterr()
    assert "sweep" in err.err and "ETA 5 s" in err.err and "FAILED (error): x" in err.out


def test_local_workers_on_a_gpu_machine_get_one_gpu_each(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    spread = runner.LocalExecutor(3, {}, RunStore(tmp_path), torch.device("cuda"), [], None)
    slots = [spread._environment(slot) for slot in range(3)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env, _ in slots] == ["0", "1", "0"]
    assert {device for _, device in slots} == {"cuda:0"}  # each worker sees its one GPU as cuda:0
    pinned = runner.LocalExecutor(2, {}, RunStore(tmp_path), torch.device("cuda", 1), [], None)
    assert [pinned._environment(slot)[0]["CUDA_VISIBLE_DEVICES"] for slot in range(2)] == ["1", "1"]


def test_local_workers_get_the_gpus_our_own_cuda_visible_devices_names(monkeypatch, tmp_path):
    """Given GPUs 2 and 3 (or MIG instances), a worker must get 3, not the index 1 that it has here."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    spread = runner.LocalExecutor(3, {}, RunStore(tmp_path), torch.device("cuda"), [], None)
    assert [spread._environment(slot)[0]["CUDA_VISIBLE_DEVICES"] for slot in range(3)] == ["2", "3", "2"]
    pinned = runner.LocalExecutor(1, {}, RunStore(tmp_path), torch.device("cuda", 1), [], None)
    assert pinned._environment(0)[0]["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-5c1a,MIG-77b0")
    assert runner.gpu_slots(torch.device("cuda")) == ["MIG-5c1a", "MIG-77b0"]


def test_an_inline_sweep_runs_in_the_calling_thread(tmp_path):
    """torch's CPU thread pool belongs to the thread that first computes: runs in another thread after any torch
    work in this one (the plan's estimate) ran a third slower on 2 cores."""
    import threading

    threads = []

    def executor(config):
        threads.append(threading.current_thread())
        return {"key": config.key, "config": config.to_dict(), "status": STATUS_FAILED, "reason": "stub"}

    configs = configs_of(2)
    runner.run_all(configs, RunStore(tmp_path), executor, progress=SweepProgress(configs, log=lambda line: None,
                                                                                    bar=False))
    assert threads == [threading.main_thread()] * 2


@pytest.mark.parametrize("damage", [lambda record: record.pop("status"), lambda record: record.update(metrics=None)],
                         ids=["no-status", "metrics-null"])
def test_a_run_file_damaged_by_hand_is_named_by_status_and_run_again_by_the_sweep(plugin_file, tmp_path, damage):
    out = tmp_path / "runs"
    arguments = sweep_args(plugin_file, out, methods="lora", seeds="0,1", epochs="1")
    assert run_cli(*arguments).exit_code == 0
    damaged = sorted(out.glob("*.json"))[0]
    record = json.loads(damaged.read_text())
    damage(record)
    damaged.write_text(json.dumps(record))
    status = run_cli("status", str(out))
    assert status.exit_code == 1 and f"  damaged  {damaged.name}: not a run record" in status.output, status.output
    result = run_cli(*arguments)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "not estimated for the 1 not yet done" in result.output and "2 ok, 0 failed" in result.output
    assert all(row["status"] == "ok" for row in rows(out).values())
    assert len(pd_rows(out / "results.csv")) == 2


def pd_rows(path: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(path).to_dict("records")


def test_slurm_wait_waits_for_a_run_another_sweep_holds_and_reports_its_record(plugin_file, tmp_path):
    import threading

    out = tmp_path / "runs"
    assert run_cli(*sweep_args(plugin_file, out, methods="lora", seeds="0", epochs="1")).exit_code == 0
    (path,) = out.glob("*.json")
    finished = json.loads(path.read_text())
    path.write_text(json.dumps({**finished, "status": STATUS_RUNNING}))  # another sweep is running it
    claim = RunStore(out).claims.take(path.stem, {"name": "inline"})

    def finish() -> None:
        path.write_text(json.dumps(finished))
        claim.release()
    threading.Timer(3.0, finish).start()
    result = run_cli(*sweep_args(plugin_file, out, "--executor", "slurm", "--slurm-cluster", "local", "--wait",
                                 methods="lora", seeds="0", epochs="1"))
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "Nothing to submit: 1 run(s) running or queued" in result.output
    assert "running or queued in another sweep" in result.output and "1 ok, 0 failed" in result.output


def test_status_asks_whether_a_submitted_job_still_runs_before_calling_its_run_queued(tmp_path):
    store = RunStore(tmp_path)
    live, gone = configs_of(2)
    ended = dead_pid()
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "submitted.json").write_text(json.dumps({
        live.file_stem: {"job_id": str(os.getpid()), "cluster": "local", "stdout": "a.out", "stderr": "a.err"},
        gone.file_stem: {"job_id": str(ended), "cluster": "local", "stdout": "b.out", "stderr": "b.err"}}))
    result = run_cli("status", str(store.folder))
    assert "1 queued, 1 missing" in result.output, result.output
    assert f"  missing  {gone.file_stem}: submitit local job {ended} is no longer queued or running and left no " \
           f"record (see b.err)" in result.output


FLAKY_PLUGIN = textwrap.dedent('''
    """A method that fails while $FLAKY is set."""
    import os

    import harness


    @harness.register_method("flaky")
    def flaky(model, compression=None):
        """LoRA, unless $FLAKY is set (and the model is real: the plan checks methods on meta-device models)."""
        if os.environ.get("FLAKY") and not next(model.parameters()).is_meta:
            raise RuntimeError("flaky by request")
        return harness.adapt(model, "lora")
''')


@pytest.mark.parametrize("executor", [["--executor", "local", "--jobs", "1"],
                                      ["--executor", "slurm", "--slurm-cluster", "local", "--wait"]],
                         ids=["local", "submitit-local"])
def test_a_failed_forced_rerun_in_a_worker_is_reported_failed_and_keeps_the_finished_run(plugin_file, tmp_path,
                                                                                       monkeypatch, executor,
                                                                                       own_registry):
    flaky = tmp_path / "flaky.py"
    flaky.write_text(FLAKY_PLUGIN)
    out = tmp_path / "runs"
    arguments = [*sweep_args(plugin_file, out, methods="flaky", seeds="0", epochs="1"), "--plugins", str(flaky)]
    assert run_cli(*arguments).exit_code == 0
    (finished,) = rows(out).values()
    monkeypatch.setenv("FLAKY", "1")
    result = run_cli(*arguments, "--force", *executor)
    assert result.exit_code == 1 and "0 ok, 1 failed" in result.output and "flaky by request" in result.output
    (kept,) = rows(out).values()
    assert kept["metrics"] == finished["metrics"] and "flaky by request" in kept["forced_rerun"]["reason"]


def test_status_names_a_file_with_an_unknown_status_or_a_config_without_its_names_as_damaged(tmp_path):
    store = RunStore(tmp_path)
    odd, nameless = configs_of(2)
    store.write(odd, {"key": odd.key, "config": odd.to_dict(), "status": "finished?"})
    store.write(nameless, {"key": nameless.key, "config": {**nameless.to_dict(), "method": None}, "status": "ok"})
    result = run_cli("status", str(tmp_path))
    assert result.exit_code == 1 and "Traceback" not in result.output and "2 damaged" in result.output, result.output
    assert store.read(odd) is None and store.read(nameless) is None  # a sweep runs them again


def test_a_slurm_job_whose_state_slurm_cannot_tell_is_still_queued(tmp_path, monkeypatch):
    import submitit

    from harness import slurm

    class Unanswered:
        def __init__(self, folder, job_id):
            self.state = "UNKNOWN"
    monkeypatch.setattr(submitit, "SlurmJob", Unanswered)
    store = RunStore(tmp_path)
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "submitted.json").write_text(json.dumps({"run": {"job_id": "77_0", "cluster": "slurm",
                                                                           "stdout": "o", "stderr": "e"}}))
    assert slurm.queued(store, "run") is not None


def test_slurm_wait_records_a_run_another_sweep_left_unfinished_as_died(plugin_file, tmp_path):
    import threading

    out = tmp_path / "runs"
    assert run_cli(*sweep_args(plugin_file, out, methods="lora", seeds="0", epochs="1")).exit_code == 0
    (path,) = out.glob("*.json")
    record = json.loads(path.read_text())
    record.pop("metrics")
    path.write_text(json.dumps({**record, "status": STATUS_RUNNING}))  # another sweep started it afresh ...
    claim = RunStore(out).claims.take(path.stem, {"name": "inline"})
    threading.Timer(3.0, claim.release).start()  # ... and ended without a word
    result = run_cli(*sweep_args(plugin_file, out, "--executor", "slurm", "--slurm-cluster", "local", "--wait",
                                 methods="lora", seeds="0", epochs="1"))
    assert result.exit_code == 1 and "0 ok, 1 failed" in result.output, result.output
    assert json.loads(path.read_text())["failure"] == "died"


@pytest.mark.parametrize("case", ["new", "forced-rerun", "forced-rerun-another-sweep-records"])
def test_a_slurm_job_killed_with_its_claim_fresh_is_recorded_died_at_once(loaded_plugin, tmp_path, monkeypatch, case):
    """scancel, an OOM kill or a lost node leaves the job's claim with a fresh heartbeat; the sweep that saw the
    job end takes that claim over by its job id instead of waiting out the heartbeat as if another sweep ran it.
    Where another sweep records the failure first, this one still reports its forced rerun as failed."""
    import types

    from harness import cli, slurm
    from harness.plan import load_tasks
    from harness.claims import this_process
    from harness.store import REPLACES, with_forced_rerun

    (config,) = configs_of(1)
    tasks = load_tasks([config.task], None)
    store = RunStore(tmp_path)
    finished = {**runner.new_record(config, tasks[config.task]), "status": STATUS_OK, "metrics": {}}
    forced = case != "new"
    if forced:
        store.write(config, finished)
    attempt_record = {}
    claim = store.claims.path(config.file_stem)

    def submit(jobs, todo, settings, store_):
        attempt_record.update(runner.new_record(config, tasks[config.task]), executor={
            "name": "slurm", "attempt": jobs[0].executor["attempt"], "host": "node-17", "pid": 1})
        store.write(config, {**attempt_record, REPLACES: finished} if forced else attempt_record)
        owner = {"host": "node-17", "pid": 1, "name": "slurm", "job_id": "42_3"}
        if case == "forced-rerun-another-sweep-records":
            owner = {**this_process(), "name": "failure record", "job_id": None}
        claim.write_text(json.dumps(owner))
        return [types.SimpleNamespace(job_id="42_3", paths=types.SimpleNamespace(stderr="42_3.err"))]

    def sleep(seconds):
        assert case == "forced-rerun-another-sweep-records", "waited for the killed job's own claim"
        store.write(config, with_forced_rerun(finished, {**attempt_record, "status": STATUS_FAILED,
                                                         "failure": "died", "reason": "seen by another sweep"}))
        claim.unlink()

    monkeypatch.setattr(slurm, "submit", submit)
    monkeypatch.setattr(slurm, "wait", lambda handles: None)
    monkeypatch.setattr(slurm, "job_outcome", lambda handle: None)
    monkeypatch.setattr(slurm, "queued", lambda *args, **kwargs: None)
    monkeypatch.setattr(cli.time, "sleep", sleep)
    progress = SweepProgress([config], log=lambda line: None, bar=False)
    (record,) = cli._run_on_slurm([config], tasks, store, torch.device("cpu"), [], None,
                                  runner.RunOptions(rerun="all" if forced else "missing"), slurm.SlurmSettings(),
                                  progress, True)
    assert record["status"] == STATUS_FAILED and record["failure"] == "died"
    stored = store.read(config)
    if forced:
        assert stored["status"] == STATUS_OK and stored["forced_rerun"]["failure"] == "died"
    else:
        assert stored["failure"] == "died" and "42_3" in stored["reason"]
    assert not claim.exists()
