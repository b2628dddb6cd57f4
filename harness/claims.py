"""Claims: which process runs a config right now, so that sweeps sharing a folder never run one config twice,
and a run whose process died is told from a live one instead of staying ``running`` for ever.

A claim is a small JSON file beside the run's record, ``<stem>.claim``, naming its owner: host, pid, when that
process started (so a reused pid is not taken for the owner), the executor and its job id, and a log. While the
run goes on, a daemon thread refreshes the file's modification time every :data:`HEARTBEAT_SECONDS`: its
heartbeat. A claim is *live* while its owner is: on this host, while the pid runs and is the process that took
the claim; on another host (a Slurm node), while its heartbeat is younger than :data:`STALE_SECONDS`. A job that
Slurm requeued carries its predecessor's job id and takes its claim over at once.

Taking, taking over and releasing a claim happen under an exclusive ``flock`` of the folder's
``.adaptbench.lock``, so two processes can never both hold one config; the lock is held for milliseconds,
never while a run trains.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

from .store import read_json, write_json_atomic

REQUEUING_EXECUTOR = "slurm"  # the executor whose jobs Slurm requeues under their own id (harness.slurm)
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 120.0  # a claim from another host whose heartbeat is older than this is dead
CLAIM_SUFFIX = ".claim"
LOCK_NAME = ".adaptbench.lock"


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks since boot), None where that cannot be read; a zombie
    (killed, not yet reaped) counts as gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def process_runs(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return Path("/proc").is_dir() is False or _process_start(pid) is not None


def this_process() -> dict:
    """The owner fields of the calling process."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid())}


def is_live(owner: dict, heartbeat_age: float, job_id: str | None = None) -> bool:
    """Whether the claim of ``owner`` (its file's fields) whose heartbeat is ``heartbeat_age`` seconds old still
    stands against a process of ``job_id``. On this host the owner's process itself answers; on another, a job
    requeued by Slurm (which keeps its id) takes over its own job's claim, and any other claim stands while its
    heartbeat is fresh. Only a Slurm job's id names one job across hosts: a local worker's (pid and slot) may
    recur on another host, whose sweep must not take a live claim over."""
    if owner.get("host") == socket.gethostname():
        pid = owner.get("pid")
        if not isinstance(pid, int) or not process_runs(pid):
            return False
        start = owner.get("process_start")
        return start is None or _process_start(pid) in (None, start)
    if job_id and owner.get("name") == REQUEUING_EXECUTOR and owner.get("job_id") == job_id:
        return False
    return heartbeat_age < STALE_SECONDS


def describe_owner(owner: dict) -> str:
    job = f", {owner.get('name')} job {owner['job_id']}" if owner.get("job_id") else ""
    return f"host {owner.get('host')}, pid {owner.get('pid')}{job}"


class Claim:
    """A claim this process holds; its heartbeat runs until :meth:`release` (or the ``with`` block ends)."""

    def __init__(self, path: Path, lock: Path, token: str) -> None:
        self.path, self.lock, self.token = path, lock, token
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name=f"heartbeat {path.name}")
        self._beat.start()

    def _ours(self) -> bool:
        return (read_json(self.path) or {}).get("token") == self.token

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            if not self._ours():  # taken over (we were presumed dead): leave it to its new owner
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        with folder_lock(self.lock):
            if self._ours():
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def folder_lock(lock: Path) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Claims:
    """The claims of one run folder, by run file stem."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.lock = self.folder / LOCK_NAME

    def path(self, stem: str) -> Path:
        return self.folder / f"{stem}{CLAIM_SUFFIX}"

    def owner(self, stem: str, job_id: str | None = None) -> dict | None:
        """The live claim's owner fields (with ``heartbeat_age`` in seconds), or None when no live claim stands."""
        path = self.path(stem)
        owner = read_json(path)
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        if owner is None or not is_live(owner, age, job_id):
            return None
        return {**owner, "heartbeat_age": age}

    def take(self, stem: str, owner: dict) -> Claim | None:
        """Claim ``stem`` for this process, with ``owner`` fields (executor, job id, log) besides the process's
        own; None when another live process holds it. A dead owner's claim is taken over."""
        token = uuid.uuid4().hex
        with folder_lock(self.lock):
            if self.owner(stem, owner.get("job_id")) is not None:
                return None
            write_json_atomic(self.path(stem), {**owner, **this_process(), "token": token,
                                                "claimed_at": time.time()})
        return Claim(self.path(stem), self.lock, token)


def owner_summary(owner: dict) -> str:
    """One line of what a live claim says: who runs it and where its log is."""
    log = f", log {owner['log']}" if owner.get("log") else ""
    return f"{describe_owner(owner)}, heartbeat {owner['heartbeat_age']:.0f}s ago{log}"
