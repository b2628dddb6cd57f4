"""Pretrain the micro ViTs on a formula-driven corpus, so the offline suite measures real adaptation.

    python -m harness.pretrain [--backbones vit_micro_base_patch4_32,vit_micro_medium_patch4_32,...] [--out DIR]

The corpus is formula-driven (FDSL: every class is a formula, every image one render of it), in three families
of equal size, each image in two random colours with pixel noise:

- ``fractal``: a random iterated function system (2-4 contractive affine maps whose attractor fills enough of
  the image, as FractalDB); each render perturbs the maps by up to 10 % and draws a random pose;
- ``grating``: a sum of 1-3 sinusoidal gratings (orientation, frequency, amplitude per class); each render
  jitters orientation and frequency and draws random phases;
- ``contour``: a closed radial contour ``r(phi) = 1 + sum a_k sin(k phi + p_k)`` (harmonics per class, as
  VisualAtom); each render jitters amplitudes and phases, rotates, scales, moves it, filled or outlined.

Gratings are learnable from single patches and contours and fractals need the whole image, so a ViT leaves
chance level within a few hundred steps (on fractals alone it sat at chance for thousands of steps on this CPU),
and it learns oriented, frequency- and shape-selective features. Nothing in the corpus resembles the embedded
tasks (digits, photographs, cells, object counts, object orientation).

Attention starts from mimetic initialisation (Trockman & Kolter, 2023): each head's ``W_q^T W_k`` is close to
a scaled identity and ``W_proj W_v`` to a negative one, as in trained ViTs; at this budget it roughly halves
the steps before the loss moves.

Everything is seeded: the same seed gives the same corpus, the same batches and the same loss curve. Writes
``<name>.safetensors`` (with the pretraining head) and ``<name>.json`` (recipe, loss curve, probe accuracy, wall
time, machine) per backbone and the probe set ``probe.npz``; ``harness/weights/`` holds the shipped ones.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from .backbones import MICRO_VITS, PRETRAIN_CLASSES, WEIGHTS_DIR, create_backbone
from .data import Normalize
from .measure import count_parameters
from .results import cpu_model
from .store import write_json_atomic
from .train import Schedule, TrainConfig, Trainer, build_optimizer, train_epoch

SIZE = 32
PROBE_FILE = "probe.npz"


@dataclass(frozen=True)
class PretrainRecipe:
    classes_per_family: int = PRETRAIN_CLASSES // 3
    images_per_class: int = 250
    epochs: int = 4
    warmup_steps: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    drop_path: float = 0.0  # an under-fitted short run gains nothing from regularisation
    mimetic_init: bool = True
    probe_per_class: int = 2
    seed: int = 0

    @property
    def classes(self) -> int:
        return self.classes_per_family * len(FAMILIES)


def _rotation(angle: float) -> np.ndarray:
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


def _colourise(field: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A (32, 32) field in [0, 1] as a uint8 (3, 32, 32) image in two random, clearly different colours."""
    ink, paper = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    while np.abs(ink - paper).sum() < 120:  # keep the pattern visible
        paper = rng.uniform(0, 255, 3)
    image = paper * (1 - field[..., None]) + ink * field[..., None] + rng.normal(0, 8, (SIZE, SIZE, 3))
    return np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1)


# --- fractals -------------------------------------------------------------------------------------------------

def _random_system(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-4 contractive affine maps ``x -> A x + b`` and their probabilities (proportional to |det A|)."""
    maps = int(rng.integers(2, 5))
    matrices, offsets = [], []
    for _ in range(maps):
        theta, phi = rng.uniform(0, 2 * math.pi, 2)
        scales = np.diag(rng.uniform(0.25, 0.85, 2) * np.array([1, rng.choice([-1, 1])]))
        matrices.append(_rotation(theta) @ scales @ _rotation(phi))
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
        xy = xy @ _rotation(rng.uniform(0, 2 * math.pi))
    extent = np.percentile(np.abs(xy), 98) + 1e-6
    scale = (rng.uniform(0.7, 1.0) if rng is not None else 1.0) * (SIZE / 2 - 1) / extent
    shift = rng.uniform(-3, 3, 2) if rng is not None else np.zeros(2)
    pixels = xy * scale + SIZE / 2 + shift
    histogram, _, _ = np.histogram2d(pixels[:, 1], pixels[:, 0], bins=SIZE, range=[[0, SIZE], [0, SIZE]])
    density = np.log1p(histogram)
    return density / max(density.max(), 1e-6)


def fractal_class(rng: np.random.Generator, min_fill: float = 0.12) -> tuple:
    """A system whose attractor covers at least ``min_fill`` of the image (FractalDB's filling rate)."""
    while True:
        system = _random_system(rng)
        if (_density(_attractor(system, rng)) > 0.05).mean() >= min_fill:
            return system


def fractal_field(system: tuple, rng: np.random.Generator) -> np.ndarray:
    matrices, offsets, probabilities = system
    perturbed = (matrices * rng.uniform(0.9, 1.1, matrices.shape), offsets, probabilities)
    return _density(_attractor(perturbed, rng), rng)


# --- gratings -------------------------------------------------------------------------------------------------

_ROWS, _COLUMNS = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)


def grating_class(rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """1-3 gratings: (orientation in radians, cycles per pixel, amplitude)."""
    return [(rng.uniform(0, math.pi), rng.uniform(0.08, 0.45), rng.uniform(0.5, 1.0))
            for _ in range(int(rng.integers(1, 4)))]


def grating_field(gratings: list, rng: np.random.Generator) -> np.ndarray:
    field = np.zeros((SIZE, SIZE))
    for orientation, frequency, amplitude in gratings:
        angle = orientation + rng.normal(0, 0.05)
        along = _COLUMNS * math.cos(angle) + _ROWS * math.sin(angle)
        field += amplitude * np.sin(2 * math.pi * frequency * rng.uniform(0.95, 1.05) * along
                                    + rng.uniform(0, 2 * math.pi))
    return (field - field.min()) / (np.ptp(field) + 1e-6)


# --- contours -------------------------------------------------------------------------------------------------

def contour_class(rng: np.random.Generator) -> list[tuple[int, float, float]]:
    """2-4 harmonics of a radial contour: (frequency, amplitude, phase)."""
    return [(int(rng.integers(2, 9)), rng.uniform(0.08, 0.3), rng.uniform(0, 2 * math.pi))
            for _ in range(int(rng.integers(2, 5)))]


def contour_field(harmonics: list, rng: np.random.Generator) -> np.ndarray:
    """Drawn at twice the size and downsampled, so edges are anti-aliased."""
    canvas = 2 * SIZE
    angles = np.linspace(0, 2 * math.pi, 200, endpoint=False)
    radius = np.ones_like(angles)
    for frequency, amplitude, phase in harmonics:
        radius += amplitude * rng.uniform(0.85, 1.15) * np.sin(frequency * angles + phase + rng.normal(0, 0.3))
    radius *= rng.uniform(10, 22) / radius.max()
    angles = angles + rng.uniform(0, 2 * math.pi)
    cx, cy = rng.uniform(0.35 * canvas, 0.65 * canvas, 2)
    outline = list(zip(cx + radius * np.cos(angles), cy + radius * np.sin(angles)))
    image = Image.new("L", (canvas, canvas), 0)
    pen = ImageDraw.Draw(image)
    if rng.random() < 0.5:
        pen.polygon(outline, fill=255)
    else:
        pen.line(outline + outline[:1], fill=255, width=int(rng.integers(2, 5)))
    return np.asarray(image.resize((SIZE, SIZE), Image.LANCZOS), dtype=np.float64) / 255


class Family(NamedTuple):
    make_class: Callable[[np.random.Generator], object]
    field: Callable[[object, np.random.Generator], np.ndarray]


FAMILIES = {"fractal": Family(fractal_class, fractal_field), "grating": Family(grating_class, grating_field),
            "contour": Family(contour_class, contour_field)}


def make_classes(recipe: PretrainRecipe) -> list[tuple[Family, object]]:
    """Every class of the corpus as (family, formula parameters), family by family."""
    rng = np.random.default_rng([recipe.seed, 0])
    return [(family, family.make_class(rng)) for family in FAMILIES.values()
            for _ in range(recipe.classes_per_family)]


def render(formula: tuple[Family, object], rng: np.random.Generator) -> np.ndarray:
    """One uint8 (3, 32, 32) image of a class."""
    family, parameters = formula
    return _colourise(family.field(parameters, rng), rng)


def _render_all(classes: list, per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(len(classes)), per_class)
    return np.stack([render(classes[label], rng) for label in labels]), labels


def make_corpus(recipe: PretrainRecipe) -> dict[str, np.ndarray]:
    """Training images and labels, and the probe set (other renders of the same classes, a stream of its own)."""
    classes = make_classes(recipe)
    images, labels = _render_all(classes, recipe.images_per_class, np.random.default_rng([recipe.seed, 1]))
    probe_images, probe_labels = _render_all(classes, recipe.probe_per_class, np.random.default_rng([recipe.seed, 2]))
    return {"images": images, "labels": labels, "probe_images": probe_images, "probe_labels": probe_labels}


# --- training -------------------------------------------------------------------------------------------------

def _product_factors(dim: int, rank: int, alpha: float, beta: float, sign: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (left (dim, rank), right (rank, dim)) of the best rank-``rank`` approximation of
    ``alpha Z / sqrt(dim) + sign beta I`` with Z standard normal."""
    target = alpha * torch.randn(dim, dim, generator=generator) / math.sqrt(dim) + sign * beta * torch.eye(dim)
    left, singular, right = torch.linalg.svd(target)
    root = singular[:rank].sqrt()
    return left[:, :rank] * root, root[:, None] * right[:rank]


@torch.no_grad()
def mimetic_init_(model: nn.Module, generator: torch.Generator, qk: tuple[float, float] = (0.7, 0.7),
                  vo: tuple[float, float] = (0.4, 0.4)) -> None:
    """Mimetic initialisation of every block's attention (timm's fused ``qkv``), in place: per head
    ``W_q^T W_k ~ qk[0] Z + qk[1] I`` and for the block ``W_proj W_v ~ vo[0] Z - vo[1] I`` (the paper's values)."""
    for block in model.blocks:
        attention = block.attn
        dim, heads = attention.qkv.in_features, attention.num_heads
        head_dim = dim // heads
        weight = attention.qkv.weight  # rows: q of every head, then k, then v
        for head in range(heads):
            query, key = _product_factors(dim, head_dim, *qk, 1, generator)
            start = head * head_dim
            weight[start:start + head_dim] = query.T
            weight[dim + start:dim + start + head_dim] = key
        projection, value = _product_factors(dim, dim, *vo, -1, generator)
        weight[2 * dim:] = value
        attention.proj.weight.copy_(projection)


def probe_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 % of the pretraining head on the probe set (catches silently broken weights)."""
    device = next(model.parameters()).device
    normalize = Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, device)
    model.eval()
    with torch.inference_mode():
        predictions = model(normalize(torch.from_numpy(images))).argmax(-1).cpu().numpy()
    return 100.0 * float((predictions == labels).mean())


def _epoch_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                   generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of full batches in a fresh permutation drawn from ``generator`` (the remainder is left out)."""
    order = torch.randperm(len(labels), generator=generator)
    for index in range(len(labels) // batch_size):
        batch = order[index * batch_size:(index + 1) * batch_size]
        yield images[batch], labels[batch]


def pretrain(backbone: str, recipe: PretrainRecipe, corpus: dict[str, np.ndarray], *, max_steps: int | None = None,
             device: torch.device = torch.device("cpu"), log=print) -> tuple[nn.Module, dict]:
    """Train ``backbone`` from scratch on the corpus; returns the model and its record (losses, accuracy, time).

    The steps are the runs' own (:class:`~harness.train.Trainer` and :func:`~harness.train.train_epoch`), with
    the warm-up in steps; ``max_steps`` stops early without changing the schedule, so a short run is the start of
    the full one.
    """
    torch.manual_seed(recipe.seed)
    model = create_backbone(backbone, recipe.classes, pretrained=False, drop_path_rate=recipe.drop_path)
    if recipe.mimetic_init:
        mimetic_init_(model, torch.Generator().manual_seed(recipe.seed))
    model.to(device)
    config = TrainConfig(epochs=recipe.epochs, lr=recipe.lr, weight_decay=recipe.weight_decay,
                         batch_size=recipe.batch_size, min_lr=1e-5)
    normalize = Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, device)
    trainer = Trainer(model, build_optimizer(model, config), normalize, recipe.label_smoothing)
    images, labels = torch.from_numpy(corpus["images"]), torch.from_numpy(corpus["labels"])
    steps_per_epoch = len(labels) // recipe.batch_size
    schedule = Schedule(config, steps_per_epoch, warmup_steps=recipe.warmup_steps)
    total_steps = recipe.epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    generator = torch.Generator().manual_seed(recipe.seed)
    losses: list[torch.Tensor] = []  # on device, read once at the end: no sync per step
    started = time.perf_counter()
    model.train()
    for epoch in range(math.ceil(total_steps / steps_per_epoch)):
        steps = min(steps_per_epoch, total_steps - len(losses))
        batches = itertools.islice(_epoch_batches(images, labels, recipe.batch_size, generator), steps)
        loss_sum, _ = train_epoch(trainer, batches, schedule, len(losses), on_step=losses.append)
        log(f"  {backbone} epoch {epoch + 1}/{recipe.epochs}: loss {float(loss_sum) / steps:.4f} "
            f"({time.perf_counter() - started:.0f}s)")
    record = {
        "backbone": backbone, "recipe": dataclasses.asdict(recipe), "classes": recipe.classes, "steps": len(losses),
        "losses": [round(float(loss), 6) for loss in losses], "wall_seconds": time.perf_counter() - started,
        "probe_accuracy": probe_accuracy(model, corpus["probe_images"], corpus["probe_labels"]),
        "parameters": count_parameters(model)[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {cpu_model()}", "device": str(device),
    }
    return model, record


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(model: nn.Module, record: dict, out: Path) -> Path:
    """Write ``<backbone>.safetensors`` and ``<backbone>.json`` (record plus the weights' sha256)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{record['backbone']}.safetensors"
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}, path)
    write_json_atomic(out / f"{record['backbone']}.json", {**record, "sha256": sha256(path), "file": path.name})
    return path


def save_probe(corpus: dict[str, np.ndarray], out: Path) -> Path:
    """The probe set next to the weights, so a check of them never depends on re-rendering it bit for bit."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / PROBE_FILE
    np.savez_compressed(path, images=corpus["probe_images"], labels=corpus["probe_labels"])
    return path


def load_probe(folder: Path = WEIGHTS_DIR) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / PROBE_FILE) as stored:
        return stored["images"], stored["labels"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default=",".join(reversed(MICRO_VITS)), help="default: every micro ViT")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--epochs", type=int, default=PretrainRecipe.epochs)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    recipe = PretrainRecipe(epochs=args.epochs)
    started = time.perf_counter()
    corpus = make_corpus(recipe)
    save_probe(corpus, args.out)
    print(f"corpus: {len(corpus['labels'])} images, {recipe.classes} classes "
          f"({time.perf_counter() - started:.0f}s)", flush=True)
    for backbone in args.backbones.split(","):
        model, record = pretrain(backbone, recipe, corpus, device=torch.device(args.device),
                                 log=lambda line: print(line, flush=True))
        path = save(model, record, args.out)
        print(f"{backbone}: probe accuracy {record['probe_accuracy']:.1f}%, {record['wall_seconds']:.0f}s -> {path}",
              flush=True)
    print(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
