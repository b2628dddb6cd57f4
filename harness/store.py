"""The run store: one JSON file per run in a folder, written atomically, plus the aggregate ``results.csv``.

Every writer of run files goes through here (the runner, its executors, migration), and so does every reader
that acts on them (reuse, results.csv), so a run's path, atomic writing and what "finished" means are defined
once; the report reads the files itself, to name each one it cannot use and why. A file is only ever replaced whole (write to a
temporary file in the same folder, then rename), so a crash, a kill or a parallel writer never leaves a partial
record, and ``results.csv`` is rebuilt from the files, never appended to.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from .config import RunConfig

RESULTS_CSV = "results.csv"
ADAPTER_SUFFIX = ".adapter.safetensors"  # a run's trained adapter, beside its record (harness.adapters)
NEW_ADAPTER_SUFFIX = ".new"  # a forced rerun's adapter until the run is ok and it replaces the finished one
LOG_FOLDER = "logs"  # what a worker process printed, one file per run (harness.runner's local executor)
STATUS_RUNNING, STATUS_OK, STATUS_FAILED = "running", "ok", "failed"
# What a failed record's ``failure`` says went wrong. Rerunning a sweep reruns the kinds in RETRIED (the run was
# cut short, or never started because of its data, which may have been mended since); the others, which a rerun
# would meet again, wait for --rerun-failed.
FAILURES = {
    "data": "the task's data cannot be read",
    "error": "the run raised an exception",
    "nan": "the training loss became NaN or infinite",
    "oom": "out of memory",
    "timeout": "the run took longer than --timeout",
    "noisy": "its throughput stayed noisy under --refuse-noisy",
    "died": "its process died (killed, node lost, time limit)",
    "interrupted": "interrupted by the user",
    "stopped": "its process was told to exit (submitit does, when Slurm preempts the job or its time is up)",
}
RETRIED = ("data", "died", "interrupted", "stopped")
# A forced rerun (--force) replaces a finished run only when it is ok. Until then its ``running`` record carries the
# finished one under REPLACES; an attempt that ends otherwise (failed, killed, timed out) puts the finished record
# back with FORCED_RERUN saying how the attempt ended, and its executor (whose ``attempt`` id lets the process that
# launched it tell its own attempt's outcome from an earlier one's).
REPLACES, FORCED_RERUN = "replaces", "forced_rerun"
# 2: records describe their method (roles, display order) and task (suite, group, classes, split sizes), so the
# report needs no plugin registry. Records without ``schema`` are version 1; ``run.py migrate`` upgrades them.
SCHEMA_VERSION = 2
# A run folder we may read but not write: another user's runs, or a read-only mount. Such a folder is settled as read.
READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, which is not safe while other threads create files.
CREATED_MODE = 0o666 & ~_umask()


def replace_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(temporary_path)``, then rename over ``path``: readers see the old file or the new one, never half.
    The file gets the mode a plain ``open`` would give it (mkstemp's temporaries are private to their owner, which
    would keep a run folder or cache shared between users unreadable to the others); set after ``write``, since
    a writer may replace the temporary with a file of its own (safetensors' ``save_file`` does, private again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        write(temporary)
        os.chmod(temporary, CREATED_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: dict) -> None:
    """JSON (sorted keys, fsynced) replacing ``path`` atomically."""

    def write(temporary: str) -> None:
        with open(temporary, "w") as handle:
            json.dump(payload, handle, indent=1, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())

    replace_atomically(path, write)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing, unreadable or not JSON."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


NAMED = ("method", "task", "backbone")  # what a record's config must name, as the report requires


def is_run_record(payload: dict | None) -> bool:
    """Whether ``payload`` is a record the runner and ``results.csv`` can act on: a key, a config naming its method,
    task and backbone, a known status, and metrics (where it has them) that are a mapping. A file damaged by hand
    or by another program is not."""
    return isinstance(payload, dict) and {"key", "config", "status"} <= set(payload) \
        and isinstance(payload["config"], dict) and payload["status"] in (STATUS_RUNNING, STATUS_OK, STATUS_FAILED) \
        and isinstance(payload.get("metrics", {}), dict) \
        and all(isinstance(payload["config"].get(name), str) and payload["config"][name] for name in NAMED)


def finished_of(record: dict | None) -> dict | None:
    """The finished record a forced rerun of ``record``'s config must not lose: ``record`` itself when ``ok`` (less
    any note of an earlier forced rerun), or the one a ``running`` record carries; None when there is none."""
    if not is_run_record(record):
        return None
    if record["status"] == STATUS_OK:
        return {key: value for key, value in record.items() if key != FORCED_RERUN}
    carried = record.get(REPLACES) if record["status"] == STATUS_RUNNING else None
    return carried if is_run_record(carried) else None


def with_forced_rerun(finished: dict, attempt: dict) -> dict:
    """``finished`` as it is written back after the forced rerun ``attempt`` (a failed record) did not end ok."""
    note = {key: attempt.get(key) for key in ("status", "failure", "reason", "executor", "wall_seconds")}
    note["reason"] = f"{note['reason']} (a forced rerun: the finished run it was to replace is kept; --force runs " \
                     f"it again)"
    return {**finished, FORCED_RERUN: note}


def written_by(record: dict | None, attempt: str | None) -> bool:
    """Whether the attempt with id ``attempt`` (its executor's ``attempt``) wrote ``record``, or the note of a
    forced rerun in it."""
    note = (record or {}).get(FORCED_RERUN)
    writers = [(record or {}).get("executor"), note.get("executor") if isinstance(note, dict) else None]
    return attempt is not None and any(isinstance(writer, dict) and writer.get("attempt") == attempt
                                       for writer in writers)


def attempt_outcome(record: dict | None, attempt: str | None) -> dict | None:
    """What the attempt with id ``attempt`` came to, from the record it left: a finished record that a failed
    forced rerun of it was written back over reads as that failure; any other record as it is."""
    note = (record or {}).get(FORCED_RERUN)
    if not isinstance(note, dict) or not isinstance(note.get("executor"), dict) \
            or attempt is None or note["executor"].get("attempt") != attempt:
        return record
    return {**record, "status": STATUS_FAILED, "failure": note.get("failure"), "reason": note.get("reason")}


def run_files(folder: Path) -> list[Path]:
    """The run files of a folder (``*.json``; ``results.csv`` is an aggregate, not a run)."""
    return sorted(folder.glob("*.json"))


class RunStore:
    """The run files of one output folder, addressed by config: ``<folder>/<config.file_stem>.json``, and beside
    it ``<folder>/<config.file_stem>/`` for what a run writes besides its record (TensorBoard, profiles) and
    ``<folder>/<config.file_stem>.adapter.safetensors`` for its trained adapter (:mod:`harness.adapters`)."""

    def __init__(self, folder: Path) -> None:
        from .claims import Claims  # claims write through this module

        self.folder = Path(folder)
        self.claims = Claims(self.folder)

    def path(self, config: RunConfig) -> Path:
        return self.folder / f"{config.file_stem}.json"

    def run_dir(self, config: RunConfig) -> Path:
        return self.folder / config.file_stem

    def adapter_path(self, config: RunConfig) -> Path:
        """Where the run's trainable parameters go: beside its record, and no ``*.json`` (not a run file)."""
        return self.folder / f"{config.file_stem}{ADAPTER_SUFFIX}"

    def new_adapter_path(self, config: RunConfig) -> Path:
        """Where a forced rerun saves its adapter until the run is ok and it replaces the finished run's."""
        return self.folder / f"{config.file_stem}{ADAPTER_SUFFIX}{NEW_ADAPTER_SUFFIX}"

    def checkpoint_path(self, config: RunConfig) -> Path:
        from .checkpoint import CHECKPOINT_SUFFIX

        return self.folder / f"{config.file_stem}{CHECKPOINT_SUFFIX}"

    def log_path(self, config: RunConfig) -> Path:
        return self.folder / LOG_FOLDER / f"{config.file_stem}.log"

    def write(self, config: RunConfig, record: dict) -> None:
        write_json_atomic(self.path(config), record)

    def read(self, config: RunConfig) -> dict | None:
        """The config's record, a ``running`` one whose process died marked so first (:meth:`settle`); None when
        there is none or its file is no run record (damaged: the run is to do, as if it had never run)."""
        path = self.path(config)
        record = self.settle(path, read_json(path))
        return record if is_run_record(record) else None

    def settle(self, path: Path, record: dict | None) -> dict | None:
        """``record`` (read from ``path``), or, when it says ``running`` and no live process holds its claim, the
        record marked failed (``died``) and written back, so a dead run is never left ``running``."""
        from .claims import folder_lock

        if not is_run_record(record) or record["status"] != STATUS_RUNNING:
            return record
        try:
            with folder_lock(self.claims.lock):  # the owner writes its final record before releasing its claim
                return self._settled(path, write=True)
        except OSError as error:
            if error.errno not in READ_ONLY_ERRNOS:
                raise
            return self._settled(path, write=False)

    def _settled(self, path: Path, write: bool) -> dict | None:
        record = read_json(path)
        if not is_run_record(record) or record["status"] != STATUS_RUNNING \
                or self.claims.owner(path.name[:-len(".json")]) is not None:
            return record
        owner = record.get("executor") or {}
        finished = finished_of(record)
        record.update(status=STATUS_FAILED, failure="died",
                      reason=f"its process (host {owner.get('host')}, pid {owner.get('pid')}) died before "
                             f"finishing; rerun the sweep to run it again (with --checkpoint-every it goes on "
                             f"from its last checkpoint)")
        if finished is not None:  # a forced rerun that died: the finished run it was to replace
            record = with_forced_rerun(finished, record)
        if write:
            write_json_atomic(path, record)
        return record

    def records(self) -> list[dict]:
        """Every readable run record (dead ``running`` ones settled); a foreign or damaged file is passed over
        (``report`` lists such files)."""
        records = (self.settle(path, read_json(path)) for path in run_files(self.folder))
        return [record for record in records if is_run_record(record)]

    def write_csv(self, records: Iterable[dict] | None = None) -> Path:
        """The aggregate CSV (one flat row per run, :func:`harness.results.flatten`), replaced atomically."""
        import pandas as pd

        from .results import flatten

        rows = [flatten(record) for record in (self.records() if records is None else records)]
        path = self.folder / RESULTS_CSV
        replace_atomically(path, lambda temporary: pd.DataFrame(rows).to_csv(temporary, index=False))
        return path
