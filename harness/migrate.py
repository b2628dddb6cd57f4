"""Upgrade run files written before records described their method and task (schema 1) to schema 2.

A schema-2 record carries ``method_info`` (roles, display order) and ``task_info`` (suite, group, classes, split
sizes), which the report reads instead of asking the plugin registry. Migration fills in what the registry
knows, once, with the plugins the runs used loaded, and replaces each file atomically; the config, its key and
every measured figure stay as they were.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import registry
from .errors import UserError
from .store import SCHEMA_VERSION, is_run_record, read_json, run_files, write_json_atomic


@dataclass(frozen=True)
class Migration:
    upgraded: list[Path]
    current: list[Path]
    problems: list[str]  # "<file>: <why it was left as it was>"


def migrate(folders: Sequence[Path]) -> Migration:
    """Upgrade every schema-1 run file of ``folders`` in place; a file that cannot be upgraded is left as it
    was and named in ``problems``, and the others go on. The data is not read: what a schema-1 run trained on
    (its split sizes, list files, fingerprint) was never recorded, and today's data may differ, so only what the
    registry knows for certain is added (suite, group, the method's role and order)."""
    upgraded, current, problems = [], [], []
    for folder in folders:
        for path in run_files(Path(folder)):
            record = read_json(path)
            if not is_run_record(record):
                continue  # not ours to upgrade; the report lists such files
            schema = record.get("schema", 1)
            if not isinstance(schema, int) or isinstance(schema, bool):
                problems.append(f"{path}: schema {schema!r} is not a version number; the file is damaged, not "
                                f"upgradable (delete it, or rerun its config)")
                continue
            if schema >= SCHEMA_VERSION:
                current.append(path)
                continue
            config = record["config"]
            try:
                task = registry.get_task(config["task"])
                record.update(schema=SCHEMA_VERSION, method_info=registry.get_method(config["method"]).info(),
                              task_info={"suite": task.suite, "group": task.group, "migrated_from_schema": 1})
            except UserError as exc:
                problems.append(f"{path}: {exc}")
                continue
            write_json_atomic(path, record)
            upgraded.append(path)
    return Migration(upgraded, current, problems)
