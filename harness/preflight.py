"""Preflight: every backbone a plan needs is checked once before any run starts, and its weights found locally.

Without it, each run found out for itself: an unsupported architecture as an ``AttributeError`` inside a method,
missing weights offline after ~46 s of hub retries (76 runs of the card line: an hour before the last failed),
and a ViT without pretrained weights silently as a random init.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .backbones import check_supported, resolve_weights
from .errors import UserError


def preflight(backbones: Sequence[str], pretrained: bool | None, weights: Path | None = None, *,
              also: Sequence[str] = ()) -> dict[str, Path | None]:
    """The local weights file of each distinct backbone (None: random init), after checking the methods can
    patch it; raises a one-line :class:`UserError` for the first that fails.

    ``pretrained`` is the command line's: False starts every backbone random; True and None (the default,
    "pretrained when the backbone has weights") both need a local file, so a backbone timm has no weights for
    is refused unless the caller says False (a random init is never silent). ``weights`` is the file for the
    one backbone of ``backbones``. ``also`` names backbones the runs create besides them (``small_peft``'s
    smaller model): they follow ``pretrained`` with weights from the local caches, never from ``weights``.
    """
    distinct = list(dict.fromkeys(backbones))
    if weights is not None and pretrained is False:
        raise UserError("--weights and --no-pretrained contradict each other; drop one")
    if weights is not None and len(distinct) > 1:
        raise UserError(f"--weights fits one backbone, but the plan uses {', '.join(distinct)}; pick one with "
                        f"--backbone NAME")
    found = {name: _weights_for(name, pretrained, weights) for name in distinct}
    found.update({name: _weights_for(name, pretrained, None) for name in also if name not in found})
    return found


def _weights_for(name: str, pretrained: bool | None, weights: Path | None) -> Path | None:
    check_supported(name)
    return None if pretrained is False else resolve_weights(name, weights)
