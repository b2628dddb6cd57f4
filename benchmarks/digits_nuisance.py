"""Which nuisance made the embedded digits task unlearnable? scikit-learn's real digits rendered in several styles
(tasks.offline.DigitStyle), full fine-tuning and LoRA on each at the suite's recipe, on the shipped micro-B.

    python benchmarks/digits_nuisance.py [--methods full_ft,lora] [--seeds 0] [--out runs/digits]

Each style is registered as a task of its own (suite ``digits-nuisance``), so runs go through the harness like any
benchmark (one result file each, reused when they exist); the table gives test accuracy (best periodic
evaluation, mean over seeds) per style and method. Chance is 10 %.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from types import ModuleType

import harness
from harness import registry
from harness.plan import load_tasks, plan_runs

from common import make_parser, run_grid, setup

WIDE = (40, 256)  # any colour, so ink and paper may be close or swapped


def offline_suite() -> ModuleType:
    """tasks/offline.py as the registry loaded it (plugin folders are not importable packages)."""
    return sys.modules[registry.get_task("digits").fn.__module__]


def styles(DigitStyle: type) -> dict:
    """The styles compared, label -> style: the task's, then one nuisance each, then v2's mix of them."""
    return {
        "task (tinted, light on dark, filling)": DigitStyle(),
        "black and white": DigitStyle(paper=(0, 1), ink=(255, 256)),
        "random polarity": DigitStyle(random_polarity=True),
        "random placement (glyph 52 of 64)": DigitStyle(glyph=52),
        "any colours": DigitStyle(paper=WIDE, ink=WIDE),
        "any colours, random placement (as v2)": DigitStyle(paper=WIDE, ink=WIDE, random_polarity=True, glyph=52),
    }


def register_styles() -> dict[str, str]:
    """Register each style as a task; returns task name -> style label."""
    offline = offline_suite()
    names = {}
    for number, (label, style) in enumerate(styles(offline.DigitStyle).items()):
        name = f"digits_style{number}"
        build = functools.partial(offline.digit_arrays, style)
        load = functools.partial(offline._task_data, name, offline.DIGITS_SEED, build, 10)
        harness.register_task(name, suite="digits-nuisance", description=label)(lambda data_root=None, load=load: load())
        names[name] = label
    return names


def main() -> None:
    parser = make_parser(__doc__, "vit_micro_base_patch4_32")
    parser.add_argument("--methods", default="full_ft,lora")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, default=Path("runs/digits"))
    args = parser.parse_args()
    device = setup()
    labels = register_styles()
    tasks = load_tasks(registry.expand_tasks(["digits-nuisance"]), None)
    configs = plan_runs(args.methods.split(","), tasks, seeds=[int(s) for s in args.seeds.split(",")],
                        compressions=None, backbone=args.backbone, pretrained=None, device=device, train_overrides={})
    frame, runs = run_grid(configs, tasks, args.out, device)
    frame["style"] = frame["task"].map(labels)
    table = frame.pivot_table(index="style", columns="method", values="test_acc_best", aggfunc="mean", sort=False)
    seeds = frame["seed"].nunique()
    print(f"\n{args.backbone} (pretrained), digits test accuracy % (best periodic evaluation), mean over {seeds} "
          f"seed(s), {len(frame)} ok runs of {runs}, each method at the suite's recipe:")
    print(table.reindex(list(labels.values())).round(1).reset_index().to_markdown(index=False))


if __name__ == "__main__":
    main()
