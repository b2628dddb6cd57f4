"""The words every part of adaptbench shares, defined once: compression levels, method roles and task groups.

- Levels: ``none``, the named levels (``low``, ``high``: data, ``harness/presets/merge_schedules.toml``), and the
  order they sort in. A level can also be a factor (``2.5x``) or a per-block list; see :mod:`harness.compression`.
- Roles: what a method is *for* in the analysis, declared when it registers and read by the report from each run
  record, so the report never needs to know a method by name: a third-party method declared as the small-model
  baseline is paired by the Adverse Compression test exactly as a built-in one would be.
- What a method trains (``adapters`` or ``all``), declared when it registers: a task's recipe can give PEFT and
  full fine-tuning their own learning rates without naming a method.
- Groups: VTAB-1k's three task groups, which sort first; a task's group is otherwise free-form, or none.
"""
from __future__ import annotations

from . import presets

NONE = "none"

REFERENCE = "reference"
SMALL_MODEL_BASELINE = "small-model baseline"
ROLES = {
    REFERENCE: "the uncompressed model that speed-ups divide by (the first in display order when several ran; "
               "without one, the first uncompressed method in display order)",
    SMALL_MODEL_BASELINE: "a smaller backbone fine-tuned to the compressed model's throughput: the partner of "
                          "every compressed method in the Adverse Compression test, never a speed-up reference",
}

# What a method trains, declared when it registers: a task's recipe may give each its own learning rate.
TRAINS = {
    "adapters": "a few parameters on a frozen backbone (LoRA and its relatives, a head, biases): PEFT",
    "all": "every weight of the backbone (full fine-tuning)",
}

VTAB_GROUPS = ("natural", "specialized", "structured")


def named_levels() -> tuple[str, ...]:
    """The levels that have a name, mildest first (as ``merge_schedules.toml`` lists them)."""
    return tuple(presets.load("merge_schedules")["levels"])


def is_uncompressed(level: object) -> bool:
    """``None`` (the Python API's default) and ``"none"`` (the CLI's and the records') both mean no compression."""
    return level is None or level == NONE


def level_rank(level: str) -> tuple[int, str]:
    """Sort key: ``none``, then the named levels mildest first, then any other level by its text."""
    order = (NONE, *named_levels())
    return (order.index(level), "") if level in order else (len(order), str(level))


def group_rank(group: object) -> tuple[int, str]:
    """Sort key: VTAB's groups in VTAB's order, then other groups by name, then no group (None, or NaN in a frame)."""
    if group in VTAB_GROUPS:
        return VTAB_GROUPS.index(group), ""
    return (len(VTAB_GROUPS), str(group)) if isinstance(group, str) else (len(VTAB_GROUPS) + 1, "")
