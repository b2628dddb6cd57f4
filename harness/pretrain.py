"""Pretrain the micro ViTs on a formula-driven corpus, so the offline suite measures real adaptation.

    python -m harness.pretrain [--backbones vit_micro_base_patch4_32,vit_micro_small_patch4_32] [--out DIR]

The corpus is FractalDB-style (formula-driven supervised pretraining): each class is a random iterated function
system (2-4 contractive affine maps, chosen so the attractor fills enough of the image), each image one render
of it with its maps perturbed by up to 10 %, the point cloud rotated, scaled and shifted at random, and random
colours. Nothing in it resembles the embedded tasks (digits, photographs, cells, object counts, orientations).
Everything is seeded: the same seed gives the same corpus, the same batches and the same loss curve.

Writes ``<name>.safetensors`` (with the pretraining head) and ``<name>.json`` (recipe, loss curve, probe
accuracy, wall time, machine) per backbone; ``harness/weights/`` holds the shipped ones.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .backbones import create_backbone
from .data import Normalize
from .measure import count_parameters
from .train import TrainConfig, build_optimizer, learning_rate

SIZE = 32
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class PretrainRecipe:
    classes: int = 200
    images_per_class: int = 200
    epochs: int = 8
    warmup_epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    probe_per_class: int = 2
    seed: int = 0


def _random_system(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-4 contractive affine maps ``x -> A x + b`` and their probabilities (proportional to |det A|)."""
    maps = int(rng.integers(2, 5))
    matrices, offsets = [], []
    for _ in range(maps):
        theta, phi = rng.uniform(0, 2 * math.pi, 2)
        rotate = lambda angle: np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        scales = np.diag(rng.uniform(0.25, 0.85, 2) * np.array([1, rng.choice([-1, 1])]))
        matrices.append(rotate(theta) @ scales @ rotate(phi))
        offsets.append(rng.uniform(-1, 1, 2))
    matrices = np.stack(matrices)
    weights = np.abs(np.linalg.det(matrices)) + 0.02
    return matrices, np.stack(offsets), weights / weights.sum()


def _attractor(system: tuple, rng: np.random.Generator, points: int = 384, steps: int = 24) -> np.ndarray:
    """Points of the system's attractor (chaos game, all chains at once), after a burn-in of 6 steps."""
    matrices, offsets, probabilities = system
    xy = rng.uniform(-1, 1, (points, 2))
    kept = []
    for step in range(steps):
        chosen = rng.choice(len(probabilities), points, p=probabilities)
        xy = np.einsum("nij,nj->ni", matrices[chosen], xy) + offsets[chosen]
        if step >= 6:
            kept.append(xy)
    return np.concatenate(kept)


def _density(xy: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Rasterise a point cloud to a 32x32 density in [0, 1], with a random pose when ``rng`` is given."""
    xy = xy - np.median(xy, axis=0)
    if rng is not None:
        angle = rng.uniform(0, 2 * math.pi)
        xy = xy @ np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    extent = np.percentile(np.abs(xy), 98) + 1e-6
    scale = (rng.uniform(0.7, 1.0) if rng is not None else 1.0) * (SIZE / 2 - 1) / extent
    shift = rng.uniform(-3, 3, 2) if rng is not None else np.zeros(2)
    pixels = xy * scale + SIZE / 2 + shift
    histogram, _, _ = np.histogram2d(pixels[:, 1], pixels[:, 0], bins=SIZE, range=[[0, SIZE], [0, SIZE]])
    density = np.log1p(histogram)
    return density / max(density.max(), 1e-6)


def make_classes(count: int, rng: np.random.Generator, min_fill: float = 0.12) -> list[tuple]:
    """``count`` systems whose attractor covers at least ``min_fill`` of the image (FractalDB's filling rate)."""
    systems = []
    while len(systems) < count:
        system = _random_system(rng)
        if (_density(_attractor(system, rng)) > 0.05).mean() >= min_fill:
            systems.append(system)
    return systems


def render(system: tuple, rng: np.random.Generator) -> np.ndarray:
    """One uint8 (3, 32, 32) image of ``system``: maps perturbed, random pose and colours, pixel noise."""
    matrices, offsets, probabilities = system
    perturbed = (matrices * rng.uniform(0.9, 1.1, matrices.shape), offsets, probabilities)
    density = _density(_attractor(perturbed, rng), rng)[..., None]
    ink, paper = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    while np.abs(ink - paper).sum() < 120:  # keep the fractal visible
        paper = rng.uniform(0, 255, 3)
    image = paper * (1 - density) + ink * density + rng.normal(0, 8, (SIZE, SIZE, 3))
    return np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def make_probe(recipe: PretrainRecipe, systems: list[tuple] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The probe set: other renders of the same classes, from a random stream of its own (fast to rebuild)."""
    systems = systems or make_classes(recipe.classes, np.random.default_rng([recipe.seed, 0]))
    rng = np.random.default_rng([recipe.seed, 2])
    labels = np.repeat(np.arange(recipe.classes), recipe.probe_per_class)
    return np.stack([render(systems[label], rng) for label in labels]), labels


def make_corpus(recipe: PretrainRecipe) -> dict[str, np.ndarray]:
    """Training images and labels, and the probe set."""
    systems = make_classes(recipe.classes, np.random.default_rng([recipe.seed, 0]))
    rng = np.random.default_rng([recipe.seed, 1])
    labels = np.repeat(np.arange(recipe.classes), recipe.images_per_class)
    images = np.stack([render(systems[label], rng) for label in labels])
    probe_images, probe_labels = make_probe(recipe, systems)
    return {"images": images, "labels": labels, "probe_images": probe_images, "probe_labels": probe_labels}


def probe_accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 % of the pretraining head on the probe set (catches silently broken weights)."""
    device = next(model.parameters()).device
    normalize = Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, device)
    model.eval()
    with torch.inference_mode():
        predictions = model(normalize(torch.from_numpy(images))).argmax(-1).cpu().numpy()
    return 100.0 * float((predictions == labels).mean())


def pretrain(backbone: str, recipe: PretrainRecipe, corpus: dict[str, np.ndarray], *, max_steps: int | None = None,
             device: torch.device = torch.device("cpu"), log=print) -> tuple[torch.nn.Module, dict]:
    """Train ``backbone`` from scratch on the corpus; returns the model and its record (losses, accuracy, time)."""
    torch.manual_seed(recipe.seed)
    model = create_backbone(backbone, recipe.classes, pretrained=False, drop_path_rate=recipe.drop_path).to(device)
    config = TrainConfig(epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs, lr=recipe.lr,
                         weight_decay=recipe.weight_decay, batch_size=recipe.batch_size, min_lr=1e-5)
    optimizer = build_optimizer(model, config)
    normalize = Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, device)
    images, labels = torch.from_numpy(corpus["images"]), torch.from_numpy(corpus["labels"])
    steps_per_epoch = len(labels) // recipe.batch_size
    total = recipe.epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(recipe.seed)
    losses, step, started = [], 0, time.perf_counter()
    model.train()
    for epoch in range(recipe.epochs):
        order = torch.randperm(len(labels), generator=generator)
        flips = torch.rand(len(labels), generator=generator) < 0.5
        epoch_loss = torch.zeros(())
        for index in range(steps_per_epoch):
            batch = order[index * recipe.batch_size:(index + 1) * recipe.batch_size]
            batch_images = torch.where(flips[batch, None, None, None], images[batch].flip(-1), images[batch])
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, recipe.warmup_epochs * steps_per_epoch, config)
            loss = F.cross_entropy(model(normalize(batch_images)), labels[batch].to(device),
                                   label_smoothing=recipe.label_smoothing)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            epoch_loss += loss.detach().cpu()
            losses.append(round(float(loss.detach()), 6))
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        log(f"  {backbone} epoch {epoch + 1}/{recipe.epochs}: loss {float(epoch_loss) / (index + 1):.4f} "
            f"({time.perf_counter() - started:.0f}s)")
        if max_steps is not None and step >= max_steps:
            break
    record = {
        "backbone": backbone, "recipe": dataclasses.asdict(recipe), "steps": step, "losses": losses,
        "wall_seconds": time.perf_counter() - started,
        "probe_accuracy": probe_accuracy(model, corpus["probe_images"], corpus["probe_labels"]),
        "parameters": count_parameters(model)[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "device": str(device),
    }
    return model, record


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(model: torch.nn.Module, record: dict, out: Path) -> Path:
    """Write ``<backbone>.safetensors`` and ``<backbone>.json`` (record plus the weights' sha256)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{record['backbone']}.safetensors"
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}, path)
    record = {**record, "sha256": sha256(path), "file": path.name}
    (out / f"{record['backbone']}.json").write_text(json.dumps(record, indent=1))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="vit_micro_base_patch4_32,vit_micro_small_patch4_32")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--epochs", type=int, default=PretrainRecipe.epochs)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    recipe = PretrainRecipe(epochs=args.epochs)
    started = time.perf_counter()
    corpus = make_corpus(recipe)
    print(f"corpus: {len(corpus['labels'])} images, {recipe.classes} classes "
          f"({time.perf_counter() - started:.0f}s)")
    for backbone in args.backbones.split(","):
        model, record = pretrain(backbone, recipe, corpus, device=torch.device(args.device))
        path = save(model, record, args.out)
        print(f"{backbone}: probe accuracy {record['probe_accuracy']:.1f}%, {record['wall_seconds']:.0f}s -> {path}")
    print(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
