"""A worker: executes one run in its own process, ``python -m harness.worker JOB_JSON`` (a
:class:`harness.runner.WorkerJob`; the local executor starts it as :data:`harness.runner.WORKER_ENTRY`), for
``--executor local``; submitit calls :func:`run_job` with the same job on a Slurm node. Exit code: 0 ok, 1 failed
(recorded), 3 claimed by another live process (nothing written), 130 stopped by Ctrl-C (the run, if it had
started, recorded interrupted).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import registry, runner
from .config import RunConfig
from .plan import load_tasks, resolve_device
from .runner import EXIT_CLAIMED, EXIT_INTERRUPTED, RunOptions, WorkerJob, execute
from .store import STATUS_OK, RunStore


def _submitit_job() -> dict:
    """Who we are in a submitit job (on a Slurm node, or its local executor): job id (``ARRAY_TASK`` on Slurm)
    and log; {} elsewhere. A job Slurm requeued keeps its id, so it takes over its own earlier claim."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return {}
    import submitit

    environment = submitit.JobEnvironment()
    return {"job_id": environment.job_id, "log": str(environment.paths.stdout)}


def run_job(job: WorkerJob) -> str:
    """Run ``job`` in this process: ``ok``, ``failed`` or ``claimed`` (another live process has it)."""
    registry.load_plugins(list(job.plugins))
    config = RunConfig.from_dict(job.config)
    data_root = Path(job.data_root) if job.data_root else None
    task = load_tasks([config.task], data_root, selection=config.train.selection)[config.task]
    record = execute(config, task, RunStore(Path(job.out)), resolve_device(job.device),
                     lambda line: print(line, flush=True), RunOptions(**job.options),
                     {**job.executor, **_submitit_job()})
    if record is None:
        return "claimed"
    return "ok" if record["status"] == STATUS_OK else "failed"


class SubmititRun:
    """What submitit pickles and calls on a node; on preemption or at the time limit it requeues the same job,
    which goes on from the run's last checkpoint (``--checkpoint-every``)."""

    def __init__(self, job: WorkerJob) -> None:
        self.job = job

    def __call__(self) -> str:
        return run_job(self.job)

    def checkpoint(self):  # submitit's hook, called when the job is told to stop; the run records "stopped"
        import submitit

        runner.TOLD_TO_STOP.set()
        return submitit.helpers.DelayedSubmission(SubmititRun(self.job))


def main(argv: list[str]) -> int:
    try:
        outcome = run_job(WorkerJob(**json.loads(argv[0])))
    except KeyboardInterrupt:  # Ctrl-C reaches the workers too: the run is recorded interrupted, the sweep says so
        return EXIT_INTERRUPTED
    return {"ok": 0, "failed": 1, "claimed": EXIT_CLAIMED}[outcome]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
