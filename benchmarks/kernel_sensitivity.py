"""How far a last-digit difference in the CPU's kernels moves token merging: the pretrained micro-B under a method
that merges tokens, forward only, on the first test images of each offline task, in this process and in a child
process whose kernels take another code path (``--env``). Per task: how many images merge other tokens in some
block (other A-tokens merged away, or into other B-tokens), and how far the logits move for those images and for
the rest. A variable that changes nothing on this host (ATEN_CPU_CAPABILITY=avx2 on an AVX2 CPU) shows no
difference, so the header names both processes' ATen kernels.

    python benchmarks/kernel_sensitivity.py [--method tome] [--level high] [--images 500]
                                            [--env ATEN_CPU_CAPABILITY=avx2]

Other code paths to try: ``MKL_CBWR=AVX2`` (MKL's matrix products), ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's, the
patch embedding). What the same difference does over training: ``python run.py --methods lora,tome --tasks offline
--compression high --out A``, then again with the variable set and ``--out B`` (the README has the figures).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import harness
from harness import registry, token_merging
from harness.data import Normalize
from harness.plan import load_tasks

from common import make_parser, print_table, setup


def forward_recording_merges(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits, and per image and block which A-tokens merged into which B-tokens (src positions in order, then
    their dst), as (images, blocks, 2r) padded with -1 where a block merges fewer."""
    merges = []
    original = token_merging.bipartite_soft_matching

    def recording(metric: torch.Tensor, r: int, *args, **kwargs):
        matching = original(metric, r, *args, **kwargs)
        if matching is not None:
            order = matching.src[..., 0].argsort(dim=-1)
            merges.append(torch.cat([matching.src[..., 0].gather(-1, order), matching.dst[..., 0].gather(-1, order)],
                                    dim=-1))
        return matching

    token_merging.bipartite_soft_matching = recording  # the blocks look it up at each call
    try:
        with torch.inference_mode():
            logits = model(images)
    finally:
        token_merging.bipartite_soft_matching = original
    width = max((merge.shape[1] for merge in merges), default=0)
    padded = [torch.nn.functional.pad(merge, (0, width - merge.shape[1]), value=-1) for merge in merges]
    return logits, torch.stack(padded, dim=1) if padded else torch.empty(len(images), 0, 0, dtype=torch.long)


def measure(backbone: str, method: str, level: str, count: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per offline task: logits and merges of ``backbone`` adapted by ``method`` at ``level`` on ``count`` test
    images."""
    results = {}
    for name, task in load_tasks(registry.expand_tasks(["offline"]), None).items():
        model = harness.create_backbone(backbone, task.num_classes, pretrained=True)
        model = harness.merge_for_inference(harness.adapt(model, method, level)).eval()
        normalize = Normalize(model.pretrained_cfg["mean"], model.pretrained_cfg["std"], torch.device("cpu"))
        results[name] = forward_recording_merges(model, normalize(task.test.images[:count]))
    return results


def main() -> None:
    parser = make_parser(__doc__, "vit_micro_base_patch4_32")
    parser.add_argument("--method", default="tome")
    parser.add_argument("--level", default="high")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--env", default="ATEN_CPU_CAPABILITY=avx2", help="NAME=VALUE for the child process")
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)  # the child process: where its figures go
    args = parser.parse_args()
    name, equals, value = args.env.partition("=")
    if not name or not equals:
        parser.error(f"--env takes NAME=VALUE, not {args.env!r}")
    setup()
    torch.manual_seed(0)  # LoRA's and PYRA's modules draw their initial weights: the same in both processes
    if args.save is not None:
        torch.save({"capability": torch.backends.cpu.get_cpu_capability(),
                    "tasks": measure(args.backbone, args.method, args.level, args.images)}, args.save)
        return
    with tempfile.TemporaryDirectory() as folder:
        other_file = Path(folder) / "other.pt"
        subprocess.run([sys.executable, __file__, "--backbone", args.backbone, "--method", args.method, "--level",
                        args.level, "--images", str(args.images), "--save", str(other_file)],
                       env={**os.environ, name: value}, check=True)
        here = measure(args.backbone, args.method, args.level, args.images)
        other = torch.load(other_file)
    rows = []
    for task, (logits, merges) in here.items():
        other_logits, other_merges = other["tasks"][task]
        differ = (merges != other_merges).flatten(1).any(dim=1)
        moved = (logits - other_logits).abs().amax(dim=1)
        rows.append([task, len(differ), int(differ.sum()), f"{moved[differ].max().item():.2e}" if differ.any() else "-",
                     f"{moved[~differ].max().item():.2e}" if (~differ).any() else "-"])
    print(f"{args.method}@{args.level} on the pretrained {args.backbone}, forward, this process against one with "
          f"{args.env} (ATen's CPU kernels: {torch.backends.cpu.get_cpu_capability()} here, {other['capability']} "
          f"there; logit moves are absolute):")
    print_table(rows, ["task", "images", "merged differently", "largest logit move (those)",
                       "largest logit move (the rest)"])


if __name__ == "__main__":
    main()
