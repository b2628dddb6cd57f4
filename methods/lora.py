"""LoRA as PYRA uses it: one low-rank pair on each block's fused ``qkv`` linear, so q, k and v all adapt.

``y = W x + B A dropout(x)`` with scale 1, dropout 0.1, ``lora_A``: D -> r, ``lora_B``: r -> 3D, names as in
HF peft. Following the original code's effective initialisation, both A and B start trunc-normal(std 0.02):
the ViT's weight init ran after the LoRA modules were built, so B is not zero there (a quirk we reproduce, so
the adapted model does not start exactly at the pretrained function).
"""
from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

import harness
from harness.backbones import lora_rank_for


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update; ``merged()`` folds the update into the weight."""

    def __init__(self, base_layer: nn.Linear, rank: int, dropout: float = 0.1, scale: float = 1.0) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.lora_dropout = nn.Dropout(dropout)
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False,
                                device=base_layer.weight.device, dtype=base_layer.weight.dtype)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False,
                                device=base_layer.weight.device, dtype=base_layer.weight.dtype)
        self.scale = scale
        trunc_normal_(self.lora_A.weight, std=0.02)
        trunc_normal_(self.lora_B.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain linear computing the same function in eval mode (no extra cost at inference)."""
        merged = nn.Linear(self.base_layer.in_features, self.base_layer.out_features,
                           bias=self.base_layer.bias is not None,
                           device=self.base_layer.weight.device, dtype=self.base_layer.weight.dtype)
        merged.weight.copy_(self.base_layer.weight + self.scale * self.lora_B.weight @ self.lora_A.weight)
        if self.base_layer.bias is not None:
            merged.bias.copy_(self.base_layer.bias)
        return merged


def add_lora_to_qkv(model: nn.Module, rank: int | None = None, dropout: float = 0.1) -> nn.Module:
    """Wrap every block's ``attn.qkv`` in :class:`LoRALinear` and train only LoRA and the head."""
    rank = rank or lora_rank_for(model.embed_dim)
    for block in model.blocks:
        block.attn.qkv = LoRALinear(block.attn.qkv, rank, dropout)
    harness.set_trainable(model, lambda name: ".lora_" in name)
    return model


@harness.register_method("lora", role="reference", order=1)  # merged, it is the plain deployed ViT
def lora(model: nn.Module, compression: object = None, rank: int | None = None, dropout: float = 0.1) -> nn.Module:
    """LoRA on every block's fused qkv (PYRA recipe: scale 1, dropout 0.1, rank by width); LoRA + head train."""
    return add_lora_to_qkv(model, rank, dropout)
