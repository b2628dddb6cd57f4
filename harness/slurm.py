"""``--executor slurm``: a sweep's runs as one Slurm job array, through submitit (what FAIR's ToMe- and
DiffRate-era research code uses), so adaptbench grows no job system of its own.

Each array task is one run: submitit pickles a :class:`harness.worker.SubmititRun` and calls it on the node,
where it claims its config and writes its record into the run folder like any other executor; the run store
stays the only source of truth. Its job id and log go in the record, and ``<out>/slurm/submitted.json`` says
which job each run was handed to, for ``run.py status``. Submitting again (the same command) hands out only
what is not done, not running and not queued. With ``--wait`` the command waits for the array and writes the
summary and ``results.csv``; without it, it returns once submitted.

``cluster`` ``local`` or ``debug`` runs the same jobs through submitit's executors on this machine (tests).
"""
from __future__ import annotations

import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .claims import folder_lock, process_runs
from .config import RunConfig
from .errors import UserError
from .runner import WorkerJob
from .store import RunStore, read_json, write_json_atomic

SUBMITTED = "submitted.json"
QUEUED_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")
UNKNOWN = "UNKNOWN"  # submitit's state of a job Slurm's accounting did not answer for
CLUSTERS = ("slurm", "local", "debug")


# sbatch's --time: the clock's fields by their count, after a day count (D-H, D-H:M, D-H:M:S) or without (M, M:S,
# H:M:S). The leading field of a clock without days is unbounded (90:00 is 90 minutes); every other field is bounded.
CLOCK_UNITS = {False: {1: ("minutes",), 2: ("minutes", "seconds"), 3: ("hours", "minutes", "seconds")},
               True: {1: ("hours",), 2: ("hours", "minutes"), 3: ("hours", "minutes", "seconds")}}
UNIT_SECONDS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
UNIT_LIMITS = {"hours": 24, "minutes": 60, "seconds": 60}


def parse_time(text: str) -> int:
    """Whole minutes (seconds rounded up) of a time limit in sbatch's ``--time`` formats, read as Slurm reads them:
    ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M`` or ``D-H:M:S``."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text.strip())
    if match is None:
        raise UserError(f"--slurm-time '{text}' is not one of sbatch's time formats M, M:S, H:M:S, D-H, D-H:M or "
                        f"D-H:M:S (e.g. 90 or 4:00:00)")
    days, clock = match.groups()
    values = [int(value) for value in clock.split(":")]
    units = CLOCK_UNITS[days is not None][len(values)]
    bounded = units if days is not None else units[1:]
    wrong = [f"{value} {unit}" for unit, value in zip(units, values) if unit in bounded and value >= UNIT_LIMITS[unit]]
    if wrong:
        raise UserError(f"--slurm-time '{text}': {', '.join(wrong)} out of range (hours 0-23 after days, minutes and "
                        f"seconds 0-59 after a larger unit)")
    seconds = (int(days or 0) * UNIT_SECONDS["days"]
               + sum(value * UNIT_SECONDS[unit] for unit, value in zip(units, values)))
    if seconds == 0:
        raise UserError(f"--slurm-time '{text}' is no time at all; give each run a limit (e.g. 90 or 4:00:00)")
    return -(-seconds // 60)


def parse_options(values: Sequence[str]) -> dict[str, str]:
    """``--slurm-opt key=value`` pairs: sbatch options submitit has no parameter for (``constraint=h100``)."""
    options = {}
    for value in values:
        key, equals, setting = value.partition("=")
        if not equals or not key.strip():
            raise UserError(f"--slurm-opt '{value}' is not KEY=VALUE (e.g. --slurm-opt constraint=h100)")
        options[key.strip().replace("-", "_")] = setting.strip()
    return options


@dataclass(frozen=True)
class SlurmSettings:
    """What each array task asks Slurm for."""

    partition: str | None = None
    time_minutes: int = 240
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    array_parallelism: int = 64
    account: str | None = None
    extra: dict = field(default_factory=dict)
    cluster: str = "slurm"

    def submitit_parameters(self) -> dict:
        """AutoExecutor's parameters: generic ones, and ``slurm_*`` ones the local executors ignore."""
        parameters = {"name": "adaptbench", "timeout_min": self.time_minutes, "gpus_per_node": self.gpus_per_job,
                      "tasks_per_node": 1, "slurm_array_parallelism": self.array_parallelism,
                      "slurm_additional_parameters": dict(self.extra)}
        if self.cpus_per_job:
            parameters["cpus_per_task"] = self.cpus_per_job
        if self.partition:
            parameters["slurm_partition"] = self.partition
        if self.account:
            parameters["slurm_account"] = self.account
        return parameters


def logs_folder(store: RunStore) -> Path:
    return store.folder / "slurm"


def sbatch_script(settings: SlurmSettings, store: RunStore, count: int) -> str:
    """The sbatch script submitit writes for an array of ``count`` runs, made without a cluster (submitit's own
    template, so what is shown is what would be submitted)."""
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    # submitit's own renaming of the executor's parameters (generic names, and slurm_-prefixed ones) to sbatch's
    generic = SlurmExecutor._equivalence_dict()
    parameters = {generic.get(key) or key.removeprefix("slurm_"): value
                  for key, value in settings.submitit_parameters().items()}
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(str(logs_folder(store) / "%j"))])
    return _make_sbatch_string(command=command, folder=logs_folder(store) / "%j", map_count=count, **parameters)


def submitted(store: RunStore) -> dict[str, dict]:
    """Which job each run (by file stem) was last handed to: job id, logs, when."""
    return read_json(logs_folder(store) / SUBMITTED) or {}


def queued(store: RunStore, stem: str, cluster: str | None = None) -> dict | None:
    """The submission of ``stem`` if its job is still queued or running: as Slurm's accounting says, or for
    submitit's local executor, whose job id is its process's pid, as that process's existence says. ``cluster``
    None: the one the submission went to."""
    entry = submitted(store).get(stem)
    cluster = cluster or (entry or {}).get("cluster", "slurm")
    if entry is None or cluster == "debug":  # the debug executor ran it inside the submitting process
        return None
    if cluster == "local":
        return entry if process_runs(int(entry["job_id"])) else None
    import submitit

    try:
        state = submitit.SlurmJob(logs_folder(store), entry["job_id"]).state
    except Exception:
        state = UNKNOWN
    # UNKNOWN: submitit could not ask (sacct missing or failing): as submitted, the one thing known
    return entry if state.split()[0] in (*QUEUED_STATES, UNKNOWN) else None


def submit(jobs: Sequence[WorkerJob], configs: Sequence[RunConfig], settings: SlurmSettings,
           store: RunStore) -> list:
    """Hand ``jobs`` (one per config) to Slurm as one array; returns submitit's jobs."""
    import submitit

    from .worker import SubmititRun

    executor = submitit.AutoExecutor(folder=logs_folder(store) / "%j", cluster=settings.cluster)
    executor.update_parameters(**settings.submitit_parameters())
    with executor.batch():
        handles = [executor.submit(SubmititRun(job)) for job in jobs]
    with folder_lock(store.claims.lock):
        entries = submitted(store)
        for config, handle in zip(configs, handles):
            entries[config.file_stem] = {"job_id": handle.job_id, "cluster": settings.cluster,
                                         "stdout": str(handle.paths.stdout),
                                         "stderr": str(handle.paths.stderr), "submitted_at": time.time()}
        write_json_atomic(logs_folder(store) / SUBMITTED, entries)
    return handles


def job_outcome(handle) -> str | None:
    """What an ended job's run came to, as the worker returned it (``ok``, ``failed`` or ``claimed``); None when
    the job raised or was killed."""
    try:
        return handle.result()
    except Exception:  # submitit re-raises the job's failure, or says the job died: no outcome of its own
        return None


def wait(handles: Sequence, poll_seconds: float = 2.0) -> None:
    """Until every job has ended (its run's record says how it went)."""
    while not all(handle.done() for handle in handles):
        time.sleep(poll_seconds)
