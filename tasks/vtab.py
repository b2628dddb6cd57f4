"""VTAB-1k from disk, in the layout NOAH's and PYRA's ``get_vtab1k.py`` write: one folder per task under
``--data-root`` (or ``$ADAPTBENCH_DATA``), holding the images and list files of ``relative/path label`` lines.

Two layouts circulate, and a folder may hold both:
- ``train800val200.txt`` + ``test.txt``: what PYRA trains and tests on;
- ``train800.txt`` + ``val200.txt`` + ``test.txt``: needed to select on val200 (``--selection val``).
A run trains on ``train800val200.txt`` when it is there (as PYRA), else on ``train800.txt`` + ``val200.txt``.
The folder names that circulate for each task are in ``vtab.toml`` beside this file. Images are decoded once, at
the backbone's input size (bicubic, straight to the square, no crop, no augmentation, as PYRA), by the harness
(:mod:`harness.data`). Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import harness
from harness.data import ImageList, TaskData, list_identity
from harness.errors import BadOption
from harness.presets import tomllib

BACKBONE = "vit_base_patch16_224.orig_in21k"
LIST_FILES = {"train": "train800.txt", "val": "val200.txt", "trainval": "train800val200.txt", "test": "test.txt"}
with open(Path(__file__).with_suffix(".toml"), "rb") as _handle:
    VTAB_TASKS: dict[str, dict] = tomllib.load(_handle)


def find_task_folder(data_root: Path | None, name: str) -> Path:
    """The first of the task's known folder names that exists under ``data_root``."""
    folders = VTAB_TASKS[name]["folders"]
    if data_root is None:
        raise BadOption(f"VTAB-1k task '{name}' needs its data on disk: pass --data-root (or set "
                        f"ADAPTBENCH_DATA) to the folder holding {name}/ and the other VTAB-1k folders")
    if not data_root.is_dir():
        raise BadOption(f"--data-root {data_root} is not a folder; pass the folder holding the VTAB-1k task folders")
    for folder in folders:
        if (data_root / folder).is_dir():
            return data_root / folder
    raise harness.UserError(f"VTAB-1k folder for '{name}' not found under {data_root} (looked for "
                            f"{', '.join(folders)}); fix --data-root or add the dataset there")


def list_files(folder: Path) -> dict[str, Path]:
    """The list files the folder has, by split; a folder without a test list or any training list is refused."""
    present = {split: folder / file for split, file in LIST_FILES.items() if (folder / file).is_file()}
    trains = "trainval" in present or {"train", "val"} <= set(present)
    if "test" not in present or not trains:
        raise harness.UserError(f"{folder} lacks {LIST_FILES['test'] if 'test' not in present else 'a training list'}"
                                f"; VTAB-1k needs test.txt and train800val200.txt (or train800.txt + val200.txt), "
                                f"the layout get_vtab1k.py writes")
    if "trainval" in present:  # a lone train800.txt or val200.txt is not a layout: PYRA's list is used
        return {split: path for split, path in present.items() if split in ("trainval", "test")
                or {"train", "val"} <= set(present)}
    return present


def load_vtab_task(data_root: Path | None, name: str) -> TaskData:
    """The task's lists (not its images: the harness checks and decodes those); a folder or list that cannot be
    read becomes the task's ``problem``, so its runs are recorded as failed and the other tasks go on."""
    classes = VTAB_TASKS[name]["classes"]
    try:
        folder = find_task_folder(data_root, name)
        lists = list_files(folder)
        splits = {split: ImageList.read(folder, path) for split, path in lists.items()}
    except BadOption:  # no --data-root at all stops everything; anything else fails this task's runs
        raise
    except harness.UserError as exc:
        return TaskData(None, None, None, classes, None, BACKBONE, problem=str(exc))
    identity = {"data_root": str(data_root), **list_identity(folder, lists)}
    return TaskData(splits.get("train"), splits.get("val"), splits["test"], classes, None, BACKBONE,
                    trainval=splits.get("trainval"), identity=identity)


def _register(name: str) -> None:
    def load(data_root: Path | None = None) -> TaskData:
        return load_vtab_task(data_root, name)

    load.__qualname__ = f"vtab_{name}"
    harness.register_task(name, suite="vtab", group=VTAB_TASKS[name]["group"],
                          description=f"VTAB-1k {name} from disk ({VTAB_TASKS[name]['classes']} classes)")(load)


for _name in VTAB_TASKS:
    _register(_name)
