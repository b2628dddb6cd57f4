"""Child process of ``--isolate``: ``python -m harness.isolated CONFIG_JSON OUT_DIR DATA_ROOT [PLUGIN ...]``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from . import registry
from .config import RunConfig
from .runner import execute, load_tasks, resolve_device


def main(argv: list[str]) -> int:
    config_json, out_dir, data_root, *plugins = argv
    registry.load_plugins(plugins)
    config = RunConfig.from_dict(json.loads(config_json))
    task = load_tasks([config.task], Path(data_root) if data_root else None)[config.task]
    record = execute(config, task, Path(out_dir), resolve_device(config.device), lambda line: print(line, flush=True))
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
