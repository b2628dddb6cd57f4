"""Child process of ``--isolate``: ``python -m harness.isolated [--no-save-adapters] CONFIG_JSON OUT_DIR DEVICE
THREADS DATA_ROOT [PLUGIN ...]`` (THREADS 0: torch's choice)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from . import registry
from .config import RunConfig
from .plan import load_tasks, resolve_device
from .runner import NO_SAVE_ADAPTERS, execute
from .store import STATUS_OK, RunStore


def main(argv: list[str]) -> int:
    save_adapters = argv[:1] != [NO_SAVE_ADAPTERS]
    config_json, out_dir, device, threads, data_root, *plugins = argv if save_adapters else argv[1:]
    if int(threads):
        torch.set_num_threads(int(threads))
    registry.load_plugins(plugins)
    config = RunConfig.from_dict(json.loads(config_json))
    task = load_tasks([config.task], Path(data_root) if data_root else None,
                      selection=config.train.selection)[config.task]
    record = execute(config, task, RunStore(Path(out_dir)), resolve_device(device),
                     lambda line: print(line, flush=True), save_adapters)
    return 0 if record["status"] == STATUS_OK else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
