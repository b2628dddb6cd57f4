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

import argparse
import contextlib
import statistics
import time

import timm
import torch
from tabulate import tabulate

import harness
from harness.measure import count_gmacs, device_synchronizer

VARIANTS = [("full", "full_ft", None), ("lora", "lora", None), ("tome-low", "tome", "low"),
            ("tome-high", "tome", "high"), ("pyra-low", "pyra", "low"), ("pyra-high", "pyra", "high"),
            ("diffrate-low", "diffrate", "low"), ("diffrate-high", "diffrate", "high")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    harness.load_plugins()

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
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16)
                if args.amp else contextlib.nullcontext())
    sync = device_synchronizer(device)

    seconds = {label: [] for label in models}
    with torch.inference_mode(), autocast:
        for model in models.values():
            for _ in range(args.warmup):
                model(images)
        sync()
        for _ in range(args.rounds):
            for label, model in models.items():
                started = time.perf_counter()
                model(images)
                sync()
                seconds[label].append(time.perf_counter() - started)

    rows = []
    base_rate = args.batch / statistics.median(seconds["full"])
    for label in models:
        rates = sorted(args.batch / s for s in seconds[label])
        median = statistics.median(rates)
        quartiles = statistics.quantiles(rates, n=4, method="inclusive")
        speedup, gmacs_ratio = median / base_rate, gmacs["full"] / gmacs[label]
        rows.append([label, f"{gmacs[label]:.2f}", f"{gmacs_ratio:.2f}x", f"{median:.1f}",
                     f"{quartiles[2] - quartiles[0]:.1f}", f"{speedup:.2f}x", f"{speedup / gmacs_ratio:.2f}"])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.backbone}, batch {args.batch}, {args.amp or 'fp32'}{', compiled' if args.compile else ''}, "
          f"{device_name}, {args.rounds} rounds")
    print(tabulate(rows, headers=["variant", "GMACs", "GMACs ratio", "img/s (median)", "IQR", "speed-up",
                                  "speed-up / GMACs ratio"], tablefmt="github"))


if __name__ == "__main__":
    main()
