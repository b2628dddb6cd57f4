"""The full description of one run. Its hash names the run's result file, so equal configs share one file and
a config that differs in anything (the data's fingerprint included) is another run, never a reuse."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .measure import MeasureConfig
from .train import TrainConfig, later_defaults
from .vocabulary import is_uncompressed


@dataclass(frozen=True)
class DataConfig:
    """What data a run sees and how: the data's ``fingerprint`` (:attr:`harness.data.TaskData.fingerprint`), the
    size images are decoded or resized to and with which filter, and the normalisation (``normalization`` says
    where ``mean``/``std`` came from: the backbone's pretrained config, ImageNet's, or the task's own)."""

    fingerprint: str = ""
    img_size: int = 0
    interpolation: str = "bicubic"
    normalization: str = "backbone"
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD


def _keyed_fields(value: object) -> object:
    """``value`` as :func:`dataclasses.asdict` gives it, less each field marked ``keyed_when_set`` that holds its
    default: such a field came after runs were recorded, and at its default it describes what they did."""
    if not dataclasses.is_dataclass(value):
        return value
    later = later_defaults(type(value))
    return {item.name: _keyed_fields(getattr(value, item.name)) for item in dataclasses.fields(value)
            if not (item.name in later and getattr(value, item.name) == later[item.name])}


def _tuples(fields: dict) -> dict:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()}


@dataclass(frozen=True)
class RunConfig:
    method: str
    task: str
    backbone: str
    seed: int
    compression: str
    pretrained: bool
    device: str
    train: TrainConfig
    measure: MeasureConfig = MeasureConfig()
    data: DataConfig = DataConfig()
    weights: str = ""  # a local weights file given with --weights; "" when timm's (or the shipped) ones load
    weights_sha256: str = ""  # of that file: the same path holding other weights is another run
    threads: int = 0  # torch's CPU threads (0: torch's choice): they change the loss in its last digits and the speed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "RunConfig":
        return cls(**{**fields, "train": TrainConfig(**fields["train"]),
                      "measure": MeasureConfig(**_tuples(fields["measure"])),
                      "data": DataConfig(**_tuples(fields.get("data", {})))})

    @property
    def key(self) -> str:
        """A stable hash of every field: the same config always maps to the same result file. A field added
        later (``keyed_when_set``) counts only when it is not at its default, so older keys stay valid."""
        canonical = json.dumps(_keyed_fields(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(canonical.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        level = "" if is_uncompressed(self.compression) else f"@{self.compression}"
        return f"{self.method}{level} / {self.task} / {self.backbone} / seed {self.seed}"

    @property
    def file_stem(self) -> str:
        level = self.compression if re.fullmatch(r"[\w.]+", self.compression) else "custom"
        method = self.method if is_uncompressed(level) else f"{self.method}-{level}"
        return f"{method}-{self.task}-s{self.seed}-{self.key}"
