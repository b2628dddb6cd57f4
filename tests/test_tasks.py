import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import registry

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["digits", "orientation"])
def test_offline_task_has_vtab_split_sizes_and_is_deterministic(name, tmp_path, monkeypatch):
    first = registry.get_task(name).fn(None)
    monkeypatch.setenv("ADAPTBENCH_CACHE", str(tmp_path))  # a cold cache rebuilds from scratch
    second = registry.get_task(name).fn(None)
    assert (len(first.train), len(first.val)) == (800, 200) and len(first.test) >= 500
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.labels, second.test.labels)
    assert first.train.images.shape[1:] == (3, 32, 32) and first.train.images.dtype == torch.uint8
    counts = np.bincount(first.train.labels.numpy(), minlength=first.num_classes)
    assert counts.min() > 0.5 * counts.mean()  # every class present in training


def test_offline_suite_covers_all_three_vtab_groups():
    groups = {registry.get_task(name).group for name in registry.task_selectors()["offline"]}
    assert groups == {"natural", "specialized", "structured"}


def test_missing_hub_weights_offline_is_one_clear_error(tmp_path):
    code = ("import harness, sys\n"
            "try:\n"
            "    harness.create_backbone('vit_tiny_patch16_224.augreg_in21k', 10, pretrained=True)\n"
            "except harness.UserError as exc:\n"
            "    print(exc); sys.exit(3)\n")
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PYTHONPATH": str(REPO), "PATH": ""}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 3, result.stderr
    assert "cannot load pretrained weights for 'vit_tiny_patch16_224.augreg_in21k'" in result.stdout
    assert "--no-pretrained" in result.stdout
