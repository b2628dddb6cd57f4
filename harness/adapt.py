"""The public entry point ``adapt``: apply a registered method to a timm VisionTransformer, in place."""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from . import registry
from .errors import UserError
from .vocabulary import is_uncompressed

ADAPTED_BY = "adaptbench_adapted_by"  # the adapted model's {"method", "compression"}: an adapter file must match it


def adapt(model: nn.Module, method: str, compression: object = None, **options) -> nn.Module:
    """Patch ``model`` (a timm ``VisionTransformer``) in place with ``method`` and return it.

    Like ``tome.patch.timm(model)``, the model's own modules stay timm's: methods wrap or patch them. After this
    call, ``requires_grad`` marks exactly the parameters the method trains. ``compression`` is a level such as
    ``"low"``/``"high"`` for methods that compress (others accept only ``None`` or ``"none"``); ``options`` go
    to the method (e.g. ``rank=16`` for ``lora``).
    """
    spec = registry.get_method(method)
    if not is_uncompressed(compression) and not spec.compresses:
        raise UserError(f"method '{method}' does not compress; use compression none (or pick a compressing method)")
    accepted = inspect.signature(spec.fn).parameters
    unknown = [key for key in options if key not in accepted]
    if unknown:
        valid = [name for name in accepted if name not in ("model", "compression")]
        raise UserError(f"method '{method}' has no option {', '.join(unknown)}; its options: "
                        f"{', '.join(valid) or 'none'}")
    adapted = spec.fn(model, compression=None if is_uncompressed(compression) else compression, **options)
    adapted = model if adapted is None else adapted
    setattr(adapted, ADAPTED_BY, {"method": method, "compression": compression})
    return adapted


def record_info(model: nn.Module, **facts: object) -> None:
    """Facts a method wants in the run's result row (e.g. its merge schedule), kept on the model."""
    info = getattr(model, "adaptbench_info", None)
    if info is None:
        info = model.adaptbench_info = {}
    info.update(facts)


def set_trainable(model: nn.Module, is_trainable: Callable[[str], bool]) -> None:
    """Train exactly the parameters whose qualified name ``is_trainable`` accepts, plus the classifier head."""
    head_prefixes = ("head.", "head_dist.")
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable(name) or name.startswith(head_prefixes))


def set_lr_scale(module: nn.Module, scale: float) -> None:
    """Train ``module``'s parameters at ``scale`` times the scheduled learning rate (e.g. PYRA's own lr)."""
    for param in module.parameters():
        param.lr_scale = scale


def merge_for_inference(model: nn.Module) -> nn.Module:
    """Fold every mergeable adapter (a module with a ``merged()`` method, e.g. LoRA) into plain layers, in place.

    Methods whose adapters cost nothing at inference (LoRA) are measured as deployed: merged.
    """
    for name, child in list(model.named_children()):
        if hasattr(child, "merged") and callable(child.merged):
            setattr(model, name, child.merged())
        else:
            merge_for_inference(child)
    return model
