"""A fake VTAB-1k root, to try the card line (``python run.py --methods pyra,tome --tasks vtab``) without the data.

    python benchmarks/vtab_fake_root.py ROOT [--train 800 --val 200 --test 200] [--side 48] [--plant-bad]

All 19 tasks in the layout NOAH's and PYRA's get_vtab1k.py write (random JPEGs; several folders under the other
names that circulate; one task with only PYRA's two list files). ``--plant-bad`` then damages eight tasks, one
way each (empty list, label out of range, missing images, a truncated image, a malformed line, a missing
folder), and prints what was planted where, so the run's one-line reasons can be checked against it.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from vtab_root import VARIANT_FOLDERS, make_vtab_root  # noqa: E402  (the tests' builder: one definition of the layout)

PLANTED = {  # task: (what is wrong, how to plant it in its folder)
    "resisc45": ("empty test.txt", lambda f: (f / "test.txt").write_text("")),
    "kitti": ("empty train800.txt", lambda f: (f / "train800.txt").write_text("")),
    "dmlab": ("label 6 of 6 classes in test.txt, line 3",
              lambda f: _replace_line(f / "test.txt", 3, "images/test/000002.jpg 6")),
    "smallnorb_ele": ("label 47 of 9 classes in train800.txt, line 2",
                      lambda f: _replace_line(f / "train800.txt", 2, "images/train800/000001.jpg 47")),
    "sun397": ("2 test images deleted", lambda f: [(f / f"images/test/00000{i}.jpg").unlink() for i in (1, 4)]),
    "caltech101": ("a truncated test JPEG", lambda f: _truncate(f / "images/test/000003.jpg")),
    "patch_camelyon": ("a line without a label in test.txt, line 2",
                       lambda f: _replace_line(f / "test.txt", 2, "images/test/000001.jpg")),
    "svhn": ("the task folder is missing", lambda f: shutil.rmtree(f)),
}


def _replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--side", type=int, default=48, help="image side in pixels (decoded to the backbone's)")
    parser.add_argument("--plant-bad", action="store_true")
    args = parser.parse_args()
    if args.root.exists():
        sys.exit(f"error: {args.root} exists; pass a new folder")
    sizes = {"train800": args.train, "val200": args.val, "test": args.test}
    make_vtab_root(args.root, sizes, args.side)
    print(f"wrote 19 tasks to {args.root} ({args.train}/{args.val}/{args.test} images of {args.side} px each)")
    if args.plant_bad:
        for task, (what, plant) in PLANTED.items():
            plant(args.root / VARIANT_FOLDERS.get(task, task))
            print(f"  planted in {task}: {what}")


if __name__ == "__main__":
    main()
