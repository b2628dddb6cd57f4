"""Backbones: the micro ViTs registered with timm, the known timm ViTs, and ``create_backbone``.

The micro ViTs are plain timm ``VisionTransformer`` instances at 32x32 input with patch 4 (64 patch tokens plus
a class token, so token merging has tokens to merge). Their widths keep ViT-S/ViT-B's ratio (half the width,
half the heads, same head size and depth), so the micro pair mirrors the big pair on a CPU.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from . import presets
from .errors import UserError

def lora_rank_for(embed_dim: int) -> int:
    """PYRA's rank for ViT-S/B/L widths (``backbones.toml``); otherwise about one rank per 96 channels (PYRA's
    own ratio), at least 4 so that micro backbones keep enough capacity to adapt."""
    ranks = presets.load("backbones")["lora_rank_by_width"]
    return ranks.get(str(embed_dim), max(4, round(embed_dim / 96)))


@dataclass(frozen=True)
class BackboneInfo:
    """A backbone adaptbench knows by name (``harness/presets/backbones.toml``): its family and size order."""

    name: str
    family: str
    size_rank: int  # larger is bigger within a family
    description: str


KNOWN_BACKBONES: dict[str, BackboneInfo] = {name: BackboneInfo(name, **fields)
                                            for name, fields in presets.load("backbones")["backbones"].items()}


def known_backbone(model: nn.Module) -> BackboneInfo | None:
    """The entry of ``model``'s backbone (by its timm name and tag, else by architecture alone), or None."""
    cfg = model.pretrained_cfg  # every timm model has one
    name = cfg.get("architecture", "")
    tagged = f"{name}.{cfg['tag']}" if cfg.get("tag") else name
    return KNOWN_BACKBONES.get(tagged) or next(
        (info for known, info in KNOWN_BACKBONES.items() if known.split(".")[0] == name), None)


def smaller_in_family(info: BackboneInfo) -> list[BackboneInfo]:
    """The known backbones of ``info``'s family that are smaller than it, largest first."""
    smaller = [other for other in KNOWN_BACKBONES.values()
               if other.family == info.family and other.size_rank < info.size_rank]
    return sorted(smaller, key=lambda other: -other.size_rank)


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PRETRAIN_CLASSES = 300  # classes of the formula-driven pretraining corpus (harness/pretrain.py)
PRETRAIN_TAG = f"fdsl{PRETRAIN_CLASSES}"  # formula-driven supervised learning


def _micro_cfg(name: str) -> dict:
    """Weights from ``python -m harness.pretrain``, a local file under ``harness/weights/``:
    ``timm.create_model(name, pretrained=True)`` needs no network and verifies the file's sha256 first."""
    return dict(file=str(WEIGHTS_DIR / f"{name}.safetensors"), num_classes=PRETRAIN_CLASSES, input_size=(3, 32, 32),
                mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="patch_embed.proj",
                classifier="head", license="apache-2.0")


default_cfgs = generate_default_cfgs({
    f"vit_micro_small_patch4_32.{PRETRAIN_TAG}": _micro_cfg("vit_micro_small_patch4_32"),
    f"vit_micro_base_patch4_32.{PRETRAIN_TAG}": _micro_cfg("vit_micro_base_patch4_32"),
})


def shipped_weights(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.safetensors"


def verify_shipped_weights(name: str) -> dict:
    """Check the shipped file against the sha256 recorded when it was made; returns that record."""
    record_path, weights_path = WEIGHTS_DIR / f"{name}.json", shipped_weights(name)
    if not record_path.is_file() or not weights_path.is_file():
        raise UserError(f"shipped weights for {name} are missing from {WEIGHTS_DIR}; restore them from git "
                        f"(git checkout -- harness/weights) or rebuild them with python -m harness.pretrain")
    record = json.loads(record_path.read_text())
    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    if digest != record["sha256"]:
        raise UserError(f"shipped weights {weights_path} are corrupt (sha256 {digest[:12]}..., recorded "
                        f"{record['sha256'][:12]}...); restore them from git or rebuild with python -m harness.pretrain")
    return record


def _create_micro_vit(variant: str, pretrained: bool, **kwargs) -> VisionTransformer:
    if pretrained:
        verify_shipped_weights(variant)
    overlay = {**(kwargs.pop("pretrained_cfg_overlay", None) or {}), "file": str(shipped_weights(variant))}
    return build_model_with_cfg(VisionTransformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                pretrained_cfg_overlay=overlay, **kwargs)


@register_model
def vit_micro_small_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Micro ViT-S-like backbone for 32x32 images (dim 48, 3 heads, depth 12)."""
    args = dict(img_size=32, patch_size=4, embed_dim=48, depth=12, num_heads=3)
    return _create_micro_vit("vit_micro_small_patch4_32", pretrained, **dict(args, **kwargs))


@register_model
def vit_micro_base_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Micro ViT-B-like backbone for 32x32 images (dim 96, 6 heads, depth 12)."""
    args = dict(img_size=32, patch_size=4, embed_dim=96, depth=12, num_heads=6)
    return _create_micro_vit("vit_micro_base_patch4_32", pretrained, **dict(args, **kwargs))


def has_pretrained_weights(name: str) -> bool:
    """Whether weights for ``name`` can be had: shipped files for the micro ViTs, else timm's sources."""
    arch, _ = timm.models.split_model_name_tag(name)
    if arch in default_cfgs:
        return shipped_weights(arch).is_file()
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    return bool(cfg and cfg.has_weights)


@functools.lru_cache(maxsize=None)
def check_backbone_name(name: str) -> None:
    """Refuse names timm does not know and models that are not ViTs, before any run starts."""
    arch, _ = timm.models.split_model_name_tag(name)
    if not timm.is_model(arch):
        known = ", ".join(KNOWN_BACKBONES)
        raise UserError(f"unknown backbone '{name}'; known backbones: {known} (or any timm VisionTransformer name)")
    with torch.device("meta"):  # shapes only: no memory, no weights
        model = timm.create_model(arch, pretrained=False)
    if not isinstance(model, VisionTransformer):
        raise UserError(f"backbone '{name}' is a {type(model).__name__}, not a timm VisionTransformer; "
                        f"adaptbench methods patch timm ViTs")


def create_backbone(name: str, num_classes: int, *, pretrained: bool | None = None, img_size: int | None = None,
                    drop_path_rate: float = 0.0) -> VisionTransformer:
    """Create a timm ViT for ``num_classes`` classes.

    ``pretrained=None`` loads weights when timm knows a source for them; ``img_size`` overrides the input size
    (timm resamples the position embedding). Missing weights offline become a one-line :class:`UserError`.
    """
    check_backbone_name(name)
    if pretrained is None:
        pretrained = has_pretrained_weights(name)
    kwargs = dict(num_classes=num_classes, drop_path_rate=drop_path_rate)
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:  # hub errors subclass these
        if not pretrained:
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise UserError(f"cannot load pretrained weights for '{name}' ({type(exc).__name__}"
                        f"{', HF_HUB_OFFLINE is set' if offline else ''}); download them once on a machine with "
                        f"network into the Hugging Face cache, or pass --no-pretrained") from exc
    model.adaptbench_pretrained = pretrained  # methods that build a second backbone (a smaller one) follow it
    return model


def describe_backbones() -> dict[str, str]:
    return {name: info.description for name, info in KNOWN_BACKBONES.items()}


def input_size(model: nn.Module) -> int:
    return model.patch_embed.img_size[0]
