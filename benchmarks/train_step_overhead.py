"""Harness overhead on a LoRA training step: the harness's epoch loop vs a bare PyTorch loop, same model and batch.

    python benchmarks/train_step_overhead.py [--backbone vit_micro_base_patch4_32] [--steps 20] [--rounds 7]

Both loops run the same uint8 batch through the same LoRA-adapted model; rounds alternate between the two so
drift (thermal, other load) hits both equally. Prints the median step time of each and the throughput ratio
harness / bare (1.0 = no overhead).
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

import harness
from harness.data import Normalize
from harness.train import Schedule, TrainConfig, Trainer, build_optimizer, train_epoch

from common import machine, make_parser, setup, time_rounds


def main() -> None:
    parser = make_parser(__doc__, "vit_micro_base_patch4_32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    device = setup()

    torch.manual_seed(0)
    model = harness.adapt(harness.create_backbone(args.backbone, 10, pretrained=False, drop_path_rate=0.1), "lora")
    size = model.patch_embed.img_size[0]
    images = torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.batch_size,))
    config = TrainConfig(epochs=1000, warmup_epochs=1)
    optimizer = build_optimizer(model, config)
    normalize = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), device)
    trainer = Trainer(model, optimizer, normalize)
    schedule = Schedule(config, steps_per_epoch=args.steps)
    batches = [(images, labels)] * args.steps
    model.train()

    def harness_round() -> None:
        loss_sum, _ = train_epoch(trainer, batches, schedule, first_step=0)
        loss_sum.item()

    def bare_round() -> None:
        for _ in range(args.steps):
            logits = model((images.float() - normalize.mean) / normalize.std)
            F.cross_entropy(logits, labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    timings = time_rounds({"harness": harness_round, "bare": bare_round}, args.rounds, warmup=1)
    harness_s, bare_s = (statistics.median(timings[name]) / args.steps for name in ("harness", "bare"))
    print(f"backbone {args.backbone}, LoRA, batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps, "
          f"{machine(device)}")
    print(f"bare PyTorch loop : {1000 * bare_s:7.2f} ms/step  {args.batch_size / bare_s:7.1f} img/s")
    print(f"harness loop      : {1000 * harness_s:7.2f} ms/step  {args.batch_size / harness_s:7.1f} img/s")
    print(f"throughput ratio harness/bare: {bare_s / harness_s:.3f}")


if __name__ == "__main__":
    main()
