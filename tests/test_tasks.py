import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import harness
from harness import registry
from harness.data import make_loader

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


def _write_vtab_task(root: Path, name: str = "eurosat", corrupt: bool = False) -> Path:
    folder = root / name
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for index in range(6):
        path = folder / "images" / f"{index}.png"
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(path)
        lines.append(f"images/{index}.png {index % 3}")
    if corrupt:
        (folder / "images" / "0.png").write_bytes(b"not a png")
    for file in ("train800.txt", "val200.txt", "test.txt"):
        (folder / file).write_text("\n".join(lines) + "\n")
    return folder


def test_vtab_task_loads_from_disk_resized_to_224(tmp_path):
    _write_vtab_task(tmp_path)
    task = registry.get_task("eurosat").fn(tmp_path)
    assert task.num_classes == 10 and len(task.train) == 6
    image, label = task.test[4]
    assert image.shape == (3, 224, 224) and image.dtype == torch.uint8 and int(label) == 1
    images, labels = next(iter(make_loader(task.train_and_val, 4, shuffle=False)))
    assert images.shape == (4, 3, 224, 224)


def test_vtab_folder_aliases_are_found(tmp_path):
    _write_vtab_task(tmp_path, name="oxford_iiit_pet")
    assert len(registry.get_task("oxford_pet").fn(tmp_path).test) == 6


def test_vtab_missing_folder_and_corrupt_image_are_user_errors(tmp_path):
    with pytest.raises(harness.UserError, match="VTAB-1k folder for 'eurosat' not found under"):
        registry.get_task("eurosat").fn(tmp_path)
    _write_vtab_task(tmp_path, corrupt=True)
    task = registry.get_task("eurosat").fn(tmp_path)
    with pytest.raises(harness.UserError, match=r"corrupt image .*0.png .*re-extract or replace"):
        task.train[0]


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
