"""Kill-and-resume trial: a small sweep is killed with SIGKILL at random moments, started again each time, and
its final rows are compared with an uninterrupted sweep of the same plan.

    python benchmarks/fault_injection.py [--kills 20] [--seed 0] [--window 2,25] [--out runs/faults]
                                         [-- EXTRA RUN.PY OPTIONS, e.g. --executor local --jobs 2]

Counts: kills tried and landed (the sweep was still running), rows lost (a planned run without a record),
duplicated (two files for one key), corrupt (a file that does not parse), left running or failed, and rows whose
accuracies or loss curve differ from the uninterrupted sweep's. The sweep checkpoints every epoch, so a run
killed mid-training goes on from its last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN = ["--methods", "lora,tome", "--tasks", "count,orientation", "--compression", "high", "--seeds", "0,1",
        "--epochs", "3", "--threads", "1", "--checkpoint-every", "1", "--no-estimate", "--no-save-adapters"]


def sweep(out: Path, extra: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *PLAN, "--out", str(out), *extra], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_rows(out: Path) -> tuple[dict[str, dict], int, int]:
    """Records by key, and how many files were corrupt and how many keys had two files."""
    rows, corrupt, duplicated = {}, 0, 0
    for path in sorted(out.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            corrupt += 1
            continue
        duplicated += record["key"] in rows
        rows[record["key"]] = record
    return rows, corrupt, duplicated


def outcome(record: dict) -> tuple:
    metrics = record.get("metrics", {})
    return (record["status"], metrics.get("test_acc_best"), metrics.get("test_acc_last"),
            tuple(entry["loss"] for entry in metrics.get("curve", [])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", default="2,25", help="seconds after a start within which the kill falls")
    parser.add_argument("--out", type=Path, default=Path("runs/faults"))
    parser.add_argument("extra", nargs="*", help="options added to every run.py call (after --)")
    args = parser.parse_args()
    low, high = map(float, args.window.split(","))
    shutil.rmtree(args.out, ignore_errors=True)
    started = time.perf_counter()
    whole = sweep(args.out / "uninterrupted", args.extra)
    whole.wait()
    reference, _, _ = read_rows(args.out / "uninterrupted")
    took = time.perf_counter() - started
    print(f"uninterrupted sweep: {len(reference)} runs in {took:.0f} s (exit {whole.returncode})", flush=True)
    chance, landed, corrupt_seen = random.Random(args.seed), 0, 0
    target = args.out / "killed"
    for attempt in range(1, args.kills + 1):
        process = sweep(target, args.extra)
        delay = chance.uniform(low, high)
        time.sleep(delay)
        alive = process.poll() is None
        if alive:
            process.send_signal(signal.SIGKILL)
            landed += 1
        process.wait()
        rows, corrupt, _ = read_rows(target)
        corrupt_seen += corrupt
        done = sum(record["status"] == "ok" for record in rows.values())
        print(f"  kill {attempt:>2} at {delay:5.1f} s: {'landed' if alive else 'sweep had ended'}; "
              f"{done}/{len(reference)} runs done, {corrupt} corrupt file(s)", flush=True)
    final = sweep(target, args.extra)
    final.wait()
    rows, corrupt, duplicated = read_rows(target)
    lost = len(set(reference) - set(rows))
    not_ok = sum(record["status"] != "ok" for record in rows.values())
    differ = sum(outcome(rows[key]) != outcome(record) for key, record in reference.items() if key in rows)
    leftovers = len(list(target.glob("*.claim"))) + len(list(target.glob("*.checkpoint.pt")))
    print(f"\nkills tried {args.kills}, landed {landed}; final sweep exit {final.returncode}")
    print(f"rows: {len(rows)} of {len(reference)}; lost {lost}, duplicated {duplicated}, corrupt {corrupt} "
          f"(after any kill: {corrupt_seen}), not ok {not_ok}, differing from the uninterrupted sweep {differ}; "
          f"claims or checkpoints left {leftovers}")


if __name__ == "__main__":
    main()
