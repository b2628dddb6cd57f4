"""DiffRate + LoRA: per-block prune and merge counts found by DiffRate's differentiable rate search, then LoRA
fine-tuning at those fixed counts (Chen et al., ICCV 2023, as PYRA compares with it).

Every block sorts its tokens by class attention (head-averaged attention of the class token), prunes all but
the ``prune_kept`` most attended, then merges the least attended of those into their most similar kept token
(cosine of the token features) until ``merge_kept`` remain; merged sizes are weighted by that similarity, and
attention is proportional to size, as in the original. The first block never compresses.

The search, as in the original: per block and per operation, learnable logits over every candidate kept count;
the kept count is the ceiling (straight-through) of its expectation; tokens past it are masked with a
straight-through mask whose gradient is the probability each token is kept; the loss adds
``5 * (GMACs / target - 1)^2`` (GMACs from the kept counts, differentiable; the original uses the absolute
difference in GFLOPs of its dominant terms, a scale tuned for DeiT/ViT-B that would barely move a micro
backbone) and only the logits train (Adam).
How ours differs (README): it searches on the task's own training split, not ImageNet, and, having no task
head yet, matches the frozen uncompressed model's final features (cosine distance) instead of using labels;
the target is the GMACs of ``tome`` at the same compression level; the search gets 60 steps at lr 0.1 (the
original: thousands of ImageNet steps at lr 0.01), after which single blocks are nudged a token at a time until
GMACs are within 1 % of the target, which the search alone reaches only approximately. Fine-tuning then drops tokens
for real (the inference path) instead of keeping masked tokens as the original's training path does.

DeiT distilled (PYRA's DeiT experiment): the original supports one class token only (its DeiT models are the
non-distilled ones). Here the distillation token is protected as the class token is: never pruned, never merged
away, never a merge destination, so the distilled head reads it as it was trained to. Importance stays the class
token's attention, over the patch tokens.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

import harness
from harness.compression import head_macs, resolve_schedule, schedule_gmacs
from harness.token_merging import effective_schedule, proportional_qkv


def ste_ceil(value: torch.Tensor) -> torch.Tensor:
    return value + (torch.ceil(value) - value).detach()


class RateProxy(nn.Module):
    """DiffRate's differentiable discrete proxy for one block's kept-token count."""

    def __init__(self, patches: int, protected: int) -> None:
        super().__init__()
        self.register_buffer("candidates", torch.arange(patches, 0, -1, dtype=torch.float32), persistent=False)
        self.logits = nn.Parameter(torch.zeros(patches))
        self.protected = protected

    def expected_kept(self) -> torch.Tensor:
        """Kept tokens (protected ones included): ceil of the expected candidate, with a straight-through gradient."""
        return ste_ceil(self.candidates @ self.logits.softmax(-1)) + self.protected

    def keep_mask(self, kept: int, upto: int) -> torch.Tensor:
        """1 for tokens before ``kept``, 0 from ``kept`` to ``upto``; gradient = probability each token is kept."""
        positions = torch.arange(len(self.candidates) + self.protected, device=self.logits.device)
        counts = self.candidates + self.protected
        keep_probability = (self.logits.softmax(-1)[None] * (counts[None] > positions[:, None])).sum(-1)
        hard = torch.ones_like(keep_probability)
        hard[kept:upto] = 0
        return hard - keep_probability.detach() + keep_probability


class DiffRateState:
    """Per-forward state shared by the blocks: sizes, the search mask, the kept counts seen in the search;
    ``protected``, the leading tokens never dropped (class, distillation)."""

    def __init__(self, protected: int) -> None:
        self.protected = protected
        self.searching = False
        self.size: Optional[torch.Tensor] = None
        self.mask: Optional[torch.Tensor] = None
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []


class DiffRateAttention(Attention):
    """Proportional attention that also returns the class token's head-averaged attention over all tokens."""

    def forward(self, x: torch.Tensor, size: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, **unused) -> tuple[torch.Tensor, torch.Tensor]:
        batch, tokens, _ = x.shape
        q, k, v, bias = proportional_qkv(self, x, size)
        if mask is None:  # fixed rates: fused attention, plus the class token's row for the importance
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                 dropout_p=self.attn_drop.p if self.training else 0.0)
            logits = (q[:, :, :1] * self.scale) @ k.transpose(-2, -1)
            cls_attention = (logits if bias is None else logits + bias).softmax(-1).mean(1)[:, 0]
        else:  # search: masked tokens receive no attention, except from themselves (as the original)
            logits = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                logits = logits + bias
            policy = mask[:, None, None, :]
            eye = torch.eye(tokens, device=x.device, dtype=policy.dtype)[None, None]
            policy = policy + (1.0 - policy) * eye
            weights = (logits - logits.amax(-1, keepdim=True)).exp() * policy
            weights = (weights + 1e-6 / tokens) / (weights.sum(-1, keepdim=True) + 1e-6)
            out = weights @ v
            cls_attention = weights[:, :, 0].mean(1)
        out = out.transpose(1, 2).reshape(batch, tokens, -1)
        return self.proj_drop(self.proj(self.norm(out))), cls_attention


def _similarity_merge(x: torch.Tensor, size: torch.Tensor, kept: int, upto: int, keep_sources: bool,
                      protected: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge tokens ``kept:upto`` (least important) into their most similar token among ``protected:kept`` (not
    the class or distillation token): features averaged, sizes weighted by similarity and summed. With
    ``keep_sources`` (search) the merged-away tokens stay in place behind the destinations, to be masked."""
    with torch.no_grad():
        metric = x[:, :upto] / x[:, :upto].norm(dim=-1, keepdim=True)
        similarity = metric[:, kept:] @ metric[:, :kept].transpose(-1, -2)
        similarity[..., :protected] = -math.inf
        best, partner = similarity.max(dim=-1)
    partner = partner[..., None]
    sources, source_size = x[:, kept:upto], size[:, kept:upto]
    merged = x[:, :kept].scatter_reduce(1, partner.expand(-1, -1, x.shape[-1]), sources, reduce="mean")
    weighted = torch.cat([size[:, :kept], source_size * best[..., None]], dim=1).clamp(min=1)
    merged_size = weighted[:, :kept].scatter_reduce(1, partner, weighted[:, kept:], reduce="sum")
    if keep_sources:
        return torch.cat([merged, sources, x[:, upto:]], dim=1), torch.cat([merged_size, weighted[:, kept:],
                                                                            size[:, upto:]], dim=1)
    return merged, merged_size


class DiffRateBlock(Block):
    """timm's Block with DiffRate's sort -> prune -> merge between the attention residual and the MLP."""

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False,
                **unused) -> torch.Tensor:
        state: DiffRateState = self.rate_state
        attended, importance = self.attn(self.norm1(x), state.size, state.mask if state.searching else None)
        x = x + self.drop_path1(self.ls1(attended))
        protected = state.protected  # stay first, in place; the patch tokens follow by importance
        order = torch.cat([torch.arange(protected, device=x.device).expand(x.shape[0], -1),
                           importance[:, protected:].argsort(dim=-1, descending=True) + protected], dim=1)
        if state.searching:
            if self.searchable:
                x = self._search_step(x, order, state)
        else:
            keep = order[:, :self.prune_kept, None]
            x = x.gather(1, keep.expand(-1, -1, x.shape[-1]))
            size = state.size.gather(1, keep) if state.size is not None else x.new_ones(x.shape[0], x.shape[1], 1)
            if self.merge_kept < self.prune_kept:
                x, size = _similarity_merge(x, size, self.merge_kept, self.prune_kept, False, state.protected)
            state.size = size
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def _search_step(self, x: torch.Tensor, order: torch.Tensor, state: DiffRateState) -> torch.Tensor:
        x = x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))
        size, mask = state.size.gather(1, order[..., None]), state.mask.gather(1, order)
        live = int(mask[0].detach().sum().round())
        prune_kept = self.prune_proxy.expected_kept()
        if prune_kept < live:
            mask = mask * self.prune_proxy.keep_mask(int(prune_kept), live)
        middle = min(live, int(prune_kept))
        merge_kept = self.merge_proxy.expected_kept()
        state.kept.append((prune_kept, merge_kept))
        if merge_kept < middle:
            x, size = _similarity_merge(x, size, int(merge_kept), middle, True, state.protected)
            mask = mask * self.merge_proxy.keep_mask(int(merge_kept), middle)
        state.size, state.mask = size, mask
        return x


def _diffrate_class(vit_class: type) -> type:
    class DiffRateVisionTransformer(vit_class):
        def forward_features(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            tokens = _all_tokens(self)
            state = self.rate_state
            state.kept = []
            state.size = torch.ones(x.shape[0], tokens, 1, device=x.device) if state.searching else None
            state.mask = torch.ones(x.shape[0], tokens, device=x.device) if state.searching else None
            return super().forward_features(x, *args, **kwargs)

        def adaptbench_restore(self, facts: dict[str, str]) -> None:
            """Put back the kept counts an adapter file recorded (``harness.load_adapter`` calls it): the fresh
            model need not search again, so adapt it uncompressed (no training data needed), then load."""
            set_kept(self, [int(count) for count in facts["prune_kept"].split(",")],
                     [int(count) for count in facts["merge_kept"].split(",")])
            record_kept(self)

    DiffRateVisionTransformer.__name__ = f"DiffRate{vit_class.__name__}"
    return DiffRateVisionTransformer


def _all_tokens(model: VisionTransformer) -> int:
    """Tokens entering the first block: patches plus class (and distillation) token."""
    return model.patch_embed.num_patches + model.num_prefix_tokens


def patch_diffrate(model: VisionTransformer) -> VisionTransformer:
    """Patch in place; every block starts keeping all tokens. Set counts with :func:`set_kept`."""
    distill_token = getattr(model, "dist_token", None) is not None
    if model.cls_token is None or model.num_prefix_tokens != 1 + distill_token:
        raise harness.UserError("diffrate needs a ViT with a class token (and at most a distillation token "
                                "besides): it ranks tokens by the class token's attention")
    model.__class__ = _diffrate_class(model.__class__)
    model.rate_state = DiffRateState(model.num_prefix_tokens)
    for index, block in enumerate(model.blocks):
        block.__class__ = DiffRateBlock
        block.attn.__class__ = DiffRateAttention
        block.rate_state = model.rate_state
        block.searchable = index > 0  # the original never compresses the first block
    set_kept(model, [_all_tokens(model)] * len(model.blocks), [_all_tokens(model)] * len(model.blocks))
    return model


def set_kept(model: VisionTransformer, prune_kept: list[int], merge_kept: list[int]) -> None:
    """Fix the counts, made consistent: never more than the previous block left, merge <= prune, and at least
    one patch token beside the protected ones."""
    live, least = _all_tokens(model), model.num_prefix_tokens + 1
    for block, prune, merge in zip(model.blocks, prune_kept, merge_kept):
        block.prune_kept = max(least, min(int(prune), live)) if block.searchable else live
        block.merge_kept = max(least, min(int(merge), block.prune_kept)) if block.searchable else live
        live = block.merge_kept


def record_kept(model: VisionTransformer) -> None:
    """The fixed counts in the run's row and in its adapter file, from which they are restored."""
    harness.record_info(model, prune_kept=",".join(str(b.prune_kept) for b in model.blocks),
                        merge_kept=",".join(str(b.merge_kept) for b in model.blocks))


def _gmacs(model: VisionTransformer, kept: Iterable[tuple]) -> torch.Tensor | float:
    """GMACs (fvcore convention, as :func:`harness.measure.count_gmacs` counts them) for per-block (prune, merge)
    kept counts; with tensor counts (the search's straight-through ones) the result is differentiable."""
    dim, hidden = model.embed_dim, model.blocks[0].mlp.fc1.out_features
    patches = model.patch_embed.num_patches
    macs = patches * model.patch_embed.proj.in_channels * math.prod(model.patch_embed.patch_size) * dim
    tokens = _all_tokens(model)
    for prune, merge in kept:
        macs = macs + 5 * tokens * dim + 4 * tokens * dim * dim + 2 * tokens * tokens * dim + tokens * dim
        pruned = torch.minimum(torch.as_tensor(tokens), prune) if torch.is_tensor(prune) else min(tokens, prune)
        merged = torch.minimum(pruned, merge) if torch.is_tensor(merge) else min(pruned, merge)
        macs = macs + (pruned - merged) * merged * dim  # the similarity matmul (zero when nothing merges)
        tokens = merged
        macs = macs + 5 * tokens * dim + 2 * tokens * dim * hidden
    return (macs + 5 * tokens * dim + head_macs(model)) / 1e9


def diffrate_gmacs(model: VisionTransformer) -> float:
    """GMACs of the model at its fixed kept counts."""
    return float(_gmacs(model, [(block.prune_kept, block.merge_kept) for block in model.blocks]))


def _search_gmacs(model: VisionTransformer, kept: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Differentiable GMACs of one search forward (``kept``: one pair per searchable block, in order)."""
    searched = iter(kept)
    live = _all_tokens(model)
    return _gmacs(model, [next(searched) if block.searchable else (live, live) for block in model.blocks])


def search_rates(model: VisionTransformer, batches: Iterable[torch.Tensor], target_gmacs: float, *,
                 steps: int, lr: float, flops_weight: float = 5.0) -> dict:
    """Search the kept counts on ``batches`` (normalised images) so GMACs approach ``target_gmacs``."""
    teacher = copy.deepcopy(model).eval()
    set_kept(teacher, [10 ** 9] * len(model.blocks), [10 ** 9] * len(model.blocks))
    was_training = model.training
    model.eval()  # dropout and drop-path off: only the rates learn
    frozen = [p for p in model.parameters() if p.requires_grad]
    for param in frozen:
        param.requires_grad_(False)
    device = next(model.parameters()).device
    searchable = [block for block in model.blocks if block.searchable]
    for block in searchable:  # the proxies live only during the search: the deployed model has none
        block.prune_proxy = RateProxy(model.patch_embed.num_patches, model.num_prefix_tokens).to(device)
        block.merge_proxy = RateProxy(model.patch_embed.num_patches, model.num_prefix_tokens).to(device)
    optimizer = torch.optim.Adam([p for b in searchable for p in (b.prune_proxy.logits, b.merge_proxy.logits)],
                                 lr=lr)
    model.rate_state.searching = True
    started, step = time.perf_counter(), 0
    try:
        while step < steps:
            for images in batches:
                with torch.no_grad():
                    target_features = teacher.forward_head(teacher.forward_features(images), pre_logits=True)
                features = model.forward_head(model.forward_features(images), pre_logits=True)
                distance = 1 - F.cosine_similarity(features, target_features, dim=-1).mean()
                gmacs = _search_gmacs(model, model.rate_state.kept)
                loss = distance + flops_weight * (gmacs / target_gmacs - 1) ** 2
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if step >= steps:
                    break
    finally:
        model.rate_state.searching = False
        for param in frozen:
            param.requires_grad_(True)
        model.train(was_training)
    with torch.no_grad():
        live = _all_tokens(model)
        prune = [int(b.prune_proxy.expected_kept()) if b.searchable else live for b in model.blocks]
        merge = [int(b.merge_proxy.expected_kept()) if b.searchable else live for b in model.blocks]
    for block in searchable:
        del block.prune_proxy, block.merge_proxy
    set_kept(model, prune, merge)
    searched = diffrate_gmacs(model)
    _fit_to_target(model, target_gmacs)
    return {"search_seconds": time.perf_counter() - started, "search_steps": step,
            "search_gmacs": searched, "target_gmacs": target_gmacs}


def _fit_to_target(model: VisionTransformer, target_gmacs: float, tolerance: float = 0.01) -> None:
    """Nudge single blocks' kept counts by one token at a time, greedily, until GMACs are within ``tolerance``
    of the target (the search's straight-through counts land near it, not on it)."""
    prune = [block.prune_kept for block in model.blocks]
    merge = [block.merge_kept for block in model.blocks]

    def error(prune_kept: list[int], merge_kept: list[int]) -> float:
        set_kept(model, prune_kept, merge_kept)
        return abs(diffrate_gmacs(model) / target_gmacs - 1)

    current = error(prune, merge)
    while current > tolerance:
        moves = []
        for index, block in enumerate(model.blocks):
            if block.searchable:
                for step in (-1, 1):
                    new_merge = merge[:index] + [merge[index] + step] + merge[index + 1:]
                    new_prune = prune[:index] + [max(prune[index], merge[index] + step)] + prune[index + 1:]
                    moves.append((error(new_prune, new_merge), new_prune, new_merge))
        best = min(moves, key=lambda move: move[0])
        if best[0] >= current:
            break
        current, prune, merge = best
    set_kept(model, prune, merge)


@harness.register_method("diffrate", compresses=True, order=4, context=("train_data",))
def diffrate(model: nn.Module, compression: object = None, rank: int | None = None, dropout: float = 0.1,
             train_data: Optional[Iterable[torch.Tensor]] = None, search_steps: int = 60,
             search_lr: float = 0.1) -> nn.Module:
    """DiffRate + LoRA: prune/merge counts searched to the GMACs of tome at the same level, then LoRA."""
    target = schedule_gmacs(model, effective_schedule(model, resolve_schedule(model, compression)))
    patch_diffrate(model)
    if compression is not None and not next(model.parameters()).is_meta:
        if train_data is None:
            raise harness.UserError("diffrate searches its rates on training images; pass train_data=<iterable "
                                    "of normalised image batches> (the runner does)")
        facts = search_rates(model, train_data, target, steps=search_steps, lr=search_lr)
        harness.record_info(model, **facts)
    harness.adapt(model, "lora", rank=rank, dropout=dropout)
    record_kept(model)
    return model
