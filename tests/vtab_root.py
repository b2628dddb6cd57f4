"""A fake VTAB-1k root in the layout NOAH's and PYRA's get_vtab1k.py write: ``<task>/images/<split>/<i:06d>.jpg``
and list files of ``images/<split>/<i:06d>.jpg label`` lines, with tiny images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from harness.presets import tomllib

REPO = Path(__file__).resolve().parent.parent
with open(REPO / "tasks" / "vtab.toml", "rb") as handle:
    TASKS = tomllib.load(handle)
SPLIT_SIZES = {"train800": 8, "val200": 4, "test": 6}
# Folder names other than ours, as other codebases write them.
VARIANT_FOLDERS = {"cifar100": "cifar", "oxford_pet": "oxford_iiit_pet", "svhn": "svhn_cropped",
                   "clevr_count": "clevr_count_all", "dsprites_loc": "dsprites_location", "eurosat": "eurosat_rgb"}
PYRA_ONLY = "dtd"  # a task with only train800val200.txt + test.txt, the two files PYRA reads


def write_task(root: Path, name: str, folder: str | None = None, pyra_only: bool = False, seed: int = 0,
               sizes: dict[str, int] = SPLIT_SIZES, side: int = 12) -> Path:
    folder_path = root / (folder or name)
    rng = np.random.default_rng(seed)
    classes = TASKS[name]["classes"]
    lines: dict[str, list[str]] = {}
    for split, count in sizes.items():
        (folder_path / "images" / split).mkdir(parents=True, exist_ok=True)
        lines[split] = []
        for index in range(count):
            relative = f"images/{split}/{index:06d}.jpg"
            Image.fromarray(rng.integers(0, 255, (side, side - 2, 3), dtype=np.uint8)).save(folder_path / relative)
            lines[split].append(f"{relative} {index % classes}")
    files = {"train800val200.txt": lines["train800"] + lines["val200"], "test.txt": lines["test"]}
    if not pyra_only:
        files.update({"train800.txt": lines["train800"], "val200.txt": lines["val200"]})
    for file, content in files.items():
        (folder_path / file).write_text("\n".join(content) + "\n")
    return folder_path


def make_vtab_root(root: Path, sizes: dict[str, int] = SPLIT_SIZES, side: int = 12) -> Path:
    """All 19 tasks, several under other folder names, one with PYRA's two files only."""
    for name in TASKS:
        write_task(root, name, VARIANT_FOLDERS.get(name), pyra_only=name == PYRA_ONLY, sizes=sizes, side=side)
    return root
