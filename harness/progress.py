"""Progress of a sweep: runs done of the plan with an estimate of what remains, and the epochs of the run in
hand. On a terminal these are ``tqdm`` bars (log lines print above them); elsewhere (CI, Slurm logs, a pipe)
they are plain lines, one per event, so logs stay readable.

The time remaining is the plan's estimate of the runs not yet done (:mod:`harness.estimate`), scaled by how the
finished runs' real times compared with their estimates; without estimates, the mean time of the runs
finished so far. Either is divided by the runs executed at once.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

from tqdm import tqdm

from .config import RunConfig
from .estimate import describe
from .store import STATUS_OK


def outcome(record: dict) -> str:
    """One line of what a run came to."""
    if record["status"] != STATUS_OK:
        return f"  FAILED ({record.get('failure', 'error')}): {record.get('reason')}"
    metrics = record["metrics"]
    return (f"  ok in {record['wall_seconds']:.0f}s: test acc best {metrics['test_acc_best']:.2f}% "
            f"last {metrics['test_acc_last']:.2f}%, {metrics['infer_img_per_s']:.0f} img/s, "
            f"{metrics['gmacs']:.4g} GMACs")


class SweepProgress:
    """Progress over ``configs``; ``estimates`` are seconds by config key, ``parallel`` runs go at once.
    ``bar`` (default: whether stdout is a terminal) chooses bars over plain lines."""

    def __init__(self, configs: Sequence[RunConfig], estimates: dict[str, float] | None = None, parallel: int = 1,
                 log: Callable[[str], None] = print, bar: bool | None = None) -> None:
        self.index = {config.key: number for number, config in enumerate(configs, 1)}
        self.estimates, self.parallel, self._print = estimates or {}, parallel, log
        self.remaining = set(self.index)
        self.took: dict[str, float] = {}
        use_bar = sys.stdout.isatty() if bar is None else bar
        self.bar = tqdm(total=len(configs), unit="run", desc="sweep", dynamic_ncols=True) if use_bar else None
        self.epoch_bar: tqdm | None = None

    def log(self, line: str) -> None:
        if self.bar is not None:
            tqdm.write(line)
        else:
            self._print(line)

    def _prefix(self, config: RunConfig) -> str:
        return f"[{self.index[config.key]}/{len(self.index)}] {config.label}"

    def eta(self) -> float | None:
        """Seconds until the plan is done, or None before anything can tell."""
        pending = [key for key in self.remaining if key in self.estimates]
        timed = [key for key in self.took if key in self.estimates]
        if self.estimates and len(pending) == len(self.remaining):
            ratio = sum(self.took[key] for key in timed) / sum(self.estimates[key] for key in timed) if timed else 1.0
            return ratio * sum(self.estimates[key] for key in pending) / self.parallel
        if self.took:
            return sum(self.took.values()) / len(self.took) * len(self.remaining) / self.parallel
        return None

    def _advance(self, config: RunConfig, executed: bool = True) -> None:
        self.remaining.discard(config.key)
        eta = self.eta()
        if self.bar is not None:
            self.bar.update(1)
            if eta is not None:
                self.bar.set_postfix_str(f"ETA {describe(eta)}")
        elif self.remaining and executed:
            done = len(self.index) - len(self.remaining)
            self.log(f"  {done}/{len(self.index)} done" + (f", about {describe(eta)} to go" if eta is not None else ""))

    def reused(self, config: RunConfig, why: str) -> None:
        """A run not executed now (finished before, or by another process)."""
        self.log(f"{self._prefix(config)}: {why}")
        self._advance(config, executed=False)

    def started(self, config: RunConfig) -> None:
        self.log(self._prefix(config) if self.parallel == 1 else f"{self._prefix(config)}: started")

    def finished(self, config: RunConfig, record: dict) -> None:
        if self.epoch_bar is not None:
            self.epoch_bar.close()
            self.epoch_bar = None
        prefix = "" if self.parallel == 1 else f"{self._prefix(config)}:\n"
        self.log(prefix + outcome(record))
        if isinstance(record.get("wall_seconds"), (int, float)):
            self.took[config.key] = record["wall_seconds"]
        self._advance(config)

    def epochs(self, config: RunConfig) -> Callable[[dict], None] | None:
        """The run's ``on_epoch``: a bar over its epochs on a terminal (plain mode prints the epoch lines)."""
        if self.bar is None:
            return None
        self.epoch_bar = tqdm(total=config.train.epochs, unit="epoch", desc="  epochs", position=1, leave=False,
                              dynamic_ncols=True)
        bar = self.epoch_bar
        return lambda entry: bar.update(entry["epoch"] - bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
