"""Which micro ViT widths match micro-B under token merging in speed? Inference img/s of micro ViTs of several
widths (depth 12, patch 4, 32 px, heads of about 16 channels) beside micro-B under ``tome`` at low and high, in one
process, interleaved, so a small model within ±10 % of each compressed one can be chosen for the family.

    python benchmarks/micro_family.py [--widths 48,64,80,96] [--batch 64] [--rounds 9] [--threads 2]

Random weights (speed does not depend on them), eval mode, ``torch.inference_mode``; each cell is the median
over rounds of one timed batch. Ratio: a width's img/s over the compressed micro-B's (1.0 = equally fast).
"""
from __future__ import annotations

import statistics

import timm
import torch

import harness
from harness.measure import count_gmacs

from common import machine, make_parser, print_table, setup, time_rounds


def main() -> None:
    parser = make_parser(__doc__, "vit_micro_base_patch4_32")
    parser.add_argument("--widths", default="48,64,80,96")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    device = setup()
    if args.threads:
        torch.set_num_threads(args.threads)
    models, gmacs = {}, {}
    for level in ("low", "high"):
        torch.manual_seed(0)
        models[f"micro-B tome {level}"] = harness.merge_for_inference(
            harness.adapt(timm.create_model(args.backbone), "tome", level)).eval()
    for width in map(int, args.widths.split(",")):
        torch.manual_seed(0)
        heads = max(h for h in range(1, width // 8 + 1) if width % h == 0 and width // h >= 14)
        models[f"width {width}"] = timm.create_model(args.backbone, embed_dim=width, num_heads=heads).eval()
    images = torch.randn(args.batch, 3, 32, 32)
    for name, model in models.items():
        gmacs[name] = count_gmacs(model, 32)

    def forward(model):
        return lambda: model(images)

    with torch.inference_mode():
        seconds = time_rounds({name: forward(model) for name, model in models.items()}, args.rounds, warmup=3)
    speed = {name: args.batch / statistics.median(times) for name, times in seconds.items()}
    rows = [[name, f"{gmacs[name]:.4g}", f"{speed[name]:,.0f}",
             *(f"{speed[name] / speed[f'micro-B tome {level}']:.2f}x" for level in ("low", "high"))]
            for name in models]
    print(f"{machine(device)}, batch {args.batch}, median of {args.rounds} interleaved rounds:")
    print_table(rows, ["model", "GMACs", "img/s", "vs tome low", "vs tome high"])


if __name__ == "__main__":
    main()
