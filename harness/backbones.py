"""Backbones: the micro ViTs registered with timm, the known timm ViTs, what the methods can patch, where
pretrained weights are found on disk, and ``create_backbone``, which never asks the network for them.

The micro ViTs are plain timm ``VisionTransformer`` instances at 32x32 input with patch 4 (64 patch tokens plus
a class token, so token merging has tokens to merge). Their widths keep ViT-S/ViT-B's ratio (half the width,
half the heads, same head size and depth), so the micro pair mirrors the big pair on a CPU.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import timm
import torch
from huggingface_hub.file_download import repo_folder_name
from safetensors import SafetensorError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg, build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._hub import HF_WEIGHTS_NAME, _get_safe_alternatives, hf_split  # timm's own hub file order
from timm.models.vision_transformer import Attention, Block, VisionTransformer, checkpoint_filter_fn
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


def known_backbone_named(name: str) -> BackboneInfo | None:
    """The entry of backbone ``name`` (by its timm name and tag, else by architecture alone), or None."""
    arch = name.split(".")[0]
    return KNOWN_BACKBONES.get(name) or next(
        (info for known, info in KNOWN_BACKBONES.items() if known.split(".")[0] == arch), None)


def known_backbone(model: nn.Module) -> BackboneInfo | None:
    """The entry of ``model``'s backbone, from the timm name and tag it was created with."""
    cfg = model.pretrained_cfg  # every timm model has one
    name = cfg.get("architecture", "")
    return known_backbone_named(f"{name}.{cfg['tag']}" if cfg.get("tag") else name)


def pretrained_cfg(name: str) -> PretrainedCfg | None:
    """timm's pretrained config of ``name`` (None for an architecture it has none for); a tag timm does not know
    is a one-line :class:`UserError` listing the ones it does."""
    try:
        return timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        arch, _ = timm.models.split_model_name_tag(name)
        tags = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
        raise UserError(f"backbone '{name}': timm knows no such pretrained tag; its tags: {tags}") from None


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


MICRO_VITS = ("vit_micro_small_patch4_32", "vit_micro_small_plus_patch4_32", "vit_micro_medium_patch4_32",
              "vit_micro_base_patch4_32")
default_cfgs = generate_default_cfgs({f"{name}.{PRETRAIN_TAG}": _micro_cfg(name) for name in MICRO_VITS})


def shipped_weights(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.safetensors"


def _shipped_files(name: str) -> tuple[Path, Path]:
    """The shipped weights of micro ViT ``name`` and their record (checksum, probe accuracy), both present."""
    record_path, weights_path = WEIGHTS_DIR / f"{name}.json", shipped_weights(name)
    if not record_path.is_file() or not weights_path.is_file():
        raise UserError(f"shipped weights for {name} are missing from {WEIGHTS_DIR}; restore them from git "
                        f"(git checkout -- harness/weights) or rebuild them with python -m harness.pretrain")
    return weights_path, record_path


def verify_shipped_weights(name: str) -> dict:
    """Check the shipped file against the sha256 recorded when it was made; returns that record."""
    weights_path, record_path = _shipped_files(name)
    record = json.loads(record_path.read_text())
    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    if digest != record["sha256"]:
        raise UserError(f"shipped weights {weights_path} are corrupt (sha256 {digest[:12]}..., recorded "
                        f"{record['sha256'][:12]}...); restore them from git or rebuild with python -m harness.pretrain")
    return record


def _create_micro_vit(variant: str, pretrained: bool, **kwargs) -> VisionTransformer:
    shipped = str(shipped_weights(variant))
    overlay = {"file": shipped, **(kwargs.pop("pretrained_cfg_overlay", None) or {})}
    if pretrained and overlay["file"] == shipped:  # another file (--weights) has no recorded checksum to check
        verify_shipped_weights(variant)
    return build_model_with_cfg(VisionTransformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                pretrained_cfg_overlay=overlay, **kwargs)


@register_model
def vit_micro_small_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Micro ViT-S-like backbone for 32x32 images (dim 48, 3 heads, depth 12)."""
    args = dict(img_size=32, patch_size=4, embed_dim=48, depth=12, num_heads=3)
    return _create_micro_vit("vit_micro_small_patch4_32", pretrained, **dict(args, **kwargs))


@register_model
def vit_micro_small_plus_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Micro ViT between S and medium for 32x32 images (dim 56, 4 heads, depth 12): as fast as micro-B under
    token merging at ``high`` (``benchmarks/micro_family.py``), the small model matched to it."""
    args = dict(img_size=32, patch_size=4, embed_dim=56, depth=12, num_heads=4)
    return _create_micro_vit("vit_micro_small_plus_patch4_32", pretrained, **dict(args, **kwargs))


@register_model
def vit_micro_medium_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Micro ViT-Medium-like backbone for 32x32 images (dim 80, 5 heads, depth 12): as fast as micro-B under
    token merging at ``low`` (``benchmarks/micro_family.py``)."""
    args = dict(img_size=32, patch_size=4, embed_dim=80, depth=12, num_heads=5)
    return _create_micro_vit("vit_micro_medium_patch4_32", pretrained, **dict(args, **kwargs))


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
    cfg = pretrained_cfg(name)
    return bool(cfg and cfg.has_weights)


def unsupported_structure(model: nn.Module) -> str | None:
    """What in ``model`` the methods cannot patch, as a phrase after "backbone 'NAME'"; None when nothing.

    LoRA wraps each block's fused ``attn.qkv`` linear; token merging and DiffRate swap the classes of timm's plain
    ``Block`` and ``Attention`` for subclasses with their own forwards (any other block or attention would lose
    what it adds); merging protects a class and a distillation token and nothing else (not register tokens).
    """
    if not isinstance(model, VisionTransformer):
        return f"is a {type(model).__name__}, not a timm VisionTransformer"
    for block in model.blocks:
        if type(block) is not Block:
            return f"has {type(block).__name__} blocks, not timm's plain Block"
        if type(block.attn) is not Attention:
            return f"has {type(block.attn).__name__} attention, not timm's plain Attention"
        if getattr(block.attn, "gate", None) is not None:
            return "has gated attention, which token merging's attention does not compute"
    registers = model.num_prefix_tokens - int(model.cls_token is not None) - int(
        getattr(model, "dist_token", None) is not None)
    if registers:
        return (f"has {registers} register tokens, which token merging would merge (it protects class and "
                f"distillation tokens only)")
    return None


@functools.lru_cache(maxsize=None)
def check_supported(name: str) -> None:
    """Refuse, before any run, names timm does not know and architectures the methods cannot patch
    (:func:`unsupported_structure`), as one line instead of an AttributeError deep in a method."""
    arch, _ = timm.models.split_model_name_tag(name)
    if not timm.is_model(arch):
        known = ", ".join(KNOWN_BACKBONES)
        raise UserError(f"unknown backbone '{name}'; known backbones: {known} (or any timm VisionTransformer name)")
    pretrained_cfg(name)  # a bad tag is refused here too
    with torch.device("meta"):  # shapes only: no memory, no weights
        model = timm.create_model(arch, pretrained=False)
    problem = unsupported_structure(model)
    if problem is not None:
        raise UserError(f"backbone '{name}' {problem}; adaptbench's methods patch timm VisionTransformers of "
                        f"plain Block/Attention blocks (fused qkv), such as the backbones --list names")


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin", ".npz")  # what timm's file loaders read


def _weights_file(path: Path) -> Path:
    """``path`` if it is an existing weights file, else the one-line reason it cannot be."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"--weights {path} does not exist; pass a safetensors file or a timm/torch checkpoint")
    if not path.is_file():
        raise UserError(f"--weights {path} is a folder; pass the weights file in it (safetensors, .pth, .pt, .bin)")
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise UserError(f"--weights {path} is not a weights file timm reads ({', '.join(WEIGHT_SUFFIXES)})")
    return path


def _hf_hub_filenames(cfg: PretrainedCfg) -> list[str]:
    """The files timm's ``load_state_dict_from_hf`` asks the hub for, in its order (``timm/models/_hub.py``):
    ``model.safetensors`` then ``pytorch_model.bin``, or the cfg's own ``hf_hub_filename`` after its safetensors
    twin."""
    filename = cfg.hf_hub_filename or HF_WEIGHTS_NAME
    return [filename] if filename.endswith(".safetensors") else [*_get_safe_alternatives(filename), filename]


def _hf_hub_cached(cfg: PretrainedCfg) -> tuple[Path | None, str]:
    """The cached file of the cfg's hub repo (or None) and where it was looked for, for the message."""
    repo, revision = hf_split(cfg.hf_hub_id)
    cache = huggingface_hub.constants.HF_HUB_CACHE  # read now: tests and users may repoint it after import
    for filename in _hf_hub_filenames(cfg):
        found = huggingface_hub.try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision)
        if isinstance(found, str):  # else None (not cached) or a marker that the hub lacks the file
            return Path(found), ""
    folder = Path(cache) / repo_folder_name(repo_id=repo, repo_type="model")
    return None, f"the Hugging Face cache has no {repo} ({folder})"


def _torch_hub_cached(cfg: PretrainedCfg) -> tuple[Path | None, str]:
    """Where timm's ``download_cached_file`` keeps a ``url`` source, if it is there, and where that is."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
    return (path, "") if path.is_file() else (None, f"torch hub's cache has no {path}")


def _download_hint(name: str) -> str:
    return (f"download once on a machine with network: python -c \"import timm; timm.create_model('{name}', "
            f"pretrained=True)\" then copy the cache folder here, or pass --weights PATH, or --no-pretrained")


def resolve_weights(name: str, weights: Path | None = None) -> Path:
    """The local file the pretrained weights of backbone ``name`` load from, found without network or retries.

    ``weights`` when given (a safetensors file or a timm/torch checkpoint); else the shipped micro weights; else
    timm's own sources as a download left them: the Hugging Face cache for an ``hf_hub_id`` (the files timm
    tries, in its order), torch hub's checkpoint folder for a ``url``. Anything else is a one-line
    :class:`UserError` at once: timm asking the hub instead costs ~46 s of retries per run offline.
    """
    if weights is not None:
        return _weights_file(weights)
    arch, _ = timm.models.split_model_name_tag(name)
    if arch in default_cfgs:
        return _shipped_files(arch)[0]
    cfg = pretrained_cfg(name)
    if cfg is None or not cfg.has_weights:
        raise UserError(f"backbone '{name}' has no pretrained weights in timm, so it would start from a random "
                        f"init; pass --no-pretrained to train it from scratch, or --weights PATH")
    lookups = [lookup(cfg) for lookup, applies in ((_hf_hub_cached, cfg.hf_hub_id), (_torch_hub_cached, cfg.url))
               if applies]
    found = next((path for path, _ in lookups if path is not None), None)
    if found is None:
        where = " and ".join(where for _, where in lookups)
        raise UserError(f"cannot load pretrained weights for '{name}' offline: {where}; {_download_hint(name)}")
    return found


def loads_weights(name: str, pretrained: bool | None, weights: Path | None = None) -> bool:
    """Whether a backbone is created pretrained: ``pretrained``, where None means when weights are given or the
    backbone has them (:func:`has_pretrained_weights`). Weights given with ``pretrained=False`` contradict."""
    if weights is not None and pretrained is False:
        raise UserError(f"weights {weights} were given for '{name}' together with --no-pretrained; drop one")
    if pretrained is None:
        return weights is not None or has_pretrained_weights(name)
    return pretrained


def create_backbone(name: str, num_classes: int, *, pretrained: bool | None = None, img_size: int | None = None,
                    drop_path_rate: float = 0.0, weights: Path | None = None) -> VisionTransformer:
    """Create a timm ViT for ``num_classes`` classes, its pretrained weights read from a local file only.

    ``pretrained`` as :func:`loads_weights` reads it; the weights come from ``weights`` or, without it, from the
    file :func:`resolve_weights` finds, so no creation (a run's, or ``small_peft``'s smaller model's) ever
    waits on the hub. ``img_size`` overrides the input size (timm resamples the position embedding).
    """
    check_supported(name)
    pretrained = loads_weights(name, pretrained, weights)
    kwargs = dict(num_classes=num_classes, drop_path_rate=drop_path_rate)
    if img_size is not None:
        kwargs["img_size"] = img_size
    if pretrained:
        file = resolve_weights(name, weights)
        # An .npz (big_vision) file needs the model's own loader, any other timm's state-dict reader, whatever the
        # cfg's source was (timm 1.0.31 resets custom_load for a file overlay, older timm keeps the cfg's).
        kwargs["pretrained_cfg_overlay"] = dict(file=str(file), custom_load=file.suffix == ".npz")
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError, SafetensorError) as exc:
        if not pretrained:
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load pretrained weights for '{name}' from {file} ({reason[:200]}); pass weights "
                        f"of this architecture with --weights PATH, or --no-pretrained") from exc
    if weights is not None and file.suffix != ".npz":  # the big_vision loader reads every array it needs
        _check_body_loaded(model, name, file)
    model.adaptbench_pretrained = pretrained  # methods that build a second backbone (a smaller one) follow it
    return model


def _check_body_loaded(model: VisionTransformer, name: str, file: Path) -> None:
    """Refuse a weights file lacking some of the model's non-head tensors. timm loads non-strictly whenever the
    head is new, so the file of another model would load as nothing: a silent random init."""
    # timm's reading and ViT renames (DeiT's too: adapt_layer_scale is a no-op for other checkpoints)
    state = checkpoint_filter_fn(timm.models.load_state_dict(str(file)), model, adapt_layer_scale=True)
    classifiers = model.pretrained_cfg.get("classifier") or ()
    heads = tuple(f"{head}." for head in ((classifiers,) if isinstance(classifiers, str) else classifiers))
    missing = [key for key in model.state_dict() if key not in state and not key.startswith(heads)]
    if missing:
        raise UserError(f"--weights {file} lacks {len(missing)} of the tensors of '{name}' (e.g. {missing[0]}); "
                        f"pass weights of this architecture, or --no-pretrained")


def describe_backbones() -> dict[str, str]:
    return {name: info.description for name, info in KNOWN_BACKBONES.items()}


def input_size(model: nn.Module) -> int:
    return model.patch_embed.img_size[0]
