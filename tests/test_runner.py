"""The executors' seam, the run store and what a run records about its device and host allocator."""
import json
import os
import platform
import signal
import subprocess
import textwrap
import time

import pytest
import torch

import harness.measure
from harness import runner, worker
from harness.config import RunConfig
from harness.results import environment
from harness.progress import SweepProgress
from harness.store import STATUS_OK, RunStore
from harness.train import TrainConfig


def config(seed: int = 0, device: str = "cpu") -> RunConfig:
    return RunConfig("lora", "tiny_bright", "vit_micro_small_patch4_32", seed, "none", False, device,
                     TrainConfig(epochs=1))


def test_run_all_reuses_finished_runs_and_hands_the_others_to_its_executor(tmp_path):
    store = RunStore(tmp_path)
    done, todo = config(0), config(1)
    store.write(done, {"key": done.key, "config": done.to_dict(), "status": STATUS_OK})
    handed = []

    def executor(run_config):
        handed.append(run_config)
        record = {"key": run_config.key, "config": run_config.to_dict(), "status": "failed", "reason": "stub"}
        store.write(run_config, record)
        return record

    progress = SweepProgress([done, todo], log=lambda line: None, bar=False)
    records = runner.run_all([done, todo], store, executor, progress=progress)
    assert handed == [todo] and [record["status"] for record in records] == [STATUS_OK, "failed"]
    assert store.read(done)["status"] == STATUS_OK and store.read(todo)["reason"] == "stub"
    assert sorted(path.name for path in store.folder.glob("*.json")) == sorted(
        [store.path(done).name, store.path(todo).name])


def test_a_worker_job_carries_the_full_device_not_just_its_type(tmp_path):
    """--device cuda:1 --isolate ran on cuda:0: the config keeps only the type, and the child re-resolved it."""
    run_config = config(device="cuda")
    job = runner.worker_job(run_config, RunStore(tmp_path), "cuda:1", None, ["plugin.py"], runner.RunOptions(), {})
    child = json.loads(job.command()[-1])
    assert child["device"] == "cuda:1" and RunConfig.from_dict(child["config"]) == run_config


def test_a_worker_runs_on_the_device_and_with_the_options_it_is_given(monkeypatch, tmp_path):
    resolved, executed = [], []
    monkeypatch.setattr(worker, "resolve_device", lambda name: resolved.append(name) or torch.device("cpu"))
    monkeypatch.setattr(worker, "load_tasks", lambda names, root, **options: {name: object() for name in names})
    monkeypatch.setattr(worker, "execute", lambda *args: executed.append(args) or {"status": STATUS_OK})
    run_config = config(device="cuda")
    options = runner.RunOptions(save_adapters=False, checkpoint_every=2, timeout=30.0)
    job = runner.worker_job(run_config, RunStore(tmp_path), "cuda:1", None, [], options, {"name": "local"})
    assert worker.main(job.command()[-1:]) == 0
    assert resolved == ["cuda:1"] and executed[0][0] == run_config and executed[0][5] == options
    assert executed[0][6]["name"] == "local"


def test_a_worker_stopped_by_ctrl_c_records_the_run_interrupted_and_returns_130(monkeypatch, loaded_plugin,
                                                                                   tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(runner, "train_and_measure", interrupted)
    store = RunStore(tmp_path)
    job = runner.worker_job(config(), store, "cpu", None, [], runner.RunOptions(), {"name": "local"})
    assert worker.main(job.command()[-1:]) == runner.EXIT_INTERRUPTED  # returned, not raised to its stderr
    assert store.read(config())["failure"] == "interrupted"


def test_a_worker_stopped_by_ctrl_c_while_it_imports_exits_130_without_a_traceback(tmp_path):
    job = runner.worker_job(config(), RunStore(tmp_path), "cpu", None, [], runner.RunOptions(), {"name": "local"})
    process = subprocess.Popen(job.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # in its imports: torch's alone take seconds
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == runner.EXIT_INTERRUPTED and "Traceback" not in stderr, stderr


CTRL_C_AT_IMPORT = textwrap.dedent('''
    import os, signal, sys


    class CtrlCAt:
        """Sends this process SIGINT as the import of each module named in $CTRL_C_AT (comma-separated) begins."""

        def __init__(self):
            self.modules = set(os.environ["CTRL_C_AT"].split(","))

        def find_spec(self, name, path=None, target=None):
            if name in self.modules:
                self.modules.discard(name)
                os.kill(os.getpid(), signal.SIGINT)
            return None


    sys.meta_path.insert(0, CtrlCAt())
''')


def ctrl_c_at(tmp_path, modules: str) -> dict:
    """The environment of a process that gets a Ctrl-C as each of ``modules`` starts to import."""
    (tmp_path / "sitecustomize.py").write_text(CTRL_C_AT_IMPORT)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "CTRL_C_AT": modules}


def test_a_ctrl_c_while_torch_imports_numpy_stops_the_worker_too(tmp_path):
    """torch's C extension imports numpy and swallows any exception raised there, a KeyboardInterrupt too."""
    job = runner.worker_job(config(), RunStore(tmp_path / "runs"), "cpu", None, [], runner.RunOptions(),
                            {"name": "local"})
    process = subprocess.run(job.command(), capture_output=True, text=True, timeout=120,
                             env=ctrl_c_at(tmp_path, "numpy"))
    assert process.returncode == runner.EXIT_INTERRUPTED and "Traceback" not in process.stderr, process.stderr


def test_a_worker_of_a_sweep_that_ignores_ctrl_c_ignores_it_while_it_imports_and_runs(loaded_plugin, tmp_path):
    """A sweep a script starts in the background inherits SIGINT ignored: a Ctrl-C meant for the foreground
    leaves its workers alone, in their imports (numpy) and in the run (tensorboard loads as training starts)."""
    from harness.plan import load_tasks, plan_runs

    (planned,) = plan_runs(["lora"], load_tasks(["tiny_bright"], None), seeds=[0], compressions=None, backbone=None,
                           pretrained=False, device=torch.device("cpu"), train_overrides={"epochs": 1}, threads=1)
    store = RunStore(tmp_path / "runs")
    job = runner.worker_job(planned, store, "cpu", None, [str(loaded_plugin)], runner.RunOptions(save_adapters=False),
                            {"name": "local"})
    process = subprocess.run(job.command(), capture_output=True, text=True, timeout=300,
                             env=ctrl_c_at(tmp_path, "numpy,torch.utils.tensorboard"),
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert process.returncode == 0, (process.returncode, store.read(planned))
    assert store.read(planned)["status"] == STATUS_OK


def test_a_run_uses_the_threads_its_config_names(monkeypatch, loaded_plugin, tmp_path):
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    monkeypatch.setattr(runner, "train_and_measure", lambda *args, **kwargs: {"test_acc_best": 1.0})
    task = harness.registry.get_task("tiny_bright").fn(None)
    run_config = RunConfig(**{**config().__dict__, "threads": 1})
    assert runner.execute(run_config, task, RunStore(tmp_path), torch.device("cpu"), lambda line: None)
    assert threads == [1] and run_config.key != config().key  # threads change the figures: another run


def test_environment_records_the_device_with_its_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90000)
    recorded = environment(torch.device("cuda", 1), "glibc default")
    assert recorded["device"] == "cuda:1" and recorded["device_name"] == "Fake GPU"
    assert recorded["cpu_allocator"] == "glibc default"


@pytest.fixture
def fresh_allocator_setting():
    harness.measure.steady_host_allocator.cache_clear()
    yield
    harness.measure.steady_host_allocator.cache_clear()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_a_run_sets_the_host_allocator_before_anything_is_timed_and_records_it(
        monkeypatch, fresh_allocator_setting, loaded_plugin, tmp_path):
    calls = []
    monkeypatch.setattr(harness.measure, "_mallopt", lambda parameter, value: calls.append(parameter) or True)

    def pipeline(*args, **kwargs):
        assert len(calls) == 2, "the allocator must be set before the run's first timed step"
        return {"test_acc_best": 1.0}

    monkeypatch.setattr(runner, "train_and_measure", pipeline)
    task = harness.registry.get_task("tiny_bright").fn(None)
    record = runner.execute(config(), task, RunStore(tmp_path), torch.device("cpu"), lambda line: None)
    assert record["status"] == STATUS_OK and "freed memory kept" in record["environment"]["cpu_allocator"]


def test_environment_sets_nothing(monkeypatch, fresh_allocator_setting):
    calls = []
    monkeypatch.setattr(harness.measure, "_mallopt", lambda parameter, value: calls.append(parameter) or True)
    environment(torch.device("cpu"), "recorded elsewhere")
    assert calls == []


def test_the_deadline_is_checked_once_more_after_the_measurement(monkeypatch, loaded_plugin):
    from harness import pipeline

    events = []
    measure = pipeline.measure_inference
    monkeypatch.setattr(pipeline, "measure_inference",
                        lambda *args, **kwargs: events.append("measured") or measure(*args, **kwargs))
    from harness.plan import load_tasks, plan_runs

    tasks = load_tasks(["tiny_bright"], None)
    (planned,) = plan_runs(["lora"], tasks, seeds=[0], compressions=None, backbone="vit_micro_small_patch4_32",
                           pretrained=False, device=torch.device("cpu"), train_overrides={"epochs": 1})
    pipeline.train_and_measure(planned, tasks["tiny_bright"], torch.device("cpu"), lambda line: None,
                               tick=lambda: events.append("tick"))
    assert "measured" in events and events[-1] == "tick"  # a run past its deadline while measuring is one
