"""benchmarks/kernel_sensitivity.py: it records the merges each block makes, and the whole comparison runs."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

import harness
from harness import token_merging

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))  # the script imports its neighbour common.py, as scripts do
import kernel_sensitivity  # noqa: E402


def test_the_merges_of_every_block_are_recorded_and_the_function_put_back():
    torch.manual_seed(0)
    model = harness.adapt(harness.create_backbone("vit_micro_base_patch4_32", 5, pretrained=False), "tome",
                          "high").eval()
    images = torch.randn(3, 3, 32, 32)
    original = token_merging.bipartite_soft_matching
    logits, merges = kernel_sensitivity.forward_recording_merges(model, images)
    assert token_merging.bipartite_soft_matching is original  # the recorder is gone
    merging_blocks = [r for r in model.merge_schedule if r > 0]
    assert merges.shape == (3, len(merging_blocks), 2 * max(merging_blocks))
    with torch.inference_mode():
        assert torch.equal(logits, model(images))
    # block 0's src positions are the r most similar A-tokens, as the matching itself gives them
    with torch.inference_mode():
        block = model.blocks[0]
        _, metric = block.attn(block.norm1(model._pos_embed(model.patch_embed(images))))
    matching = token_merging.bipartite_soft_matching(metric, merging_blocks[0])
    assert torch.equal(merges[:, 0, :merging_blocks[0]], matching.src[..., 0].sort(dim=-1).values)


def test_the_comparison_runs_and_prints_a_row_per_task():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernel_sensitivity.py"), "--images", "8"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"ATen's CPU kernels: \w+ here, \w+ there", done.stdout)  # the child's said, not assumed
    for task in ("digits", "photos", "cells", "count", "orientation"):
        assert re.search(rf"\| {task} +\| +8 \| +[0-8] \|", done.stdout)  # images, and how many merged differently


def test_an_env_without_a_value_is_refused_in_one_line():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernel_sensitivity.py"), "--env", "FOO"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and "--env takes NAME=VALUE, not 'FOO'" in done.stderr
