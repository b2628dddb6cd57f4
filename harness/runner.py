"""Executors: each takes one planned run and leaves exactly one result file in the run store.

``run_all`` walks a plan: it reuses finished runs, leaves configs another live process holds to it (and waits
for them), and hands every other run to an executor, a callable ``executor(config) -> record | None`` (None: the
config was claimed by another process first). Two live here: :func:`inline_executor` (in this process) and
:class:`LocalExecutor` (``--executor local --jobs N``: one worker process per run, N at once, each pinned to a
GPU or to its share of the CPU threads). :mod:`harness.slurm` hands the same worker jobs to submitit.

Whoever executes a run claims it first (:mod:`harness.claims`), in the process that trains it, so a live run
is never run twice and a dead one is known dead; the run store defines where a record lives and when it is
finished. What goes wrong in a run is caught here, recorded with a kind (``failure``) and a one-line reason,
and the sweep goes on.
"""
from __future__ import annotations

import gc
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from submitit.core.utils import UncompletedJobError

from . import registry
from .checkpoint import Checkpointer
from .claims import owner_summary, this_process
from .config import RunConfig
from .data import TaskData
from .errors import RunFailed, RunTimeout, UserError, one_line
from .measure import steady_host_allocator
from .pipeline import Log, noisy_refusal, train_and_measure
from .progress import SweepProgress
from .results import environment
from .store import (REPLACES, RETRIED, SCHEMA_VERSION, STATUS_FAILED, STATUS_OK, STATUS_RUNNING, RunStore,
                    attempt_outcome, finished_of, is_run_record, read_json, with_forced_rerun, written_by)

Executor = Callable[[RunConfig], "dict | None"]
WAIT_SECONDS = 2.0  # how often a sweep looks again at runs another process is running
# Set by submitit's checkpoint hook (:meth:`harness.worker.SubmititRun.checkpoint`), which its signal handler calls
# just before it exits the process, the job requeued, or raises UncompletedJobError: a SystemExit after it is
# submitit's; any other is the run's own.
TOLD_TO_STOP = threading.Event()
KEEPS_CHECKPOINT = ("timeout", "interrupted", "stopped")  # failures a rerun resumes from the checkpoint
EXIT_CLAIMED = 3  # a worker's exit code: another live process had claimed its config
EXIT_INTERRUPTED = 130  # a worker's exit code when stopped by Ctrl-C: a shell's for a process ended by SIGINT (128 + 2)


@dataclass(frozen=True)
class RunOptions:
    """How runs are executed, which does not change what they compute, so it is not in their key."""

    save_adapters: bool = True
    checkpoint_every: int = 0  # epochs between checkpoints (0: none)
    timeout: float | None = None  # seconds a run may take, measured from its start
    rerun: str = "missing"  # which stored runs run again: one of RERUN (see to_run)


RERUN = ("missing", "failed", "all")  # default; --rerun-failed; --force


def to_run(record: dict | None, rerun: str = "missing") -> bool:
    """Whether a config with this stored record (None: none) is to run. A finished one only with ``all``
    (``--force``); a failed one with ``failed`` (``--rerun-failed``) or ``all``, or when its kind is one a rerun
    should not meet again (:data:`harness.store.RETRIED`; a record written before failures had kinds counts as
    one); a ``running`` one whose process died is marked failed first (:meth:`RunStore.read`)."""
    if record is None or record["status"] == STATUS_RUNNING:
        return True
    if record["status"] == STATUS_OK:
        return rerun == "all"
    return rerun != "missing" or record.get("failure", "died") in RETRIED


def task_info(name: str, task: TaskData) -> dict:
    """What a run record says of its task, so the report needs no task plugin to read it, and where its data came
    from (folder, list files, fingerprint)."""
    spec = registry.get_task(name)
    return {"suite": spec.suite, "group": spec.group, "num_classes": task.num_classes,
            "split_sizes": task.split_sizes(), "data": task.identity}


def new_record(config: RunConfig, task: TaskData) -> dict:
    """A record before its run: config, what the method and task are, status ``running``."""
    return {"schema": SCHEMA_VERSION, "key": config.key, "config": config.to_dict(), "status": STATUS_RUNNING,
            "method_info": registry.get_method(config.method).info(), "task_info": task_info(config.task, task)}


def _deadline(timeout: float | None, started: float) -> Callable[[], None] | None:
    if timeout is None:
        return None

    def tick() -> None:
        if time.perf_counter() - started > timeout:
            raise RunTimeout(f"the run took longer than --timeout {timeout:g} s; raise it, or rerun with "
                             f"--rerun-failed and --checkpoint-every to go on from the last checkpoint")
    return tick


def _out_of_memory(exc: BaseException, config: RunConfig, device: torch.device) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"out of memory on {device} ({first}); lower --batch-size (now {config.train.batch_size}), train in "
            f"bf16 (--train-precision bf16), or run fewer jobs per device")


def execute(config: RunConfig, task: TaskData, store: RunStore, device: torch.device, log: Log,
            options: RunOptions = RunOptions(), executor: dict | None = None,
            on_epoch: Callable[[dict], None] | None = None) -> dict | None:
    """Claim ``config``, run it and write its result file: ``running`` first, then ``ok`` or ``failed`` with a
    kind and a reason. None when another live process holds the claim (nothing is written); the stored record
    when, once claimed, it is one ``options.rerun`` does not run again (another process finished it).

    ``executor`` (name, job id, log) joins the record's ``executor`` with this process's host and pid. With
    ``options.save_adapters`` the trained adapter goes beside the record (:meth:`RunStore.adapter_path`): only
    an ``ok`` run leaves one. A checkpoint of this config (:meth:`RunStore.checkpoint_path`) is resumed from."""
    executor = {"name": "inline", "job_id": None, "log": None, **(executor or {})}
    claim = store.claims.take(config.file_stem, executor)
    if claim is None:
        return None
    with claim:
        stored = store.read(config)
        if stored is not None and stored["status"] != STATUS_RUNNING and not to_run(stored, options.rerun):
            return stored  # finished by another process since this sweep looked
        return _execute(config, task, store, device, log, options, {**executor, **this_process()}, on_epoch,
                        finished=finished_of(stored))


def _execute(config: RunConfig, task: TaskData, store: RunStore, device: torch.device, log: Log,
             options: RunOptions, executor: dict, on_epoch: Callable[[dict], None] | None,
             finished: dict | None = None) -> dict:
    """Run ``config`` and write its record. ``finished``: the ``ok`` record a forced rerun replaces, which only an
    ``ok`` rerun does: the ``running`` record carries it (:data:`~harness.store.REPLACES`), so a kill gives it back
    (:meth:`RunStore.settle`), and any other ending writes it back too, noting the attempt
    (:func:`~harness.store.with_forced_rerun`); the failure is in the returned record, the sweep's summary and its
    exit code. Its adapter stays until the new one is in place."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.train.compile or config.measure.compile:
        # Each run compiles new models of the same classes; past dynamo's recompile limit (8) an inline sweep's
        # later runs would run eagerly, warning once, while their rows said compiled.
        torch._dynamo.reset()
    # Set before anything is timed, for the whole process; the record says what was set.
    record = {**new_record(config, task), "environment": environment(device, steady_host_allocator()),
              "executor": executor}
    adapter = store.adapter_path(config)
    trained_adapter = store.new_adapter_path(config) if finished else adapter
    store.new_adapter_path(config).unlink(missing_ok=True)  # a killed forced rerun's
    if finished is None:
        adapter.unlink(missing_ok=True)
    if task.problem is not None:  # bad data: recorded as failed without starting, so the other tasks go on
        record.update(status=STATUS_FAILED, failure="data", reason=task.problem, wall_seconds=0.0)
        store.write(config, with_forced_rerun(finished, record) if finished else record)
        return record
    store.write(config, {**record, REPLACES: finished} if finished else record)
    checkpoint = Checkpointer(store.checkpoint_path(config), options.checkpoint_every, config.key, log)
    started = time.perf_counter()
    try:
        record["metrics"] = train_and_measure(config, task, device, log, store.run_dir(config),
                                              trained_adapter if options.save_adapters else None, checkpoint=checkpoint,
                                              tick=_deadline(options.timeout, started), on_epoch=on_epoch)
        refusal = noisy_refusal(record["metrics"], config.measure)
        record["status"] = STATUS_OK if refusal is None else STATUS_FAILED
        if refusal is not None:
            record.update(failure="noisy", reason=refusal)
    except KeyboardInterrupt:
        record.update(status=STATUS_FAILED, failure="interrupted", reason="interrupted by the user")
        raise
    except SystemExit as exc:
        if not TOLD_TO_STOP.is_set():  # the run's own code called sys.exit: a bug, as any exception
            record.update(status=STATUS_FAILED, failure="error", traceback=traceback.format_exc(),
                          reason=f"the run called sys.exit({exc.code!r}) before finishing")
        else:  # submitit's signal handler, once it has requeued the job (preempted, out of time)
            record.update(status=STATUS_FAILED, failure="stopped",
                          reason=f"its process was told to exit (code {exc.code}) before finishing, as submitit "
                                 f"does when Slurm preempts the job or its time is up; the requeued job, or a "
                                 f"rerun, goes on from the last checkpoint (--checkpoint-every)")
            raise
    except UncompletedJobError as exc:  # submitit's signal handler, where it does not requeue the job
        record.update(status=STATUS_FAILED, failure="stopped",
                      reason=f"Slurm stopped the job before it finished and submitit did not requeue it ({exc}); a "
                             f"rerun goes on from the last checkpoint (--checkpoint-every)")
    except torch.cuda.OutOfMemoryError as exc:
        record.update(status=STATUS_FAILED, failure="oom", reason=_out_of_memory(exc, config, device))
    except RunFailed as exc:
        record.update(status=STATUS_FAILED, failure=exc.failure, reason=str(exc))
    except UserError as exc:
        record.update(status=STATUS_FAILED, failure="error", reason=str(exc))
    except Exception as exc:  # one broken run must not stop the others; the traceback is kept in the file
        record.update(status=STATUS_FAILED, failure="error", reason=one_line(exc), traceback=traceback.format_exc())
    finally:
        record["wall_seconds"] = time.perf_counter() - started
        if record["status"] != STATUS_OK:
            trained_adapter.unlink(missing_ok=True)
        elif finished is not None:  # the new adapter (or none, with --no-save-adapters) in place of the old
            if trained_adapter.exists():
                os.replace(trained_adapter, adapter)
                record["metrics"]["adapter_file"] = adapter.name
            else:
                adapter.unlink(missing_ok=True)
        store.write(config, record if finished is None or record["status"] == STATUS_OK
                    else with_forced_rerun(finished, record))
        if record.get("failure") not in KEEPS_CHECKPOINT:  # after the record: a kill between keeps it resumable
            checkpoint.remove()
        if device.type == "cuda":  # here, not in the except clause, whose traceback still holds the run's tensors
            gc.collect()
            torch.cuda.empty_cache()  # the next inline run starts from the same free memory, whatever this one did
    return record


def inline_executor(tasks: dict[str, TaskData], store: RunStore, device: torch.device, log: Log,
                    options: RunOptions = RunOptions(), progress: SweepProgress | None = None) -> Executor:
    """Runs in this process, one after another."""
    return lambda config: execute(config, tasks[config.task], store, device, log, options,
                                  on_epoch=None if progress is None else progress.epochs(config))


# A worker process's entry, as ``python -m harness.worker`` but for a Ctrl-C while it imports (torch takes
# seconds): that exits 130 at once and quietly, as nothing has started. Raising KeyboardInterrupt there is not
# enough: torch's C extension swallows any exception while it imports numpy, and Python 3.11 turns one raised in a
# class body's __set_name__ into a RuntimeError, so a Ctrl-C in those moments was lost or became a traceback.
# A worker of a sweep started in the background by a script inherits SIGINT ignored, and keeps it ignored.
WORKER_ENTRY = ("import os, signal, sys\n"
                "interrupt = signal.getsignal(signal.SIGINT)\n"
                "if interrupt is not signal.SIG_IGN:\n"
                f"    signal.signal(signal.SIGINT, lambda number, frame: os._exit({EXIT_INTERRUPTED}))\n"
                "from harness.worker import main\n"
                "signal.signal(signal.SIGINT, interrupt)\n"
                "sys.exit(main(sys.argv[1:]))")


@dataclass(frozen=True)
class WorkerJob:
    """One run as a worker process (:data:`WORKER_ENTRY`) or a submitit job executes it: everything it needs, as
    plain data (JSON for the command line, a pickle for submitit)."""

    config: dict
    out: str
    device: str
    data_root: str
    plugins: tuple[str, ...]
    options: dict
    executor: dict

    def command(self) -> list[str]:
        return [sys.executable, "-c", WORKER_ENTRY, json.dumps(asdict(self))]


def worker_job(config: RunConfig, store: RunStore, device: str, data_root: Path | None, plugins: Sequence[str],
               options: RunOptions, executor: dict) -> WorkerJob:
    """The job of ``config``: the full device string (``cuda:1`` stays ``cuda:1``) and the run options."""
    return WorkerJob(config.to_dict(), str(store.folder), device, str(data_root or ""), tuple(plugins),
                     asdict(options), executor)


def gpu_slots(device: torch.device) -> list[str]:
    """The GPUs local workers share out, the one asked for (``cuda:N``) or every visible one, as a child's
    ``CUDA_VISIBLE_DEVICES`` must name them: by our own ``CUDA_VISIBLE_DEVICES`` where it is set (our ``cuda:0`` is
    its first entry, which may be GPU 2 or a MIG instance's UUID), else by index."""
    if device.type != "cuda":
        return []
    visible = [name.strip() for name in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if name.strip()]
    count = torch.cuda.device_count()
    names = visible[:count] if "CUDA_VISIBLE_DEVICES" in os.environ else [str(index) for index in range(count)]
    return [names[device.index]] if device.index is not None else names


class LocalExecutor:
    """``jobs`` worker processes on this machine, one run each at a time: a fresh process per run, so no
    allocator or compile state from an earlier run can change a run's figures.

    On a GPU machine worker slot i runs on GPU ``i mod n`` (``CUDA_VISIBLE_DEVICES`` set for it); CPU threads are
    the configs' own (the CLI splits the cores between jobs and records it in each config). With one job the
    worker prints to our output; with more each run's output goes to ``<out>/logs/<run>.log``. A run of a task
    with bad data is recorded here: there is nothing to run."""

    def __init__(self, jobs: int, tasks: dict[str, TaskData], store: RunStore, device: torch.device,
                 plugins: Sequence[str], data_root: Path | None, options: RunOptions = RunOptions()) -> None:
        self.parallel, self.tasks, self.store, self.device = jobs, tasks, store, device
        self.plugins, self.data_root, self.options = list(plugins), data_root, options
        self.gpus = gpu_slots(device)
        self.slots: queue.Queue[int] = queue.Queue()
        for slot in range(jobs):
            self.slots.put(slot)

    def _environment(self, slot: int) -> tuple[dict, str]:
        env = dict(os.environ)
        if not self.gpus:
            return env, str(self.device)
        env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return env, "cuda:0"

    def __call__(self, config: RunConfig) -> dict | None:
        task = self.tasks[config.task]
        if task.problem is not None:
            return execute(config, task, self.store, self.device, lambda line: None, self.options)
        slot = self.slots.get()
        try:
            return self._run(config, slot)
        finally:
            self.slots.put(slot)

    def _run(self, config: RunConfig, slot: int) -> dict | None:
        env, device = self._environment(slot)
        log = self.store.log_path(config) if self.parallel > 1 else None
        attempt = uuid.uuid4().hex  # which record, or note of a forced rerun, this worker wrote
        job = worker_job(config, self.store, device, self.data_root, self.plugins, self.options,
                         {"name": "local", "job_id": f"{os.getpid()}.worker{slot}",  # two sweeps' worker 0: two jobs
                          "log": str(log) if log else None, "attempt": attempt})
        limit = None if self.options.timeout is None else self.options.timeout + 60  # the run's own check first
        try:
            if log is None:
                code = subprocess.run(job.command(), env=env, check=False, timeout=limit).returncode
            else:
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "w") as output:
                    code = subprocess.run(job.command(), env=env, check=False, timeout=limit, stdout=output,
                                          stderr=subprocess.STDOUT).returncode
        except subprocess.TimeoutExpired:  # subprocess.run killed it
            return self._failed(config, "timeout", f"the worker process outlived --timeout "
                                                   f"{self.options.timeout:g} s and was killed",
                                read_json(self.store.path(config)))
        if code == EXIT_CLAIMED:
            return None
        record = self.store.read(config)  # a worker that died after starting is settled as died here
        if record is None or record.get("status") == STATUS_RUNNING or (code != 0 and not written_by(record, attempt)):
            where = f"; see {log}" if log else " (see its output above)"
            return self._failed(config, "died", f"the worker process exited with code {code} before "
                                                f"finishing{where}", record)
        return attempt_outcome(record, attempt)

    def _failed(self, config: RunConfig, failure: str, reason: str, seen: dict | None) -> dict | None:
        return write_failure(config, self.tasks[config.task], self.store, failure, reason, seen)


def write_failure(config: RunConfig, task: TaskData, store: RunStore, failure: str, reason: str,
                  seen: dict | None, job_id: str | None = None) -> dict | None:
    """Record ``config`` as failed, of kind ``failure``, where its executor saw it end unfinished. ``seen``: the
    record the executor found then (the run's own, if it wrote one; a finished run a forced rerun replaces; or
    None), marked failed and written back, its adapter removed; or, where a finished run is on file (a forced
    rerun's), that run written back with a note of the failure, its adapter kept. Returns the failed record;
    None, writing nothing, when another live process has claimed the config since (a sweep beside ours found the
    run dead and runs it: its files are its own); the stored record, writing nothing, when another process has
    recorded the config since (a sweep run meanwhile finished it). ``job_id``: the Slurm job that ran it and has
    ended, whose claim (its heartbeat still fresh where the job was killed) is taken over at once."""
    claim = store.claims.take(config.file_stem, {"name": "failure record", "job_id": job_id, "log": None})
    if claim is None:
        return None
    with claim:
        stored = read_json(store.path(config))
        if stored != seen and is_run_record(stored) and stored["status"] != STATUS_RUNNING:
            return stored  # a waiting sweep looks hours after its job died: a later sweep may have run it since
        finished = finished_of(seen) or finished_of(stored)
        record = {**(seen or new_record(config, task)), "status": STATUS_FAILED, "failure": failure,
                  "reason": reason}
        record.pop(REPLACES, None)
        store.new_adapter_path(config).unlink(missing_ok=True)
        if finished is None:
            store.adapter_path(config).unlink(missing_ok=True)  # a failed run leaves no adapter
        store.write(config, record if finished is None else with_forced_rerun(finished, record))
    return record


def triage(configs: Sequence[RunConfig], store: RunStore, progress: SweepProgress,
           rerun: str = "missing") -> tuple[dict[str, dict], list[RunConfig]]:
    """The stored records kept (by key) and the configs to run (:func:`to_run`)."""
    records: dict[str, dict] = {}
    todo = []
    for config in configs:
        record = store.read(config)
        if to_run(record, rerun):
            todo.append(config)
        elif record["status"] == STATUS_OK:
            progress.reused(config, f"already done, reusing {store.path(config).name} (--force reruns)")
            records[config.key] = record
        else:
            progress.reused(config, f"failed before ({record.get('failure')}: {record.get('reason')}); "
                                    f"--rerun-failed runs it again")
            records[config.key] = record
    return records, todo


def run_all(configs: Sequence[RunConfig], store: RunStore, executor: Executor, *, rerun: str = "missing",
            parallel: int = 1, progress: SweepProgress | None = None) -> list[dict]:
    """Every config's record, in plan order: kept ones as :func:`triage` says, one a live process holds waited
    for, any other run by ``executor`` (which is to execute with the same ``rerun``), ``parallel`` at a time."""
    progress = progress or SweepProgress(configs)
    records, todo = triage(configs, store, progress, rerun)
    lock = threading.Lock()
    waiting: list[RunConfig] = []

    def run(config: RunConfig) -> None:
        record = None
        if store.claims.owner(config.file_stem) is None:
            progress.started(config)
            record = executor(config)
        with lock:
            if record is None:
                waiting.append(config)
            else:
                records[config.key] = record
                progress.finished(config, record)

    if parallel == 1:  # in this thread: torch's CPU thread pool belongs to it, and a second one would halve speed
        for config in todo:
            run(config)
    else:  # the threads only wait for worker processes
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(run, todo))
    announced = set()
    while waiting:
        config = waiting.pop(0)
        owner = store.claims.owner(config.file_stem)
        if owner is not None:
            if config.key not in announced:
                announced.add(config.key)
                progress.log(f"waiting for {config.label}: running in another process ({owner_summary(owner)})")
            waiting.append(config)
            time.sleep(WAIT_SECONDS / len(waiting))
            continue
        record = store.read(config)
        if not to_run(record, "missing"):  # finished (or failed for good) by its owner
            progress.reused(config, f"{record['status']} in another process")
            records[config.key] = record
        else:  # its owner died: ours to run
            run(config)
    progress.close()
    return [records[config.key] for config in configs]
