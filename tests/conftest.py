"""Shared fixtures: a private data cache, and a plugin file written outside the repository."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

# Generated task data goes to a throw-away cache, never the user's ~/.cache, and the cache goes with the session.
if "ADAPTBENCH_CACHE" not in os.environ:
    os.environ["ADAPTBENCH_CACHE"] = tempfile.mkdtemp(prefix="adaptbench-test-cache-")
    atexit.register(shutil.rmtree, os.environ["ADAPTBENCH_CACHE"], ignore_errors=True)

# Sweeps here time tiny models only to have figures: without the 1 s warm-up of each measurement the suite takes
# about a fifth less time (566 s -> 443 s on the CI VM). Subprocesses inherit it; a test of the default protocol
# removes it.
os.environ.setdefault("ADAPTBENCH_BENCH_PRESET", "quick")

EXTERNAL_PLUGIN = textwrap.dedent('''
    """A third-party plugin: one task and one method, registered without touching adaptbench."""
    import numpy as np
    import harness


    @harness.register_method("bitfit")
    def bitfit(model, compression=None):
        """BitFit: train only the biases (and the head)."""
        harness.set_trainable(model, lambda name: name.endswith(".bias"))
        return model


    @harness.register_task("tiny_bright", suite="tiny", group="natural")
    def tiny_bright(data_root=None):
        """Bright or dark 16x16 images: a task any model learns in one epoch."""
        rng = np.random.default_rng(0)

        def split(n):
            labels = np.arange(n) % 2
            images = rng.integers(0, 100, (n, 3, 16, 16)) + 150 * labels[:, None, None, None]
            return harness.ArrayDataset(images.astype(np.uint8), labels)

        return harness.TaskData(split(48), split(16), split(32), num_classes=2, image_size=16,
                                default_backbone="vit_micro_small_patch4_32", default_epochs=1)
''')


@pytest.fixture(scope="session")
def plugin_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("outside_repo") / "my_plugin.py"
    path.write_text(EXTERNAL_PLUGIN)
    return path


@pytest.fixture(scope="session")
def loaded_plugin(plugin_file: Path) -> Path:
    import harness

    harness.load_plugins([str(plugin_file)])
    return plugin_file


@pytest.fixture
def own_registry(monkeypatch):
    """The registry as it is now, restored after the test, so that a test's plugins do not outlive it."""
    from harness import registry

    for name in ("_METHODS", "_TASKS", "_loaded_sources"):
        monkeypatch.setattr(registry, name, type(getattr(registry, name))(getattr(registry, name)))


def tiny_vit(**kwargs):
    """A 16x16, depth-2 timm ViT for fast tests."""
    import timm

    args = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    return timm.create_model("vit_base_patch16_224", pretrained=False, **{**args, **kwargs})


def run_record(method: str = "lora", task: str = "count", seed: int = 0, acc: float = 50.0,
               compression: str = "none", *, backbone: str = "vit_micro_base_patch4_32", device_name: str = "CPU A",
               status: str = "ok", role=..., order=..., suite: str = "offline", group=...,
               acc_last: float | None = None, at_best_val: float | None = None, **metrics) -> dict:
    """A minimal valid run record (schema 2), shaped as the runner writes it, with round numbers to check by hand.

    ``acc`` is ``test_acc_best``, ``acc_last`` ``test_acc_last`` (default: ``acc``). With ``at_best_val`` the
    run trained with selection "val": ``test_acc_at_best_val`` is it and ``val_acc_best`` 10 points more;
    without, both are None, as the runner writes them for selection "test".
    ``method_info`` has the built-in methods' compresses flag, role and order (another name: compressing when
    run at a level, no role, no order); ``task_info`` the offline tasks' groups (another task: no group).
    ``role``, ``order`` and ``group`` override them (None included); ``suite`` names the task's suite.
    """
    import hashlib
    import json

    from harness.vocabulary import REFERENCE, SMALL_MODEL_BASELINE

    builtin = {"full_ft": (False, None, 0), "lora": (False, REFERENCE, 1), "tome": (True, None, 2),
               "pyra": (True, None, 3), "diffrate": (True, None, 4), "small_peft": (True, SMALL_MODEL_BASELINE, 5)}
    offline_groups = {"digits": "natural", "photos": "natural", "cells": "specialized", "count": "structured",
                      "orientation": "structured"}
    compresses, builtin_role, builtin_order = builtin.get(method, (compression != "none", None, None))
    selection = "test" if at_best_val is None else "val"
    config = {"method": method, "task": task, "backbone": backbone, "seed": seed, "compression": compression,
              "pretrained": True, "device": "cpu", "train": {"epochs": 3, "lr": 0.001, "selection": selection},
              "measure": {"batches": [64]}}
    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    values = {"test_acc_best": acc, "test_acc_last": acc if acc_last is None else acc_last,
              "test_acc_at_best_val": at_best_val, "val_acc_best": None if at_best_val is None else at_best_val + 10,
              "infer_img_per_s": 1000.0, "gmacs": 0.1,
              "tunable_params": 10_000, "tunable_pct": 1.0, "total_params": 1_000_000, "train_peak_mem_mb": 100.0,
              "curve": [{"epoch": 1, "test_acc": acc}], **metrics}
    record = {"schema": 2, "key": key, "config": config, "status": status, "wall_seconds": 1.0,
              "method_info": {"compresses": compresses, "role": builtin_role if role is ... else role,
                              "order": builtin_order if order is ... else order},
              "task_info": {"suite": suite, "group": offline_groups.get(task) if group is ... else group,
                            "num_classes": 10, "split_sizes": {"train": 800, "val": 200, "test": 500}},
              "environment": {"device": "cpu", "device_name": device_name, "torch": "2.x", "git_commit": "abc123",
                              "git_dirty": False, "date": "2026-01-01T00:00:00+00:00"}}
    if status == "ok":
        record["metrics"] = values
    elif status == "failed":
        record["reason"] = "loss became nan at epoch 1"
    return record


def write_runs(folder: Path, records) -> Path:
    """Each record as ``<method>-<compression>-<task>-s<seed>-<key>.json`` in ``folder``, as the runner names them."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    for record in records:
        config = record["config"]
        name = f"{config['method']}-{config['compression']}-{config['task']}-s{config['seed']}-{record['key']}.json"
        (folder / name).write_text(json.dumps(record))
    return folder
