"""Does the shipped pretraining transfer? LoRA on the pretrained micro backbone vs the same backbone randomly
initialised, on every embedded task, with the same budget (the offline default protocol).

    python benchmarks/pretrained_transfer.py [--methods lora] [--backbone vit_micro_base_patch4_32]
                                             [--seeds 0,1,2] [--out runs/transfer]

Runs go through the harness like any benchmark (one result file each, reused when they exist), then a table
gives per-task test accuracy (mean over seeds) pretrained vs random init and the difference.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness import registry
from harness.plan import load_tasks, plan_runs

from common import make_parser, run_grid, setup


def main() -> None:
    parser = make_parser(__doc__, "vit_micro_base_patch4_32")
    parser.add_argument("--methods", default="lora")
    parser.add_argument("--tasks", default="offline")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="default: each task's")
    parser.add_argument("--out", type=Path, default=Path("runs/transfer"))
    args = parser.parse_args()
    device = setup()
    tasks = load_tasks(registry.expand_tasks(args.tasks.split(",")), None)
    configs = [config for pretrained in (True, False)
               for config in plan_runs(args.methods.split(","), tasks, seeds=[int(s) for s in args.seeds.split(",")],
                                       compressions=None, backbone=args.backbone, pretrained=pretrained,
                                       device=device, train_overrides={"epochs": args.epochs})]
    frame, runs = run_grid(configs, tasks, args.out, device)
    table = frame.pivot_table(index=["method", "task"], columns="pretrained", values="test_acc_best", aggfunc="mean")
    table = table.rename(columns={True: "pretrained", False: "random init"})
    table["difference"] = table["pretrained"] - table["random init"]
    means = table.groupby(level="method").mean()
    means.index = pd.MultiIndex.from_tuples([(method, "MEAN") for method in means.index], names=table.index.names)
    seeds = frame.groupby(["method", "pretrained"])["seed"].nunique().min()
    print(f"\n{args.backbone}, test accuracy % (best of the periodic evaluations), mean over {seeds} seed(s), "
          f"{len(frame)} ok runs of {runs}:")
    print(pd.concat([table, means]).round(1).reset_index().to_markdown(index=False))


if __name__ == "__main__":
    main()
