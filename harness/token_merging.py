"""Token merging (ToMe, Bolya et al. 2023) as a patch over timm's ViT, plus the pure merge functions under it.

What the original does and we keep: merging happens inside every block after the attention residual and before
the MLP; the matching metric is the attention keys averaged over heads, cosine-normalised; bipartite soft
matching splits tokens alternately into A (even) and B (odd) sets, never merges the class token (nor a
distillation token), merges the r A-tokens with the most similar B partners, and caps r at half the mergeable
tokens; a merge is a size-weighted average; token sizes are carried through the blocks and, with proportional
attention, ``log(size)`` is added to the attention logits.

What we do differently, for speed only (the function is the same): attention stays fused
(``scaled_dot_product_attention`` with ``log(size)`` as an additive mask); each block's r is a plain int fixed at
patch time (no per-forward list popping); tokens and sizes are merged with one gather and one scatter; and no
Python-side ``.item()`` is involved, so the patched model compiles with ``torch.compile``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from .adapt import record_info
from .errors import UserError

# (src, dst) -> modulated src: both (batch, r, channels), size-weighted; used by PYRA.
Modulator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Matching:
    """Which tokens a merge keeps and where the merged ones go; indices are (batch, k, 1)."""

    unmerged: torch.Tensor  # A-set positions kept as they are
    src: torch.Tensor  # A-set positions merged away
    dst: torch.Tensor  # B-set positions each src token merges into
    r: int


def bipartite_soft_matching(metric: torch.Tensor, r: int, class_token: bool = True,
                            distill_token: bool = False) -> Matching | None:
    """Match the ``r`` most similar A->B token pairs; ``None`` when nothing is to be merged.

    ``metric`` is (batch, tokens, channels). Tokens alternate between set A (even positions) and set B (odd).
    """
    protected = int(class_token) + int(distill_token)
    r = min(r, (metric.shape[1] - protected) // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)
        if class_token:
            scores[:, 0, :] = -torch.inf
        if distill_token:
            scores[:, :, 0] = -torch.inf
        best_score, best_partner = scores.max(dim=-1)
        ranked = best_score.argsort(dim=-1, descending=True)[..., None]
        unmerged, src = ranked[:, r:], ranked[:, :r]
        if class_token:
            unmerged = unmerged.sort(dim=1).values  # keeps the class token first
        dst = best_partner[..., None].gather(dim=1, index=src)
    return Matching(unmerged, src, dst, r)


def merge_weighted(x: torch.Tensor, size: Optional[torch.Tensor], matching: Matching,
                   modulate: Optional[Modulator] = None,
                   distill_token: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge of ``x`` (batch, tokens, channels); returns (merged x, merged sizes).

    ``modulate(src, dst)`` may rewrite the size-weighted source tokens just before they are added to their
    destinations (PYRA); the sizes themselves are never modulated.
    """
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    channels = x.shape[-1]
    carried = torch.cat([x * size, size], dim=-1)  # one gather/scatter moves tokens and sizes together
    a_set, b_set = carried[:, ::2], carried[:, 1::2]
    batch, _, width = a_set.shape
    kept = a_set.gather(1, matching.unmerged.expand(-1, -1, width))
    src = a_set.gather(1, matching.src.expand(-1, -1, width))
    if modulate is not None:
        dst_tokens = b_set[..., :channels].gather(1, matching.dst.expand(-1, -1, channels))
        src = torch.cat([modulate(src[..., :channels], dst_tokens), src[..., channels:]], dim=-1)
    b_set = b_set.scatter_reduce(1, matching.dst.expand(-1, -1, width), src, reduce="sum")
    if distill_token:
        merged = torch.cat([kept[:, :1], b_set[:, :1], kept[:, 1:], b_set[:, 1:]], dim=1)
    else:
        merged = torch.cat([kept, b_set], dim=1)
    # Sizes are counts, a function of the matching's indices alone: no parameter is upstream of them. Detached, as
    # the original's (merged on their own from ones) are, or the proportional-attention bias would require grad and
    # a fused attention's backward would build its (batch, heads, tokens, tokens) gradient in every block.
    merged_size = merged[..., channels:].detach()
    return merged[..., :channels] / merged_size, merged_size


class TokenMergingState:
    """Per-forward state shared by the blocks of one patched model (token sizes)."""

    def __init__(self, class_token: bool, distill_token: bool, proportional_attention: bool = True) -> None:
        self.class_token, self.distill_token = class_token, distill_token
        self.proportional_attention = proportional_attention
        self.size: Optional[torch.Tensor] = None


def proportional_qkv(attn: Attention, x: torch.Tensor, size: Optional[torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Queries, keys and values (batch, heads, tokens, head_dim) of timm's ``attn`` on ``x``, normalised as timm
    normalises them, and the proportional-attention bias ``log(size)`` (batch, 1, 1, tokens) to add to the logits
    (``None`` without sizes: every token counts once).

    The patched attentions of ToMe and DiffRate share this and differ only in what they do with it; the bias is
    shaped as an additive mask, so it goes to the fused ``scaled_dot_product_attention`` as it is.
    """
    batch, tokens, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    bias = None if size is None else size.log()[:, None, None, :, 0].to(q.dtype)
    return q, k, v, bias


class TokenMergingAttention(Attention):
    """timm's Attention plus proportional attention; also returns the head-averaged keys as matching metric."""

    def forward(self, x: torch.Tensor, size: Optional[torch.Tensor] = None,
                **unused) -> tuple[torch.Tensor, torch.Tensor]:
        batch, tokens, _ = x.shape
        q, k, v, bias = proportional_qkv(self, x, size)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.attn_drop.p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, tokens, -1)
        return self.proj_drop(self.proj(self.norm(out))), k.mean(1)


class TokenMergingBlock(Block):
    """timm's Block with a token merge between the attention residual and the MLP.

    ``merge_r``, ``merge_state`` and ``modulator`` are set by :func:`patch_token_merging`.
    """

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                **unused) -> torch.Tensor:
        state: TokenMergingState = self.merge_state
        attn_size = state.size if state.proportional_attention else None
        attended, metric = self.attn(self.norm1(x), attn_size)
        x = x + self.drop_path1(self.ls1(attended))
        if self.merge_r > 0:
            matching = bipartite_soft_matching(metric, self.merge_r, state.class_token, state.distill_token)
            if matching is not None:
                x, state.size = merge_weighted(x, state.size, matching, self.modulator, state.distill_token)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _token_merging_class(vit_class: type) -> type:
    class TokenMergingVisionTransformer(vit_class):
        """The original ViT class; each forward starts with unit token sizes."""

        def forward_features(self, *args, **kwargs) -> torch.Tensor:
            self.merge_state.size = None
            return super().forward_features(*args, **kwargs)

    TokenMergingVisionTransformer.__name__ = f"TokenMerging{vit_class.__name__}"
    return TokenMergingVisionTransformer


def effective_schedule(model: VisionTransformer, schedule: list[int]) -> list[int]:
    """The r each block really merges, after ToMe's cap of half the mergeable tokens, for the model's input."""
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    protected = model.num_prefix_tokens
    effective = []
    for r in schedule:
        r = max(0, min(r, (tokens - protected) // 2))
        effective.append(r)
        tokens -= r
    return effective


def token_counts(model: VisionTransformer, schedule: list[int]) -> list[int]:
    """Tokens entering each block's MLP (after its merge)."""
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    counts = []
    for r in effective_schedule(model, schedule):
        tokens -= r
        counts.append(tokens)
    return counts


def patch_token_merging(model: VisionTransformer, schedule: list[int], proportional_attention: bool = True,
                        modulator_factory: Optional[Callable[[int, int], nn.Module]] = None) -> VisionTransformer:
    """Apply token merging in place: block i merges ``schedule[i]`` tokens (capped as ToMe caps it).

    ``modulator_factory(dim, r)`` builds a per-block module that modulates source tokens before merging
    (PYRA); blocks that merge nothing get none. Returns the model, whose class is now a subclass of its own.
    """
    if not isinstance(model, VisionTransformer):
        raise UserError(f"token merging patches timm VisionTransformers, not {type(model).__name__}")
    if len(schedule) != len(model.blocks):
        raise UserError(f"compression schedule has {len(schedule)} entries but the model has {len(model.blocks)} "
                        f"blocks; give one r per block")
    distill_token = getattr(model, "dist_token", None) is not None
    class_token = model.cls_token is not None
    if model.num_prefix_tokens != int(class_token) + int(distill_token):
        raise UserError("token merging supports a class token and a distillation token, not register tokens")
    state = TokenMergingState(class_token, distill_token, proportional_attention)
    model.__class__ = _token_merging_class(model.__class__)
    model.merge_state = state
    model.merge_schedule = effective_schedule(model, schedule)
    record_info(model, merge_schedule=",".join(map(str, model.merge_schedule)),
                final_tokens=token_counts(model, model.merge_schedule)[-1])
    for block, r in zip(model.blocks, model.merge_schedule):
        if type(block) is not Block or type(block.attn) is not Attention or getattr(block.attn, "gate", None):
            raise UserError(f"token merging supports timm's plain Block/Attention (ungated), not "
                            f"{type(block).__name__}/{type(block.attn).__name__}")
        block.__class__ = TokenMergingBlock
        block.attn.__class__ = TokenMergingAttention
        block.merge_state = state  # one plain object shared by all blocks, not a submodule
        block.merge_r = r
        block.modulator = modulator_factory(model.embed_dim, r) if modulator_factory and r > 0 else None
    return model
