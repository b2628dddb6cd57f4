"""What the benchmark scripts share: their parser, the setup before anything is timed, the machine their header
names, timing rounds that interleave what they compare, and the table they print.

The scripts run as ``python benchmarks/<name>.py``, which puts this folder first on ``sys.path``, so they import
this file as ``common``.
"""
from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
from tabulate import tabulate

import harness
from harness.config import RunConfig
from harness.data import TaskData
from harness.measure import steady_host_allocator
from harness.progress import SweepProgress
from harness.results import flatten
from harness.runner import inline_executor, run_all
from harness.store import STATUS_OK, RunStore


def make_parser(doc: str, backbone: str, *, device: bool = False) -> argparse.ArgumentParser:
    """The script's parser: ``--help`` shows its docstring as written (usage lines included). Every script takes
    ``--backbone`` (default ``backbone``); with ``device``, ``--device`` too (default cpu)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=backbone)
    if device:
        parser.add_argument("--device", default="cpu")
    return parser


def setup(device: str = "cpu") -> torch.device:
    """Call once, before anything is timed; returns the device.

    Keeps freed host memory as every run does (:func:`harness.measure.steady_host_allocator`), so a script's CPU
    figures compare with a run's instead of with a fresh process's page faults, and loads the method plugins now
    rather than inside a timed section.
    """
    steady_host_allocator()
    harness.load_plugins()
    return torch.device(device)


def machine(device: torch.device) -> str:
    """The device as a header names it: the GPU's name, or the CPU with the threads torch uses on it."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"


def time_rounds(runs: dict[str, Callable[[], object]], rounds: int, *, warmup: int,
                synchronize: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds of each run in each of ``rounds`` rounds, after ``warmup`` untimed calls of each.

    A round calls every run once, in turn, so drift (thermal, other load) hits them all alike; ``synchronize``
    waits for the device, so a run's time includes its queued work.
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    synchronize()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            synchronize()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def print_table(rows: Sequence[Sequence], headers: Sequence[str]) -> None:
    """A GitHub-flavoured Markdown table, so the figures paste into the README and issues as they are."""
    print(tabulate(rows, headers=headers, tablefmt="github"))


def run_grid(configs: list[RunConfig], tasks: dict[str, TaskData], out: Path, device: torch.device
             ) -> tuple[pd.DataFrame, int]:
    """Run ``configs`` through the harness like any sweep (one result file each in ``out``, reused when they
    exist), printing progress lines; returns the ok runs' flattened rows and how many runs there were."""
    log = functools.partial(print, flush=True)
    store = RunStore(out)
    records = run_all(configs, store, inline_executor(tasks, store, device, log),
                      progress=SweepProgress(configs, log=log, bar=False))
    return pd.DataFrame([flatten(record) for record in records if record["status"] == STATUS_OK]), len(records)
