"""How repeatable is a throughput figure? The same model measured N times in one process.

    python benchmarks/throughput_noise.py [--backbone vit_micro_base_patch4_32] [--batch 64] [--times 10]

Each measurement is the harness's own (warm-up, timed repeats, median and IQR). Prints every median with its IQR,
the coefficient of variation of the N medians, and how many pairs of medians lie within the reported spread
(their difference at most the larger IQR of the two).
"""
from __future__ import annotations

import argparse
import itertools
import statistics

import timm
import torch

import harness
from harness.measure import MeasureConfig, inference_throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_micro_base_patch4_32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--times", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timed-seconds", type=float, default=MeasureConfig.timed_seconds,
                        help="time each measurement for at least this long (more repeats)")
    parser.add_argument("--iters-per-repeat", type=int, default=MeasureConfig.iters_per_repeat)
    args = parser.parse_args()
    settings = MeasureConfig(timed_seconds=args.timed_seconds, iters_per_repeat=args.iters_per_repeat)
    device = torch.device(args.device)
    model = harness.merge_for_inference(harness.adapt(timm.create_model(args.backbone, pretrained=False), "lora"))
    model = model.to(device).eval()
    size = model.patch_embed.img_size[0]
    results = [inference_throughput(model, size, device, batch_size=args.batch, settings=settings)
               for _ in range(args.times)]
    medians = [r.median for r in results]
    for index, result in enumerate(results, 1):
        print(f"{index:2d}: {result.median:9.1f} img/s  (IQR {result.iqr:.1f}, spread {result.relative_spread:.3f})")
    cv = statistics.stdev(medians) / statistics.mean(medians)
    pairs = list(itertools.combinations(results, 2))
    within = sum(abs(a.median - b.median) <= max(a.iqr, b.iqr) for a, b in pairs)
    print(f"{args.backbone}, batch {args.batch}, {torch.get_num_threads()} threads, {settings.repeats}+ repeats of "
          f"{settings.iters_per_repeat}, timed >= {settings.timed_seconds} s: mean {statistics.mean(medians):.1f} "
          f"img/s, coefficient of variation of the medians {100 * cv:.2f} %, pairs of medians within the reported "
          f"spread: {within}/{len(pairs)} ({'all' if within == len(pairs) else 'not all'})")


if __name__ == "__main__":
    main()
