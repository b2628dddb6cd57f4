"""Compression levels for token-reducing methods: ``none | low | high | [r1,r2,...] | <N>x``.

``low`` and ``high`` are the PYRA code's per-block merge schedules for ViT-B/16, ViT-L/16 and DeiT-B distilled.
For any other backbone (e.g. the micro ViTs) they are derived to give the same GMACs reductions as ViT-B/16's
presets (2.00x and 3.46x). Both, and the shape a derived schedule takes, are data:
``harness/presets/merge_schedules.toml``. ``<N>x`` finds a decreasing schedule that reaches N times fewer GMACs.
GMACs here are computed in closed form (:func:`schedule_gmacs`), which a test checks against the counter.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from timm.models.vision_transformer import VisionTransformer

from . import presets
from .errors import UserError
from .vocabulary import is_uncompressed, named_levels
from .token_merging import effective_schedule



@dataclass(frozen=True)
class ScheduleKey:
    """What picks one of the original code's schedules: depth, patch tokens and a distillation token."""

    depth: int
    patch_tokens: int
    distill_token: bool

    @classmethod
    def of(cls, model: VisionTransformer) -> "ScheduleKey":
        return cls(len(model.blocks), model.patch_embed.num_patches, getattr(model, "dist_token", None) is not None)


def _schedules() -> dict[ScheduleKey, dict[str, list[int]]]:
    return {ScheduleKey(entry["depth"], entry["patch_tokens"], entry["distill_token"]):
            {level: entry[level] for level in named_levels()} for entry in presets.load("merge_schedules")["schedules"]}


def _level(name: str) -> dict:
    return presets.load("merge_schedules")["levels"][name]


def schedule_gmacs(model: VisionTransformer, schedule: list[int] | None = None) -> float:
    """GMACs of one image through ``model`` merging ``schedule[i]`` tokens in block i (fvcore convention).

    Counts what :func:`harness.measure.count_gmacs` counts: patch-embedding conv, LayerNorms (5 per element),
    qkv/proj/MLP linears, the two attention matmuls, ToMe's matching matmul, and the heads (:func:`head_macs`).
    """
    schedule = schedule or [0] * len(model.blocks)
    dim = model.embed_dim
    head_dim = model.blocks[0].attn.head_dim
    hidden = model.blocks[0].mlp.fc1.out_features
    patches = model.patch_embed.num_patches
    tokens = patches + model.num_prefix_tokens
    in_chans = model.patch_embed.proj.in_channels
    macs = patches * in_chans * math.prod(model.patch_embed.patch_size) * dim
    for r in effective_schedule(model, schedule):
        macs += 5 * tokens * dim + 4 * tokens * dim * dim + 2 * tokens * tokens * dim
        if r > 0:
            macs += math.ceil(tokens / 2) * (tokens // 2) * head_dim
        tokens -= r
        macs += 5 * tokens * dim + 2 * tokens * dim * hidden
    return (macs + 5 * tokens * dim + head_macs(model)) / 1e9


def head_macs(model: VisionTransformer) -> int:
    """MACs of the classifier: the head on the class token plus, on DeiT distilled, ``head_dist`` on its token."""
    heads = (model.head, getattr(model, "head_dist", None))
    return model.embed_dim * sum(getattr(head, "out_features", 0) for head in heads)


def _shape_weights(depth: int) -> np.ndarray:
    """The ``decreasing_profile`` schedule (ViT-B/16's high) over relative depth, resampled to ``depth`` blocks."""
    data = presets.load("merge_schedules")
    source = data["decreasing_profile"]
    entry = next(entry for entry in data["schedules"] if entry["backbone"] == source["backbone"])
    profile = np.asarray(entry[source["level"]], dtype=float)
    return np.interp(np.linspace(0, 1, depth), np.linspace(0, 1, len(profile)), profile) / profile[0]


def _closest(model: VisionTransformer, candidates: list[list[int]], reduction: float) -> list[int]:
    full = schedule_gmacs(model)
    return min(candidates, key=lambda schedule: abs(full / schedule_gmacs(model, schedule) - reduction))


def decreasing_schedule(model: VisionTransformer, reduction: float) -> list[int]:
    """The decreasing schedule (ViT-B/16 high's profile, scaled) whose GMACs reduction is closest to ``reduction``."""
    weights = _shape_weights(len(model.blocks))
    tokens = model.patch_embed.num_patches
    candidates = [effective_schedule(model, [int(round(scale * w)) for w in weights])
                  for scale in np.linspace(0, tokens, 8 * tokens + 1)]
    best = _closest(model, candidates, reduction)
    reached = schedule_gmacs(model) / schedule_gmacs(model, best)
    if abs(reached - reduction) / reduction > 0.05:
        most = schedule_gmacs(model) / schedule_gmacs(model, candidates[-1])
        raise UserError(f"compression {reduction:g}x is out of reach by token merging on this backbone "
                        f"(from 1x to about {most:.2f}x); pick a smaller factor")
    return best


def constant_schedule(model: VisionTransformer, reduction: float) -> list[int]:
    """``[r] * (depth - 1) + [r_last]`` (the shape of ViT-B/16's low preset) closest to ``reduction``."""
    depth, tokens = len(model.blocks), model.patch_embed.num_patches
    candidates = [effective_schedule(model, [r] * (depth - 1) + [last])
                  for r in range(tokens // 2 + 1) for last in range(max(0, r - 8), r + 1)]
    return _closest(model, candidates, reduction)


_SHAPES = {"constant": constant_schedule, "decreasing": decreasing_schedule}


def resolve_schedule(model: VisionTransformer, compression: object) -> list[int]:
    """Per-block merge counts for a compression level (see module docstring); ``None``/``none`` merges nothing."""
    depth = len(model.blocks)
    if is_uncompressed(compression):
        return [0] * depth
    if isinstance(compression, (list, tuple)):
        schedule = [int(r) for r in compression]
    elif isinstance(compression, str) and compression in named_levels():
        original = _schedules().get(ScheduleKey.of(model))
        if original is not None:
            return list(original[compression])
        level = _level(compression)
        return _SHAPES[level["shape"]](model, level["target_reduction"])
    elif isinstance(compression, str) and re.fullmatch(r"\d+(\.\d+)?x", compression):
        factor = float(compression[:-1])
        if factor < 1:
            raise UserError(f"compression {compression} is below 1x; use a factor of at least 1x")
        return decreasing_schedule(model, factor)
    elif isinstance(compression, str) and re.fullmatch(r"\[?\s*\d+(\s*,\s*\d+)*\s*\]?", compression):
        schedule = [int(r) for r in re.findall(r"\d+", compression)]
    else:
        raise UserError(f"unknown compression '{compression}'; use none, {', '.join(named_levels())}, a factor "
                        f"such as 2.5x or a per-block list such as {_list_example(depth, 8)}")
    if len(schedule) != depth:
        example = _list_example(depth, schedule[0] if schedule else 8)
        raise UserError(f"compression list has {len(schedule)} entries but the backbone has {depth} blocks; "
                        f"give one r per block, in brackets, such as {example}")
    return schedule


def _list_example(depth: int, r: int) -> str:
    """A per-block list of ``depth`` entries, quoted as ``--compression`` takes it whole: bracketed, because
    commas outside brackets separate levels (``16,16`` is two levels of one entry each)."""
    return f"'[{','.join([str(r)] * depth)}]'"
