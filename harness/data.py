"""What a task hands the harness: its splits and the facts needed to train on them, and the identity of its data.

A split is either images in memory (:class:`ArrayDataset`, uint8) or images on disk listed in a text file
(:class:`ImageList`, the VTAB-1k layout). Before a run trains, every listed split is decoded once, in this
process, at the size the run's backbone takes (:meth:`TaskData.at_size`), into a uint8 cache on disk that later
runs map back in; a corrupt image therefore fails with one line naming the file, before the first step, never
as a DataLoader worker's traceback in the middle of training.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import math
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import BatchSampler, ConcatDataset, DataLoader, Dataset, RandomSampler, SequentialSampler

from .errors import BadData, UserError
from .store import replace_atomically

SPLITS = ("train", "val", "test")
MISSING_SHOWN = 3  # missing images named in the message; the count says how many more
# PIL's resampling filters by the name timm's pretrained_cfg["interpolation"] uses.
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
                  "lanczos": Image.LANCZOS}


class ArrayDataset(Dataset):
    """Images held in memory (or memory-mapped) as a uint8 tensor (N, 3, H, W) with int64 labels."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> None:
        self.images = torch.as_tensor(images, dtype=torch.uint8)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        if self.images.ndim != 4 or self.images.shape[1] != 3 or len(self.images) != len(self.labels):
            raise ValueError(f"expected images (N, 3, H, W) and N labels, got {tuple(self.images.shape)} "
                             f"and {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def resized(self, size: int) -> "ArrayDataset":
        """The same images at ``size`` x ``size`` (bicubic with antialiasing, as PIL resizes listed images)."""
        if self.images.shape[-1] == size and self.images.shape[-2] == size:
            return self
        resized = F.interpolate(self.images.float(), size=(size, size), mode="bicubic", antialias=True)
        return ArrayDataset(resized.round().clamp(0, 255).to(torch.uint8), self.labels)


@dataclass(frozen=True)
class ImageList:
    """Images on disk listed in a text file of ``relative/path label`` lines (the VTAB-1k layout).

    A line is split at its last run of white space (spaces or tabs; leading and trailing white space ignored), so
    a path may contain spaces. It is decoded by :func:`decode` before training, never inside a DataLoader.
    """

    root: Path
    list_file: Path
    samples: tuple[tuple[str, int], ...]
    line_numbers: tuple[int, ...]  # of each sample in the list file, for messages

    @classmethod
    def read(cls, root: Path, list_file: Path) -> "ImageList":
        try:
            text = list_file.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first path
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {list_file} ({type(exc).__name__}: {exc}); check its permissions or "
                            f"regenerate it") from None
        samples, numbers = [], []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(None, 1)
            label = _integer(parts[1]) if len(parts) == 2 else None
            if label is None:
                raise UserError(f"{list_file}:{number}: expected 'path label', got {line.strip()!r}; fix or "
                                f"regenerate the list file")
            samples.append((parts[0], label))
            numbers.append(number)
        return cls(root, list_file, tuple(samples), tuple(numbers))

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([label for _, label in self.samples], dtype=np.int64)


def _integer(text: str) -> int | None:
    """``text`` as an integer written in ASCII digits (``int`` alone would take "٣" for 3), else None."""
    try:
        return int(text) if text.isascii() else None
    except ValueError:
        return None


Split = Dataset | ImageList


def _size_of(split: Split | None) -> int | None:
    return None if split is None else len(split)


@dataclass
class TaskData:
    """One task's splits. PYRA trains on train + val (VTAB-1k's ``train800val200``) and reports test accuracy.

    ``image_size`` None means the task has no size of its own (images on disk): it is decoded at the size the run's
    backbone takes. ``mean``/``std`` None means the run's normalisation decides (the backbone's, by default).
    ``trainval`` is one split holding train + val where the data ships it as one list (VTAB-1k's
    ``train800val200.txt``); ``train`` and ``val`` may then be None. ``identity`` says where the data came from
    (recorded in every run; its ``fingerprint`` is part of the run key), and ``problem``, when set, why the task
    cannot run: its runs are recorded as failed with that reason and the other tasks go on. ``default_lr`` is the
    task's learning rate by what a method trains (:data:`harness.vocabulary.TRAINS`; a kind it leaves out, or
    None, gets :class:`harness.train.TrainConfig`'s); ``--lr`` overrides it.
    """

    train: Split | None
    val: Split | None
    test: Split | None
    num_classes: int
    image_size: int | None
    default_backbone: str | None
    default_epochs: int = 100
    default_lr: dict[str, float] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    trainval: Split | None = None
    identity: dict = field(default_factory=dict)
    problem: str | None = None

    @classmethod
    def unavailable(cls, problem: str) -> "TaskData":
        """A task whose data could not be had at all: nothing but the reason."""
        return cls(None, None, None, 0, None, None, problem=problem)

    @property
    def fingerprint(self) -> str:
        return str(self.identity.get("fingerprint", ""))

    def used_splits(self, selection: str = "test") -> tuple[str, ...]:
        """The splits a run with this ``selection`` reads: selecting on test, one training list (``trainval`` where
        the data has it, as PYRA) and test; selecting on val, train, val and test."""
        if selection == "test" and self.trainval is not None:
            return ("trainval", "test")
        return SPLITS

    def fingerprint_for(self, selection: str = "test") -> str:
        """The fingerprint of what a run with this ``selection`` reads: a list it never reads (a train800.txt
        added beside train800val200.txt) is no reason to rerun it."""
        per_split = self.identity.get("fingerprints")
        if not per_split:
            return self.fingerprint
        return fingerprint([self.identity.get("folder", ""),
                            *(per_split[split] for split in self.used_splits(selection) if split in per_split)])

    @property
    def train_and_val(self) -> Dataset:
        if self.trainval is not None:
            return self.trainval
        return ConcatDataset([split for split in (self.train, self.val) if split is not None])

    def split_sizes(self) -> dict[str, int | None]:
        sizes = {split: _size_of(getattr(self, split)) for split in SPLITS}
        if self.trainval is not None:
            sizes["trainval"] = len(self.trainval)
        return sizes

    def listed_splits(self) -> dict[str, ImageList]:
        """The splits that are image lists on disk, by name."""
        return {name: split for name in (*SPLITS, "trainval")
                if isinstance(split := getattr(self, name), ImageList)}

    def at_size(self, size: int, interpolation: str = "bicubic", selection: str = "test") -> "TaskData":
        """The splits a run with ``selection`` reads as images in memory at ``size`` x ``size`` (listed ones decoded
        once and cached on disk, arrays resized when their size differs); the splits it does not read are dropped."""
        def materialize(name: str) -> Dataset | None:
            split = getattr(self, name) if name in self.used_splits(selection) else None
            if isinstance(split, ImageList):
                return decoded(split, size, interpolation)
            return split.resized(size) if isinstance(split, ArrayDataset) else split

        return dataclasses.replace(self, image_size=size, **{name: materialize(name) for name in (*SPLITS, "trainval")})


def fingerprint(parts: Iterable[str | bytes]) -> str:
    """A short stable hash of ``parts``: what makes other data another run."""
    digest = hashlib.sha1()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def content_identity(task: TaskData) -> dict:
    """For a task that says nothing of where its data came from: a fingerprint of the images and labels it holds
    (tasks whose splits are in memory; cheap at VTAB-1k's sizes)."""
    parts = []
    for name in (*SPLITS, "trainval"):
        split = getattr(task, name)
        if isinstance(split, ArrayDataset):
            parts += [name, split.images.numpy().tobytes(), split.labels.numpy().tobytes()]
    return {"fingerprint": fingerprint(parts)} if parts else {}


def list_identity(folder: Path, lists: dict[str, Path]) -> dict:
    """Where listed data came from: its folder, the list files used, and a fingerprint of the folder and of those
    files' contents (a copy of the data elsewhere is another run: it may hold other images under the same names)."""
    folder_name = str(folder.resolve())
    per_split = {split: fingerprint([split, path.name, path.read_bytes()]) for split, path in lists.items()}
    return {"folder": folder_name, "files": {split: path.name for split, path in lists.items()},
            "fingerprints": per_split, "fingerprint": fingerprint([folder_name, *per_split.values()])}


# --------------------------------------------------------------------------------------------------- checks

def check_task(task: TaskData, check_images: bool = False, selection: str = "test") -> str | None:
    """Why a task's data cannot be trained on with ``selection`` (one line naming the file, and line where there is
    one), or None: the splits it needs exist, and every list file in the folder (read or not: a broken one says
    the folder is not what it claims) is non-empty, every label an integer in ``[0, classes)``, every image
    present (a stat) and, with ``check_images``, decodable."""
    if selection == "val" and (task.train is None or task.val is None):
        return (f"--selection val needs separate train and val splits (VTAB-1k: train800.txt and val200.txt), which "
                f"{task.identity.get('folder', 'this task')} does not have; add them or select on test")
    for split in task.listed_splits().values():
        problem = (_empty(split) or _bad_label(split, task.num_classes) or _missing(split)
                   or (_undecodable(split) if check_images else None))
        if problem:
            return problem
    return None


def _empty(split: ImageList) -> str | None:
    return None if len(split) else f"{split.list_file} lists no images; regenerate it (VTAB-1k: get_vtab1k.py)"


def _bad_label(split: ImageList, num_classes: int) -> str | None:
    for (_, label), number in zip(split.samples, split.line_numbers):
        if not 0 <= label < num_classes:
            return (f"{split.list_file}:{number}: label {label} is outside 0..{num_classes - 1} (the task has "
                    f"{num_classes} classes); fix the list file or check that the folder is the right task")
    return None


def _missing(split: ImageList) -> str | None:
    missing = [path for path, _ in split.samples if not (split.root / path).is_file()]
    if not missing:
        return None
    shown = ", ".join(missing[:MISSING_SHOWN]) + (", ..." if len(missing) > MISSING_SHOWN else "")
    return (f"{len(missing)} of {len(split)} images listed in {split.list_file} are missing under {split.root} "
            f"({shown}); re-extract the dataset")


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # PIL's 16-bit greys: convert("RGB") would clip them
WIDE_MODES = ("I", "F")  # 32-bit integer or float pixels: no one 8-bit reading of them


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    if image.mode in SIXTEEN_BIT_MODES:
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
    elif image.mode in WIDE_MODES:
        raise BadData(f"image {path} has {'32-bit integer' if image.mode == 'I' else 'floating-point'} pixels "
                      f"(PIL mode {image.mode}), which have no one 8-bit reading; convert it to an 8-bit image")
    return image.convert("RGB")


def _open(path: Path, size: int | None, interpolation: str) -> Image.Image:
    """The image at ``path`` decoded to RGB (resized to ``size`` x ``size`` when given), or a one-line
    :class:`BadData` naming the file. 16-bit greys keep their high byte."""
    try:
        with Image.open(path) as image:
            image = _to_rgb(image, path)
            return image if size is None else image.resize((size, size), INTERPOLATIONS[interpolation])
    except FileNotFoundError:
        raise BadData(f"image listed but missing: {path}; re-extract the dataset") from None
    except UserError:
        raise
    except Exception as exc:  # PIL's decoders say "broken" in many ways (OSError, DecompressionBombError, struct...)
        raise BadData(f"corrupt image {path} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                      f"re-extract or replace that file") from None


def _each_image(split: ImageList, work: Callable[[int, Path], None]) -> None:
    """``work(index, path)`` for every listed image, in threads (PIL releases the GIL while decoding and
    resizing); the first failure in list order is raised."""
    paths = [split.root / path for path, _ in split.samples]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(work, range(len(paths)), paths):
            pass


def _undecodable(split: ImageList) -> str | None:
    try:
        _each_image(split, lambda index, path: _open(path, None, "bicubic").load())  # pixels dropped at once
    except UserError as exc:
        return str(exc)
    return None


def decode_into(split: ImageList, size: int, interpolation: str, target: np.ndarray) -> np.ndarray:
    """Every listed image into ``target`` (uint8 (N, 3, size, size), e.g. a memory-mapped file, so a split of
    tens of thousands of images never sits in memory twice), resized straight to the square (no crop), as PYRA."""
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"unknown interpolation '{interpolation}'; use one of {', '.join(INTERPOLATIONS)}")
    if size <= 0:
        raise ValueError(f"image size must be positive, not {size}")

    def work(index: int, path: Path) -> None:
        target[index] = np.asarray(_open(path, size, interpolation), dtype=np.uint8).transpose(2, 0, 1)

    _each_image(split, work)
    return target


def decode(split: ImageList, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Every listed image as an in-memory uint8 (N, 3, size, size) array."""
    return decode_into(split, size, interpolation, np.empty((len(split), 3, size, size), dtype=np.uint8))


def _stamp(split: ImageList) -> str:
    """The list and every image's size and modification time: a decoded cache is stale when any changes."""
    stats = [(path, (split.root / path).stat()) for path, _ in split.samples]
    return fingerprint([str(split.root.resolve()), split.list_file.read_bytes(),
                        *(f"{path}:{stat.st_size}:{stat.st_mtime_ns}" for path, stat in stats)])


FULL = (errno.ENOSPC, errno.EDQUOT)  # the disk or the user's quota
NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF)  # flock unsupported there
ABANDONED_AFTER_S = 60.0  # an unlocked temporary this old is a killed decode's, not one being created


def _remove_abandoned(path: Path) -> None:
    """Delete the temporaries of ``path`` that a killed decode left (each as large as the split): those no process
    holds locked. A decode holds its temporary's lock from just after creating it until it is renamed."""
    for temporary in path.parent.glob(f".{path.name}.*.tmp"):
        try:  # opened for writing: NFS emulates flock with POSIX locks, whose exclusive lock needs it
            with open(temporary, "r+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if time.time() - os.fstat(handle.fileno()).st_mtime > ABANDONED_AFTER_S:
                    temporary.unlink(missing_ok=True)
        except OSError:  # locked by a live decode, gone already, or no locks here to tell: left alone
            continue


def decoded(split: ImageList, size: int, interpolation: str = "bicubic") -> ArrayDataset:
    """:func:`decode`, straight into ``<cache>/decoded/<stamp>-<size>-<interpolation>.npy`` (written under a
    temporary name and renamed, then mapped back copy-on-write), so later runs and parallel jobs read it without
    decoding. At 224 px an image takes 147 KiB: VTAB-1k's 19 test sets need tens of GB of cache. The file's blocks
    are reserved before decoding, so a full disk is one :class:`BadData` line, not a SIGBUS in a page write."""
    folder = cache_dir() / "decoded"
    path = folder / f"{_stamp(split)}-{size}-{interpolation}.npy"
    if path.exists():
        try:
            return ArrayDataset(np.load(path, mmap_mode="c"), split.labels)
        except (OSError, ValueError, EOFError):  # a truncated or foreign file
            path.unlink(missing_ok=True)  # damaged cache: decode again
    shape = (len(split), 3, size, size)
    locks = []

    def write(temporary: str) -> None:
        locks.append(open(temporary, "r+b"))
        try:
            fcntl.flock(locks[0], fcntl.LOCK_EX)
        except OSError as exc:  # a filesystem without locks (Lustre mounted without flock): decode unlocked
            if exc.errno not in NO_LOCKS:
                raise
        target = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)
        if hasattr(os, "posix_fallocate"):
            with open(temporary, "r+b") as handle:
                try:
                    os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
                except OSError as exc:  # a filesystem that cannot reserve blocks: decode unreserved, as before
                    if exc.errno in FULL:
                        raise
        decode_into(split, size, interpolation, target).flush()
        del target

    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(path)
        replace_atomically(path, write)
    except OSError as exc:
        if exc.errno in FULL:
            needed = math.prod(shape)
            amount = f"{needed / 1e9:.1f} GB" if needed >= 1e9 else f"{needed / 1e6:.1f} MB"
            raise BadData(f"no space left in {folder} for {split.list_file}'s decoded images ({amount} at {size} "
                          f"px); free space there or point $ADAPTBENCH_CACHE at a larger disk") from None
        raise BadData(f"cannot write the decoded-image cache in {folder} ({type(exc).__name__}: "
                      f"{exc.strerror or exc}); point $ADAPTBENCH_CACHE at a writable folder") from None
    finally:
        for lock in locks:
            lock.close()
    return ArrayDataset(np.load(path, mmap_mode="c"), split.labels)


# -------------------------------------------------------------------------------------------------- loading

DEVICE_SHARE = 0.25  # of the free GPU memory a split may take to live on the device


class TensorBatches:
    """Batches of a split held as one uint8 tensor: indexed, not collated item by item, and on a GPU kept on the
    device when it fits (:data:`DEVICE_SHARE` of the free memory; 1,000 images at 224 px are 150 MB), else in
    pinned host memory, each batch gathered into pinned memory too, so that its copy to the device does not block.
    The order is torch's ``RandomSampler`` (or sequential) with the seeded generator, batch for batch what a
    ``DataLoader`` with that generator yields."""

    def __init__(self, dataset: ArrayDataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                 device: torch.device | None = None) -> None:
        self.images, self.labels = dataset.images, dataset.labels
        self.streamed = False  # host-resident on a GPU machine: batches are gathered into pinned memory
        if device is not None and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if self.images.numel() < DEVICE_SHARE * free:
                self.images, self.labels = self.images.to(device), self.labels.to(device)
            else:
                self.images, self.labels, self.streamed = self.images.pin_memory(), self.labels.pin_memory(), True
        self.generator = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(range(len(self.labels)), generator=self.generator) if shuffle else \
            SequentialSampler(range(len(self.labels)))
        self.batches = BatchSampler(sampler, batch_size, drop_last=False)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A DataLoader draws its workers' base seed from the generator before the sampler's first draw; so do we,
        # so that the runs published before this loader existed see the very same batches.
        # Batches are drawn lazily, as a DataLoader draws them: a pass cut short (the memory probe's first batch)
        # leaves the generator where a DataLoader's would be, so the epochs after it see the same batches too.
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        for indices in self.batches:
            index = self.index(indices)
            yield self.select(self.images, index), self.select(self.labels, index)

    def index(self, indices: list[int]) -> torch.Tensor:
        """``indices`` on the data's device. To a GPU through pinned memory: a copy from a Python list (pageable
        memory) would wait for the GPU's queued work every step, and the host could never run ahead of it."""
        index = torch.as_tensor(indices)
        if self.images.device.type != "cuda":
            return index
        return pinned_empty(index.shape, index.dtype).copy_(index).to(self.images.device, non_blocking=True)

    def select(self, tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``tensor[index]``; when streamed, into pinned memory (``index_select``'s own output is pageable, and a
        copy from pageable memory to the GPU waits for the host)."""
        if not self.streamed:
            return tensor.index_select(0, index)
        return torch.index_select(tensor, 0, index, out=pinned_empty((len(index), *tensor.shape[1:]), tensor.dtype))


def pinned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised page-locked host tensor (from torch's caching host allocator, so cheap after the first)."""
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def as_array_dataset(dataset: Dataset) -> ArrayDataset | None:
    """``dataset`` as one :class:`ArrayDataset` (concatenating a ``ConcatDataset`` of them), or None."""
    if isinstance(dataset, ArrayDataset):
        return dataset
    parts = getattr(dataset, "datasets", None)
    if parts and all(isinstance(part, ArrayDataset) for part in parts):
        return ArrayDataset(torch.cat([part.images for part in parts]), torch.cat([part.labels for part in parts]))
    return None


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                device: torch.device | None = None) -> Iterable:
    """Seeded batches of decoded data (:class:`TensorBatches`); a plugin's own ``Dataset`` gets torch's
    ``DataLoader`` with the same sampler and no worker processes, whose tracebacks would bury a bad file."""
    arrays = as_array_dataset(dataset)
    if arrays is not None:
        return TensorBatches(arrays, batch_size, shuffle=shuffle, seed=seed, device=device)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)


class Normalize:
    """uint8 batch -> normalised float batch on the target device (done on device to keep loaders light)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.device = device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).float()
        return (images - self.mean) / self.std


def _writer(save: Callable, *args, **kwargs) -> Callable[[str], None]:
    """``save(handle, ...)`` into a file handle: numpy would add its own suffix to a temporary file's name."""
    def write(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            save(handle, *args, **kwargs)

    return write


def cache_dir() -> Path:
    """Where generated and decoded task data is kept: $ADAPTBENCH_CACHE, else ~/.cache/adaptbench."""
    return Path(os.environ.get("ADAPTBENCH_CACHE", Path.home() / ".cache" / "adaptbench"))


def cached_arrays(name: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Build arrays once and keep them as ``<cache>/<name>.npz`` (written atomically, so parallel jobs are safe)."""
    path = cache_dir() / f"{name}.npz"
    if path.exists():
        try:
            with np.load(path) as stored:
                return {key: stored[key] for key in stored.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # a truncated or foreign file
            path.unlink(missing_ok=True)  # damaged cache: rebuild it
    arrays = build()
    replace_atomically(path, _writer(np.savez, **arrays))
    return arrays
