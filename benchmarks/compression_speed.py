"""Realised speed-up of token-reducing methods vs their GMACs reduction, on one backbone, in one process.

    python benchmarks/compression_speed.py [--backbone vit_base_patch16_224] [--batch 16] [--rounds 7]
        [--device cpu] [--amp bf16] [--compile]

Random weights (speed does not depend on them), eval mode, LoRA merged as deployed, ``torch.inference_mode``.
DiffRate's rates are searched (20 steps) on random images to the GMACs of tome at the same level.
Rounds interleave the models so drift hits all of them alike; each cell is the median over rounds of one timed
batch (after warm-up). The figure to watch is ``speed-up / GMACs ratio`` (1.0 = the method turns every saved
MAC into time).
"""
from __future__ import annotations

import functools
import statistics

import timm
import torch

import harness
from harness.measure import autocast, count_gmacs, device_synchronizer, summarize_rates

from common import machine, make_parser, print_table, setup, time_rounds

VARIANTS = [("full", "full_ft", None), ("lora", "lora", None), ("tome-low", "tome", "low"),
            ("tome-high", "tome", "high"), ("pyra-low", "pyra", "low"), ("pyra-high", "pyra", "high"),
            ("diffrate-low", "diffrate", "low"), ("diffrate-high", "diffrate", "high")]


def main() -> None:
    parser = make_parser(__doc__, "vit_base_patch16_224", device=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = setup(args.device)

    models, gmacs = {}, {}
    for label, method, level in VARIANTS:
        torch.manual_seed(0)
        model = timm.create_model(args.backbone, pretrained=False)
        size = model.patch_embed.img_size[0]
        options = {"train_data": [torch.randn(8, 3, size, size) for _ in range(4)], "search_steps": 20} \
            if method == "diffrate" else {}
        harness.merge_for_inference(harness.adapt(model, method, level, **options)).eval()
        gmacs[label] = count_gmacs(model, size)
        model = model.to(device)
        models[label] = torch.compile(model) if args.compile else model
    images = torch.randn(args.batch, 3, size, size, device=device)
    with torch.inference_mode(), autocast(device, args.amp or "fp32"):
        seconds = time_rounds({label: functools.partial(model, images) for label, model in models.items()},
                              args.rounds, warmup=args.warmup, synchronize=device_synchronizer(device))

    rows = []
    base_rate = args.batch / statistics.median(seconds["full"])
    for label in models:
        rates = summarize_rates([args.batch / s for s in seconds[label]], args.batch)
        speedup, gmacs_ratio = rates.median / base_rate, gmacs["full"] / gmacs[label]
        rows.append([label, f"{gmacs[label]:.2f}", f"{gmacs_ratio:.2f}x", f"{rates.median:.1f}", f"{rates.iqr:.1f}",
                     f"{speedup:.2f}x", f"{speedup / gmacs_ratio:.2f}"])
    print(f"{args.backbone}, batch {args.batch}, {args.amp or 'fp32'}{', compiled' if args.compile else ''}, "
          f"{machine(device)}, {args.rounds} rounds")
    print_table(rows, ["variant", "GMACs", "GMACs ratio", "img/s (median)", "IQR", "speed-up",
                       "speed-up / GMACs ratio"])


if __name__ == "__main__":
    main()
