"""The run store: one JSON file per run in a folder, written atomically, plus the aggregate ``results.csv``.

Every writer of run files goes through here (the runner, its executors, migration), and so does every reader
that acts on them (reuse, results.csv), so a run's path, atomic writing and what "finished" means are defined
once; the report reads the files itself, to name each one it cannot use and why. A file is only ever replaced whole (write to a
temporary file in the same folder, then rename), so a crash, a kill or a parallel writer never leaves a partial
record, and ``results.csv`` is rebuilt from the files, never appended to.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from .config import RunConfig

RESULTS_CSV = "results.csv"
ADAPTER_SUFFIX = ".adapter.safetensors"  # a run's trained adapter, beside its record (harness.adapters)
STATUS_RUNNING, STATUS_OK, STATUS_FAILED = "running", "ok", "failed"
# 2: records describe their method (roles, display order) and task (suite, group, classes, split sizes), so the
# report needs no plugin registry. Records without ``schema`` are version 1; ``run.py migrate`` upgrades them.
SCHEMA_VERSION = 2


def replace_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(temporary_path)``, then rename over ``path``: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        write(temporary)
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


def is_run_record(payload: dict | None) -> bool:
    return isinstance(payload, dict) and {"key", "config", "status"} <= set(payload) \
        and isinstance(payload["config"], dict)


def run_files(folder: Path) -> list[Path]:
    """The run files of a folder (``*.json``; ``results.csv`` is an aggregate, not a run)."""
    return sorted(folder.glob("*.json"))


class RunStore:
    """The run files of one output folder, addressed by config: ``<folder>/<config.file_stem>.json``, and beside
    it ``<folder>/<config.file_stem>/`` for what a run writes besides its record (TensorBoard, profiles) and
    ``<folder>/<config.file_stem>.adapter.safetensors`` for its trained adapter (:mod:`harness.adapters`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, config: RunConfig) -> Path:
        return self.folder / f"{config.file_stem}.json"

    def run_dir(self, config: RunConfig) -> Path:
        return self.folder / config.file_stem

    def adapter_path(self, config: RunConfig) -> Path:
        """Where the run's trainable parameters go: beside its record, and no ``*.json`` (not a run file)."""
        return self.folder / f"{config.file_stem}{ADAPTER_SUFFIX}"

    def write(self, config: RunConfig, record: dict) -> None:
        write_json_atomic(self.path(config), record)

    def read(self, config: RunConfig) -> dict | None:
        return read_json(self.path(config))

    def finished(self, config: RunConfig) -> dict | None:
        """The stored record of this exact config if it finished successfully."""
        record = self.read(config)
        return record if record is not None and record.get("status") == STATUS_OK else None

    def records(self) -> list[dict]:
        """Every readable run record; a foreign or damaged file is passed over (``report`` lists such files)."""
        return [record for record in map(read_json, run_files(self.folder)) if is_run_record(record)]

    def write_csv(self, records: Iterable[dict] | None = None) -> Path:
        """The aggregate CSV (one flat row per run, :func:`harness.results.flatten`), replaced atomically."""
        import pandas as pd

        from .results import flatten

        rows = [flatten(record) for record in (self.records() if records is None else records)]
        path = self.folder / RESULTS_CSV
        replace_atomically(path, lambda temporary: pd.DataFrame(rows).to_csv(temporary, index=False))
        return path
