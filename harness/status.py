"""What state each run of a plan or a folder is in: done, running (who, where its log is), queued (on Slurm),
failed (its kind and reason) or missing; and which run files of a folder are damaged. ``run.py status RUNS`` and
``--dry-run`` print it; both read only the run store (records, claims, Slurm submissions), and a ``running``
record whose process died is marked so.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

from .claims import owner_summary
from .config import RunConfig
from .slurm import queued, submitted
from .store import STATUS_FAILED, STATUS_OK, RunStore, is_run_record, read_json, run_files

STATES = ("done", "running", "queued", "failed", "missing", "damaged")


def _state(store: RunStore, stem: str, record: dict | None, queue: dict[str, dict]) -> tuple[str, str]:
    if record is not None and record["status"] == STATUS_OK:
        return "done", ""
    if record is not None and record["status"] == STATUS_FAILED:
        return "failed", f"({record.get('failure', 'error')}) {record.get('reason')}"
    owner = store.claims.owner(stem)
    if owner is not None:
        return "running", owner_summary(owner)
    if stem in queue:
        entry = queue[stem]
        job = f"{'Slurm job' if entry.get('cluster', 'slurm') == 'slurm' else 'submitit local job'} {entry['job_id']}"
        if queued(store, stem) is not None:
            return "queued", f"{job}, log {entry['stdout']}"
        return "missing", (f"{job} is no longer queued or running and left no record (see "
                           f"{entry.get('stderr', entry['stdout'])}); the sweep's command submits it again")
    return "missing", ""


def plan_states(configs: Sequence[RunConfig], store: RunStore) -> dict[str, tuple[str, str]]:
    """(state, detail) of each planned config, by key."""
    queue = submitted(store)
    return {config.key: _state(store, config.file_stem, store.read(config), queue) for config in configs}


def _label(record: dict | None) -> str | None:
    """The run's label, or None for a file that is no run record or whose config does not make one."""
    if not is_run_record(record):
        return None
    try:
        return RunConfig.from_dict(record["config"]).label
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


def folder_states(folder: Path) -> list[tuple[str, str, str]]:
    """(label, state, detail) of every run a folder knows: its records, and runs handed to Slurm that have
    none yet."""
    store = RunStore(folder)
    queue = submitted(store)
    rows, seen = [], set()
    for path in run_files(folder):
        record = store.settle(path, read_json(path))
        stem = path.name[:-len(".json")]
        seen.add(stem)
        label = _label(record)
        if label is None:
            rows.append((path.name, "damaged", "not a run record (unreadable, or a key, config, status or metrics "
                                               "missing or malformed); a sweep of its config runs it again"))
            continue
        rows.append((label, *_state(store, stem, record, queue)))
    rows += [(stem, *_state(store, stem, None, queue)) for stem in sorted(set(queue) - seen)]
    return rows


def tally(states: Sequence[str]) -> str:
    counts = Counter(states)
    return ", ".join(f"{counts[state]} {state}" for state in STATES if counts[state])
