"""Why does LoRA trail full fine-tuning on the embedded suite? The two, on the shipped pretrained micro-B, across
training budgets and LoRA learning rates, on every embedded task: if the gap closes with a larger budget or lr,
the budget is what is wrong; if it stays, the features are.

    python benchmarks/peft_regime.py [--epochs 3,15] [--lora-lrs 1e-3,1e-2] [--full-lr 1e-3] [--tasks offline]
                                     [--seeds 0] [--out runs/regime]

Runs go through the harness like any benchmark (one result file each, reused when they exist), with a quick
throughput measurement (speed is not what this asks); the table gives test accuracy (best periodic evaluation,
mean over seeds) per task and setting, the mean, and LoRA's gap to full fine-tuning at the same budget.
"""
from __future__ import annotations

from pathlib import Path


from harness import registry
from harness.measure import MeasureConfig
from harness.plan import load_tasks, plan_runs

from common import make_parser, run_grid, setup

QUICK = MeasureConfig(batches=(16,), warmup_seconds=0.1, repeats=3, attempts=1)


def main() -> None:
    parser = make_parser(__doc__, "vit_micro_base_patch4_32")
    parser.add_argument("--epochs", default="3,15")
    parser.add_argument("--lora-lrs", default="1e-3,1e-2")
    parser.add_argument("--full-lr", type=float, default=1e-3)
    parser.add_argument("--tasks", default="offline")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, default=Path("runs/regime"))
    args = parser.parse_args()
    device = setup()
    tasks = load_tasks(registry.expand_tasks(args.tasks.split(",")), None)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    settings = [("full_ft", args.full_lr)] + [("lora", float(lr)) for lr in args.lora_lrs.split(",")]
    configs = [config for epochs in map(int, args.epochs.split(",")) for method, lr in settings
               for config in plan_runs([method], tasks, seeds=seeds, compressions=None, backbone=args.backbone,
                                       pretrained=None, device=device, train_overrides={"epochs": epochs, "lr": lr},
                                       measure=QUICK)]
    frame, runs = run_grid(configs, tasks, args.out, device)
    frame["setting"] = frame["method"] + " lr " + frame["train_lr"].map("{:g}".format)
    table = frame.pivot_table(index="task", columns=["train_epochs", "setting"], values="test_acc_best",
                              aggfunc="mean")
    table.loc["MEAN"] = table.mean()
    for epochs in table.columns.levels[0]:
        for lr in args.lora_lrs.split(","):
            column = (epochs, f"lora lr {float(lr):g}")
            if column in table:
                table[(epochs, f"gap lr {float(lr):g}")] = table[column] - table[(epochs, f"full_ft lr {args.full_lr:g}")]
    table = table.sort_index(axis=1)
    table.columns = [f"{epochs} ep: {setting}" for epochs, setting in table.columns]
    print(f"\n{args.backbone} (pretrained), test accuracy % (best periodic evaluation), mean over {len(seeds)} "
          f"seed(s); gap = LoRA - full fine-tuning at the same epochs:")
    print(table.round(1).reset_index().to_markdown(index=False))


if __name__ == "__main__":
    main()
