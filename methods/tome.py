"""ToMe + LoRA: LoRA as in ``lora``, plus token merging in every block as the original ToMe patches timm ViTs.

The merge machinery (bipartite soft matching, size-weighted merge, proportional attention) lives in
``harness.token_merging``, the way the original keeps ``tome.merge`` beside ``tome.patch``.
"""
from torch import nn

import harness
from harness.compression import resolve_schedule
from harness.token_merging import patch_token_merging


@harness.register_method("tome", compresses=True, order=2)
def tome(model: nn.Module, compression: object = None, rank: int | None = None, dropout: float = 0.1,
         proportional_attention: bool = True) -> nn.Module:
    """ToMe + LoRA: bipartite token merging in every block (r per block from --compression) on a LoRA model."""
    harness.adapt(model, "lora", rank=rank, dropout=dropout)
    return patch_token_merging(model, resolve_schedule(model, compression), proportional_attention)
