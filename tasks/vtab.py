"""VTAB-1k from disk, in the layout PYRA and NOAH use: ``<data-root>/<task>/{train800,val200,test}.txt``.

Each list file has ``relative/image/path label`` lines. Images are resized straight to 224x224 (bicubic, no
crop, no augmentation), as in PYRA's scripts. Nothing is downloaded: point ``--data-root`` (or
``$ADAPTBENCH_DATA``) at the folder holding the 19 task folders.
"""
from __future__ import annotations

from pathlib import Path

import harness
from harness.data import ImageListDataset, TaskData

IMAGE_SIZE = 224
BACKBONE = "vit_base_patch16_224.orig_in21k"
SPLIT_FILES = {"train": "train800.txt", "val": "val200.txt", "test": "test.txt"}

# name: (group, classes, other folder names seen in the wild)
VTAB_TASKS: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "cifar100": ("natural", 100, ("cifar",)),
    "caltech101": ("natural", 102, ()),
    "dtd": ("natural", 47, ()),
    "oxford_flowers102": ("natural", 102, ()),
    "oxford_pet": ("natural", 37, ("oxford_iiit_pet",)),
    "svhn": ("natural", 10, ()),
    "sun397": ("natural", 397, ()),
    "patch_camelyon": ("specialized", 2, ()),
    "eurosat": ("specialized", 10, ()),
    "resisc45": ("specialized", 45, ()),
    "diabetic_retinopathy": ("specialized", 5, ()),
    "clevr_count": ("structured", 8, ()),
    "clevr_dist": ("structured", 6, ()),
    "dmlab": ("structured", 6, ()),
    "kitti": ("structured", 4, ()),
    "dsprites_loc": ("structured", 16, ()),
    "dsprites_ori": ("structured", 16, ()),
    "smallnorb_azi": ("structured", 18, ()),
    "smallnorb_ele": ("structured", 9, ()),
}


def find_task_folder(data_root: Path | None, name: str, aliases: tuple[str, ...]) -> Path:
    if data_root is None:
        raise harness.UserError(f"VTAB-1k task '{name}' needs its data on disk: pass --data-root (or set "
                                f"ADAPTBENCH_DATA) to the folder holding {name}/ and the other VTAB-1k folders")
    for folder in (name, *aliases):
        if (data_root / folder).is_dir():
            return data_root / folder
    raise harness.UserError(f"VTAB-1k folder for '{name}' not found under {data_root} (looked for "
                            f"{', '.join((name, *aliases))}); fix --data-root or add the dataset there")


def load_vtab_task(data_root: Path | None, name: str) -> TaskData:
    group, num_classes, aliases = VTAB_TASKS[name]
    folder = find_task_folder(data_root, name, aliases)
    missing = [file for file in SPLIT_FILES.values() if not (folder / file).is_file()]
    if missing:
        raise harness.UserError(f"{folder} lacks {', '.join(missing)}; VTAB-1k needs "
                                f"{', '.join(SPLIT_FILES.values())} (NOAH/PYRA layout)")
    splits = {split: ImageListDataset(folder, folder / file, IMAGE_SIZE) for split, file in SPLIT_FILES.items()}
    return TaskData(splits["train"], splits["val"], splits["test"], num_classes, IMAGE_SIZE, BACKBONE)


def _register(name: str) -> None:
    group = VTAB_TASKS[name][0]

    def load(data_root: Path | None = None) -> TaskData:
        return load_vtab_task(data_root, name)

    load.__qualname__ = f"vtab_{name}"
    harness.register_task(name, suite="vtab", group=group,
                          description=f"VTAB-1k {name} from disk ({VTAB_TASKS[name][1]} classes)")(load)


for _name in VTAB_TASKS:
    _register(_name)
