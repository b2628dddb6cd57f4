"""What a task hands the harness: uint8 image datasets plus the facts needed to train on them."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from .errors import UserError


class ArrayDataset(Dataset):
    """Images held in memory as a uint8 tensor (N, 3, H, W) with int64 labels."""

    in_memory = True

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


class ImageListDataset(Dataset):
    """Images on disk listed in a text file of ``relative/path label`` lines (the VTAB-1k layout).

    Images are resized straight to ``image_size`` (bicubic, no crop), as PYRA does.
    """

    in_memory = False

    def __init__(self, root: Path, list_file: Path, image_size: int) -> None:
        self.root, self.image_size = root, image_size
        self.samples: list[tuple[str, int]] = []
        for line_number, line in enumerate(list_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            path, _, label = line.strip().rpartition(" ")
            if not path or not label.lstrip("-").isdigit():
                raise UserError(f"{list_file}:{line_number}: expected 'path label', got {line.strip()!r}; "
                                f"fix or regenerate the list file")
            self.samples.append((path, int(label)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        relative, label = self.samples[index]
        path = self.root / relative
        try:
            with Image.open(path) as image:
                image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
        except FileNotFoundError:
            raise UserError(f"image listed but missing: {path}; re-extract the dataset") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"corrupt image {path} ({exc}); re-extract or replace that file") from None
        array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return array, torch.tensor(label, dtype=torch.int64)


@dataclass
class TaskData:
    """One task's splits. PYRA trains on train + val (VTAB-1k's train800val200) and reports test accuracy."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    image_size: int
    default_backbone: str
    default_epochs: int = 100
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD

    @property
    def train_and_val(self) -> Dataset:
        return ConcatDataset([self.train, self.val])


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    """Seeded loader; disk datasets decode in worker processes, in-memory ones in the main process."""
    in_memory = all(getattr(part, "in_memory", False)
                    for part in getattr(dataset, "datasets", [dataset]))
    workers = 0 if in_memory else min(8, os.cpu_count() or 1)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=workers,
                      persistent_workers=workers > 0)


class Normalize:
    """uint8 batch -> normalised float batch on the target device (done on device to keep loaders light)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.device = device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).float()
        return (images - self.mean) / self.std


def cache_dir() -> Path:
    """Where generated task data is kept: $ADAPTBENCH_CACHE, else ~/.cache/adaptbench."""
    return Path(os.environ.get("ADAPTBENCH_CACHE", Path.home() / ".cache" / "adaptbench"))


def cached_arrays(name: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Build arrays once and keep them as ``<cache>/<name>.npz`` (written atomically, so parallel jobs are safe)."""
    path = cache_dir() / f"{name}.npz"
    if path.exists():
        try:
            with np.load(path) as stored:
                return {key: stored[key] for key in stored.files}
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # damaged cache: rebuild it
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(temporary, path)
    return arrays
