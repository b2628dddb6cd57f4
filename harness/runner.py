"""Executors: each takes one planned run and leaves exactly one result file in the run store.

``run_all`` walks a plan, reusing finished runs, and hands each other run to an executor, a callable
``executor(config) -> record``. Two exist: :func:`inline_executor` (in this process) and
:func:`isolated_executor` (a fresh Python process per run, ``--isolate``). Any other (a worker pool, a Slurm
array) plugs in the same way: it needs only the run store, which defines where a record lives and when it is
finished.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import registry
from .config import RunConfig
from .data import TaskData
from .errors import RunFailed, UserError
from .measure import steady_host_allocator
from .pipeline import Log, noisy_refusal, train_and_measure
from .results import environment
from .store import SCHEMA_VERSION, STATUS_FAILED, STATUS_OK, STATUS_RUNNING, RunStore

Executor = Callable[[RunConfig], dict]
NO_SAVE_ADAPTERS = "--no-save-adapters"  # the isolated child's option (harness.isolated)


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


def execute(config: RunConfig, task: TaskData, store: RunStore, device: torch.device, log: Log,
            save_adapters: bool = True) -> dict:
    """Run one config and write its result file: ``running`` first, then ``ok`` or ``failed`` with a reason.

    With ``save_adapters`` the trained adapter goes beside it (:meth:`RunStore.adapter_path`). Only an ``ok``
    run leaves one: a failed run's is removed, and so is an earlier run's of this config when it starts."""
    # Set before anything is timed, for the whole process; the record says what was set.
    record = {**new_record(config, task), "environment": environment(device, steady_host_allocator())}
    adapter = store.adapter_path(config)
    adapter.unlink(missing_ok=True)
    if task.problem is not None:  # bad data: recorded as failed without starting, so the other tasks go on
        record.update(status=STATUS_FAILED, reason=task.problem, wall_seconds=0.0)
        store.write(config, record)
        return record
    store.write(config, record)
    started = time.perf_counter()
    try:
        record["metrics"] = train_and_measure(config, task, device, log, store.run_dir(config),
                                              adapter if save_adapters else None)
        refusal = noisy_refusal(record["metrics"], config.measure)
        record["status"] = STATUS_OK if refusal is None else STATUS_FAILED
        if refusal is not None:
            record["reason"] = refusal
    except KeyboardInterrupt:
        record.update(status=STATUS_FAILED, reason="interrupted by the user")
        raise
    except (RunFailed, UserError) as exc:
        record.update(status=STATUS_FAILED, reason=str(exc))
    except Exception as exc:  # one broken run must not stop the others; the traceback is kept in the file
        record.update(status=STATUS_FAILED, reason=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc())
    finally:
        record["wall_seconds"] = time.perf_counter() - started
        if record["status"] != STATUS_OK:
            adapter.unlink(missing_ok=True)
        store.write(config, record)
    return record


def inline_executor(tasks: dict[str, TaskData], store: RunStore, device: torch.device, log: Log,
                    save_adapters: bool = True) -> Executor:
    """Runs in this process, one after another."""
    return lambda config: execute(config, tasks[config.task], store, device, log, save_adapters)


def isolated_command(config: RunConfig, store: RunStore, device: torch.device, plugins: Sequence[str],
                     data_root: Path | None, threads: int | None = None, save_adapters: bool = True) -> list[str]:
    """The child's command line: the full device (``cuda:1`` stays ``cuda:1``), not just the config's type, the
    parent's ``--threads`` (0: torch's choice) and ``--no-save-adapters``."""
    return [sys.executable, "-m", "harness.isolated", *([] if save_adapters else [NO_SAVE_ADAPTERS]),
            json.dumps(config.to_dict()), str(store.folder), str(device), str(threads or 0), str(data_root or ""),
            *plugins]


def isolated_executor(tasks: dict[str, TaskData], store: RunStore, device: torch.device, plugins: Sequence[str],
                      data_root: Path | None, threads: int | None = None, save_adapters: bool = True) -> Executor:
    """Runs each config in a fresh Python process, so no allocator or compile state from an earlier run can
    change its figures; the child's progress goes to our stdout and its result file is read back. A run of a
    task with bad data is recorded here: there is nothing to isolate, and the reason is the parent's."""

    def run(config: RunConfig) -> dict:
        if tasks[config.task].problem is not None:
            return execute(config, tasks[config.task], store, device, lambda line: None)
        subprocess.run(isolated_command(config, store, device, plugins, data_root, threads, save_adapters),
                       check=False)
        record = store.read(config)
        if record is None or record.get("status") == STATUS_RUNNING:
            record = {**new_record(config, tasks[config.task]), "status": STATUS_FAILED,
                      "reason": "the isolated run's process died before finishing (see its output above)"}
            store.adapter_path(config).unlink(missing_ok=True)  # a failed run leaves no adapter
            store.write(config, record)
        return record

    return run


def run_all(configs: Sequence[RunConfig], store: RunStore, executor: Executor, *, force: bool = False,
            log: Log = print) -> list[dict]:
    """Every config's record: a finished one is reused (unless ``force``), any other is run by ``executor``."""
    records = []
    for index, config in enumerate(configs, 1):
        prefix = f"[{index}/{len(configs)}] {config.label}"
        cached = None if force else store.finished(config)
        if cached is not None:
            log(f"{prefix}: already done, reusing {store.path(config).name} (--force reruns)")
            records.append(cached)
            continue
        log(prefix)
        record = executor(config)
        if record["status"] == STATUS_OK:
            metrics = record["metrics"]
            log(f"  ok in {record['wall_seconds']:.0f}s: test acc best {metrics['test_acc_best']:.2f}% "
                f"last {metrics['test_acc_last']:.2f}%, {metrics['infer_img_per_s']:.0f} img/s, "
                f"{metrics['gmacs']:.4g} GMACs")
        else:
            log(f"  FAILED: {record['reason']}")
        records.append(record)
    return records
