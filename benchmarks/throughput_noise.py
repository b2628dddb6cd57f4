"""How repeatable is a throughput figure? The same model measured N times in one process.

    python benchmarks/throughput_noise.py [--backbone vit_micro_base_patch4_32] [--batch 64] [--times 10]
                                          [--bare-seconds 0]

Each measurement is the harness's own (warm-up, timed repeats, median and IQR). Prints every median with its IQR,
the coefficient of variation of the N medians, and how many pairs of medians lie within the reported spread
(their difference at most the larger IQR of the two).

Two checks say whether a disagreement is the harness's or the machine's. After each measurement a probe that does
not involve the model (a 1024 x 1024 fp32 matrix product) is timed, and its correlation with the medians printed.
With ``--bare-seconds S`` the model then runs in a bare loop (no harness code: one forward pass after another) for
S seconds, and its images/s are printed per 10-second window: if those move as the medians did, the machine moved.
"""
from __future__ import annotations

import itertools
import statistics
import time

import timm
import torch

import harness
from harness.measure import MeasureConfig, device_synchronizer, inference_throughput, time_repeats

from common import machine, make_parser, setup

PRODUCT_SIZE = 1024
WINDOW_SECONDS = 10.0


def product_gflops(device: torch.device, synchronize) -> float:
    """GFLOP/s of a fixed fp32 matrix product: the machine's compute speed, whatever the model."""
    left, right = (torch.randn(PRODUCT_SIZE, PRODUCT_SIZE, device=device) for _ in range(2))
    seconds = time_repeats(lambda: torch.mm(left, right), warmup=2, warmup_seconds=0.1, repeats=5,
                           iters_per_repeat=3, synchronize=synchronize)
    return 2 * PRODUCT_SIZE ** 3 / statistics.median(seconds) / 1e9


def variation_pct(values: list[float]) -> float:
    """Coefficient of variation, in %."""
    return 100 * statistics.stdev(values) / statistics.mean(values)


@torch.inference_mode()
def bare_loop_rates(model: torch.nn.Module, images: torch.Tensor, seconds: float, synchronize) -> list[float]:
    """Images/s of back-to-back forward passes in each ``WINDOW_SECONDS`` window of ``seconds``."""
    rates, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        window_started, passes = time.perf_counter(), 0
        while time.perf_counter() - window_started < WINDOW_SECONDS:
            model(images)
            synchronize()
            passes += 1
        rates.append(passes * len(images) / (time.perf_counter() - window_started))
    return rates


def main() -> None:
    parser = make_parser(__doc__, "vit_micro_base_patch4_32", device=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--times", type=int, default=10)
    parser.add_argument("--timed-seconds", type=float, default=MeasureConfig.timed_seconds,
                        help="time each measurement for at least this long (more repeats)")
    parser.add_argument("--iters-per-repeat", type=int, default=MeasureConfig.iters_per_repeat)
    parser.add_argument("--bare-seconds", type=float, default=0.0,
                        help=f"then run the model in a bare loop this long, printing img/s per {WINDOW_SECONDS:.0f} s")
    args = parser.parse_args()
    if args.times < 2:
        parser.error("--times must be at least 2: a spread needs two measurements")
    if 0 < args.bare_seconds < 2 * WINDOW_SECONDS:
        parser.error(f"--bare-seconds must be 0 or at least {2 * WINDOW_SECONDS:.0f}: a drift needs two windows")
    settings = MeasureConfig(timed_seconds=args.timed_seconds, iters_per_repeat=args.iters_per_repeat)
    device = setup(args.device)
    model = harness.merge_for_inference(harness.adapt(timm.create_model(args.backbone, pretrained=False), "lora"))
    model = model.to(device).eval()
    size = model.patch_embed.img_size[0]
    synchronize = device_synchronizer(device)
    results, products = [], []
    for index in range(1, args.times + 1):
        results.append(inference_throughput(model, size, device, batch_size=args.batch, settings=settings))
        products.append(product_gflops(device, synchronize))
        print(f"{index:2d}: {results[-1].median:9.1f} img/s  (IQR {results[-1].iqr:.1f}, spread "
              f"{results[-1].relative_spread:.3f});  matrix product {products[-1]:6.1f} GFLOP/s", flush=True)
    medians = [r.median for r in results]
    pairs = list(itertools.combinations(results, 2))
    within = sum(abs(a.median - b.median) <= max(a.iqr, b.iqr) for a, b in pairs)
    print(f"{args.backbone}, batch {args.batch}, {machine(device)}, {settings.repeats}+ repeats of "
          f"{settings.iters_per_repeat}, timed >= {settings.timed_seconds} s: mean {statistics.mean(medians):.1f} "
          f"img/s, coefficient of variation of the medians {variation_pct(medians):.2f} %, pairs of medians within "
          f"the reported spread: {within}/{len(pairs)} ({'all' if within == len(pairs) else 'not all'})")
    print(f"matrix product: coefficient of variation {variation_pct(products):.2f} %, correlation with the medians "
          f"{statistics.correlation(medians, products):+.2f}")
    if args.bare_seconds > 0:
        images = torch.randn(args.batch, 3, size, size, device=device)
        rates = bare_loop_rates(model, images, args.bare_seconds, synchronize)
        print(f"bare loop, img/s per {WINDOW_SECONDS:.0f} s: {' '.join(f'{rate:.0f}' for rate in rates)}")
        print(f"bare loop: lowest {min(rates):.1f}, highest {max(rates):.1f} img/s "
              f"({100 * (max(rates) / min(rates) - 1):.1f} % apart); coefficient of variation "
              f"{variation_pct(rates):.2f} %")


if __name__ == "__main__":
    main()
