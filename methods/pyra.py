"""PYRA (Xiong et al., ECCV 2024): ToMe + LoRA, plus a tiny modulation of the tokens about to be merged.

In every block that merges r tokens, the r source tokens (size-weighted, as the original applies it inside the
merge) are modulated before they are added to their destinations::

    M   = LayerNorm(src + dst)                  (batch, r, D)
    w_D = 2 sigmoid(W_r^T M)                    (batch, 1, D)  one weight per channel, mixing the r tokens
    w_r = 2 sigmoid(M W_D^T) - 1                (batch, r, 1)  one weight per token, mixing the channels
    src = src + src * w_D * w_r

``W_D`` starts at zero, so w_r = 0 and PYRA starts exactly as ``tome``. Parameters per merging block follow the
original code: r (W_r) + D (W_D) + 2D (the LayerNorm); the paper's "8.64K for ViT-B" does not match that count.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import harness
from harness.compression import resolve_schedule
from harness.token_merging import patch_token_merging


class PyraModulator(nn.Module):
    """Parallel yielding re-activation weights for one block's r source tokens."""

    def __init__(self, dim: int, r: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.W_r = nn.Parameter(torch.empty(r, 1))
        self.W_D = nn.Parameter(torch.zeros(1, dim))
        nn.init.kaiming_uniform_(self.W_r, a=math.sqrt(5))  # uniform(-1, 1) for this shape, as the original

    def forward(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        info = self.norm(src + dst)
        channel_weight = 2 * torch.sigmoid(info.transpose(1, 2) @ self.W_r).transpose(1, 2)
        token_weight = 2 * torch.sigmoid(info @ self.W_D.transpose(0, 1)) - 1
        return src + src * channel_weight * token_weight


@harness.register_method("pyra", compresses=True, order=3)
def pyra(model: nn.Module, compression: object = None, rank: int | None = None, dropout: float = 0.1,
         lr_scale: float = 1.0) -> nn.Module:
    """PYRA: ToMe + LoRA with token modulation before each merge; lr_scale sets PYRA's own learning rate."""
    harness.adapt(model, "lora", rank=rank, dropout=dropout)
    patch_token_merging(model, resolve_schedule(model, compression), modulator_factory=PyraModulator)
    harness.set_trainable(model, lambda name: ".lora_" in name or ".modulator." in name)
    for block in model.blocks:
        if block.modulator is not None:
            harness.set_lr_scale(block.modulator, lr_scale)
    return model
