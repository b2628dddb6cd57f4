"""The full description of one run. Its hash names the run's result file, so equal configs share one file."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass

from .vocabulary import is_uncompressed
from .measure import MeasureConfig
from .train import TrainConfig


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "RunConfig":
        measure = {key: tuple(value) if isinstance(value, list) else value for key, value in fields["measure"].items()}
        return cls(**{**fields, "train": TrainConfig(**fields["train"]), "measure": MeasureConfig(**measure)})

    @property
    def key(self) -> str:
        """A stable hash of every field: the same config always maps to the same result file."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
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
