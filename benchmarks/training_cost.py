"""Training cost per method: peak training memory and training images/s, same backbone and batch.

    python benchmarks/training_cost.py [--backbone vit_base_patch16_224] [--batch 32] [--steps 3]
        [--methods full_ft,lora,pyra] [--compression high] [--device cpu]

Random weights and random data (cost does not depend on them). Memory: one training step from a fresh optimizer,
measured as the harness measures it (CUDA: max_memory_allocated, with max_memory_reserved beside it; CPU:
resident tensors + profiler peak). Speed: median seconds per step over --steps timed steps after one warm-up
step.
"""
from __future__ import annotations

import statistics
import time

import timm
import torch

import harness
from harness.data import Normalize
from harness.measure import count_parameters, peak_memory
from harness.train import TrainConfig, Trainer, build_optimizer

from common import machine, make_parser, print_table, setup


def main() -> None:
    parser = make_parser(__doc__, "vit_base_patch16_224", device=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--methods", default="full_ft,lora,pyra")
    parser.add_argument("--compression", default="high", help="level for methods that compress")
    args = parser.parse_args()
    device = setup(args.device)
    rows = []
    for method in args.methods.split(","):
        torch.manual_seed(0)
        model = timm.create_model(args.backbone, pretrained=False, num_classes=100, drop_path_rate=0.1)
        size = model.patch_embed.img_size[0]
        compresses = harness.registry.get_method(method).compresses
        model = harness.adapt(model, method, args.compression if compresses else None).to(device)
        trainer = Trainer(model, build_optimizer(model, TrainConfig()),
                          Normalize((0.5,) * 3, (0.25,) * 3, device))
        images = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8)
        labels = torch.randint(0, 100, (args.batch,))
        model.train()
        memory = peak_memory(lambda: trainer.train_step(images, labels), device, model, trainer.optimizer)
        seconds = []
        for _ in range(args.steps):
            started = time.perf_counter()
            trainer.train_step(images, labels).item()
            seconds.append(time.perf_counter() - started)
        _, tunable = count_parameters(model)
        level = args.compression if compresses else "none"
        reserved = "-" if memory.reserved_mb is None else f"{memory.reserved_mb:.0f}"
        rows.append([method, level, f"{tunable:,}", f"{memory.mb:.0f}", reserved,
                     f"{args.batch / statistics.median(seconds):.2f}"])
    print(f"{args.backbone}, batch {args.batch}, fp32, {machine(device)}; memory: {memory.method}")
    print_table(rows, ["method", "compression", "tunable params", "train peak MiB", "train peak reserved MiB",
                       "train img/s"])


if __name__ == "__main__":
    main()
