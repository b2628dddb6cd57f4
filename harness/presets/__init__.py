"""Presets as data: the TOML files beside this module, read with the standard ``tomllib``.

``timing.toml`` (how inference is timed), ``merge_schedules.toml`` (compression levels and per-block merge
schedules), ``backbones.toml`` (the backbones adaptbench knows by name, their families and LoRA ranks),
``defaults.toml`` (what the command line runs when it is told nothing) and ``paper/*.toml`` (whole published
set-ups, ``--preset``: what to run and the recipe; and, where a preset has them, the figures its paper reports,
``[published]``, for ``report --paper``). Each value carries a comment saying where it comes from; code reads
them through :func:`load` and derives its choices from them, so a preset and the CLI can never drift apart.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from ..errors import UserError

PRESETS_DIR = Path(__file__).resolve().parent


PAPER_DIR = "paper"


def paper_preset_names() -> list[str]:
    """The paper presets' names, their files' stems, read without reading the files (the command line lists them
    as it is built, before it can report a file it cannot read)."""
    return [path.stem for path in sorted((PRESETS_DIR / PAPER_DIR).glob("*.toml"))]


def paper_presets() -> dict[str, dict]:
    """Every paper preset by name (its file's stem), as its file says."""
    return {name: load(f"{PAPER_DIR}/{name}") for name in paper_preset_names()}


def published_presets() -> list[str]:
    """The paper presets that list the paper's own figures (a ``[published]`` table), for ``report --paper``."""
    return [name for name, preset in paper_presets().items() if "published" in preset]


@functools.cache
def load(name: str) -> dict:
    """The contents of ``<name>.toml`` (cached: presets are read-only at run time); a file that is not TOML is a
    :class:`UserError` naming it and where."""
    with open(PRESETS_DIR / f"{name}.toml", "rb") as handle:
        try:
            return tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
            raise UserError(f"harness/presets/{name}.toml is not valid TOML: {exc}; mend it there") from None
