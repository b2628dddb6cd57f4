"""Wall time of one small sweep under each executor, run one after another on this machine (nothing else may
run meanwhile): inline, --executor local --jobs 1, and --executor local --jobs 2.

    python benchmarks/sweep_executors.py [--out runs/executors] [-- EXTRA RUN.PY OPTIONS]

Each starts from an empty folder and counts from the command's start to its exit (process start-up, planning
and the summary included). Inline and --jobs 1 use torch's threads; --jobs 2 gives each worker half the cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
PLAN = ["--methods", "lora,full_ft", "--tasks", "count,orientation", "--seeds", "0,1", "--epochs", "1",
        "--no-estimate", "--no-save-adapters"]
EXECUTORS = {"inline": [], "local, 1 job": ["--executor", "local", "--jobs", "1"],
             "local, 2 jobs": ["--executor", "local", "--jobs", "2"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/executors"))
    parser.add_argument("extra", nargs="*", help="options added to every run.py call (after --)")
    args = parser.parse_args()
    rows = []
    for name, options in EXECUTORS.items():
        out = args.out / name.replace(", ", "-").replace(" ", "")
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, str(REPO / "run.py"), *PLAN, *options, "--out", str(out),
                                 *args.extra], cwd=REPO, capture_output=True, text=True)
        took = time.perf_counter() - started
        summary = next((line for line in reversed(result.stdout.splitlines()) if " ok, " in line), "no summary")
        rows.append([name, f"{took:.1f}", summary.split(" in ")[0], result.returncode])
    base = float(rows[0][1])
    for row in rows:
        row.insert(2, f"{base / float(row[1]):.2f}x")
    print(f"lora,full_ft x count,orientation x seeds 0,1, 1 epoch, on {os.cpu_count()} CPU cores:")
    print(tabulate(rows, headers=["executor", "wall s", "speed vs inline", "runs", "exit"], tablefmt="github"))


if __name__ == "__main__":
    main()
