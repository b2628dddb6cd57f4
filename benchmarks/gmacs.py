"""GMACs (fvcore convention) of reference and micro backbones, as adaptbench counts them.

    python benchmarks/gmacs.py

Expected for vit_base_patch16_224 at 224: 17.58 (fvcore's figure that the field quotes as "GFLOPs").
"""
from __future__ import annotations

import timm
import torch

import harness
from harness.measure import count_gmacs, count_parameters

from common import print_table

BACKBONES = ["vit_base_patch16_224", "vit_small_patch16_224", "vit_large_patch16_224",
             "vit_micro_base_patch4_32", "vit_micro_small_patch4_32"]


def main() -> None:
    rows = []
    for name in BACKBONES:
        model = timm.create_model(name, pretrained=False)
        size = model.patch_embed.img_size[0]
        adapted = harness.merge_for_inference(harness.adapt(timm.create_model(name, pretrained=False), "lora"))
        total, _ = count_parameters(model)
        rows.append([name, size, f"{total / 1e6:.2f}", f"{count_gmacs(model, size):.4f}",
                     f"{count_gmacs(adapted, size):.4f}"])
        del model, adapted
    print_table(rows, ["backbone", "input", "params (M)", "GMACs", "GMACs lora (merged)"])


if __name__ == "__main__":
    with torch.no_grad():
        main()
