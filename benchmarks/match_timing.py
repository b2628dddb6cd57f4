"""How steady is small_peft's speed match? Times micro-B under tome at a level beside every smaller size of the
family as small_peft does, round after round in one process, and prints each round's ratios (what timing each
model once gave) and their medians (what small_peft records, over its MATCH_ROUNDS rounds).

    python benchmarks/match_timing.py [--level low] [--rounds 6]

Pretrained weights when they are shipped, the run's default timing settings (harness.measure.MeasureConfig).
Ratio: a size's img/s over the compressed micro-B's (1.0 = equally fast).
"""
from __future__ import annotations

import copy
import statistics
import sys

import harness
from harness import registry
from harness.backbones import create_backbone
from harness.measure import MeasureConfig

from common import machine, make_parser, print_table, setup


def main() -> None:
    parser = make_parser(__doc__, "vit_micro_base_patch4_32")
    parser.add_argument("--level", default="low")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    device = setup()
    small_peft = sys.modules[registry.get_method("small_peft").fn.__module__]
    big = create_backbone(args.backbone, 10, img_size=32, pretrained=True)
    models = {small_peft.COMPRESSED: harness.adapt(copy.deepcopy(big), "tome", args.level),
              **{name: small_peft._like(big, name) for name in small_peft.smaller_backbones(big)}}
    # One round a call: each call is what timing every model once gives.
    rounds = [small_peft._interleaved_throughputs(models, MeasureConfig(), rounds=1) for _ in range(args.rounds)]
    sizes = [name for name in models if name != small_peft.COMPRESSED]
    ratios = [[timed[name] / timed[small_peft.COMPRESSED] for name in sizes] for timed in rounds]
    print(f"{args.backbone} under tome at {args.level} beside the family, {machine(device)}, "
          f"img/s ratio per round (size / compressed):")
    rows = [[f"round {number + 1}", *(f"{ratio:.3f}" for ratio in row)] for number, row in enumerate(ratios)]
    rows.append(["median", *(f"{statistics.median(column):.3f}" for column in zip(*ratios))])
    rows.append(["max - min", *(f"{max(column) - min(column):.3f}" for column in zip(*ratios))])
    print_table(rows, ["", *sizes])


if __name__ == "__main__":
    main()
