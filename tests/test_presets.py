"""Presets are data: each test reads the TOML file itself and checks that the code follows it."""
from harness.presets import tomllib

import pytest
import timm
import torch

from harness import presets
from harness.backbones import KNOWN_BACKBONES, lora_rank_for
from harness.cli import run
from harness.compression import resolve_schedule
from harness.vocabulary import named_levels
from harness.measure import MeasureConfig, timing_presets
from harness.plan import default_compression


def read(name: str) -> dict:
    with open(presets.PRESETS_DIR / f"{name}.toml", "rb") as handle:
        return tomllib.load(handle)


def test_bench_preset_choices_are_the_timing_files_tables():
    choices = next(param for param in run.params if param.name == "bench_preset").type.choices
    assert list(choices) == list(read("timing")) == timing_presets()


@pytest.mark.parametrize("name", list(read("timing")))
def test_a_timing_preset_expands_to_exactly_what_its_table_lists(name):
    table = read("timing")[name]
    settings = MeasureConfig.preset(name)
    for key, value in table.items():
        assert getattr(settings, key) == (tuple(value) if isinstance(value, list) else value), key
    unlisted = {field for field in MeasureConfig.__dataclass_fields__ if field not in table}
    assert {field: getattr(settings, field) for field in unlisted} == \
        {field: getattr(MeasureConfig(), field) for field in unlisted}
    assert MeasureConfig.preset(name, batches=(3,)).batches == (3,)  # an explicit option overrides


def test_named_levels_and_the_original_schedules_come_from_the_schedule_file():
    data = read("merge_schedules")
    assert named_levels() == tuple(data["levels"])
    for entry in data["schedules"]:
        name = "deit_base_distilled_patch16_224" if entry["distill_token"] else \
            {12: "vit_base_patch16_224", 24: "vit_large_patch16_224"}[entry["depth"]]
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        for level in data["levels"]:
            assert resolve_schedule(model, level) == entry[level], (name, level)


def test_known_backbones_and_lora_ranks_are_the_backbone_files():
    data = read("backbones")
    assert {name: (info.family, info.size_rank, info.description) for name, info in KNOWN_BACKBONES.items()} == \
        {name: (entry["family"], entry["size_rank"], entry["description"]) for name, entry in data["backbones"].items()}
    assert all(lora_rank_for(int(width)) == rank for width, rank in data["lora_rank_by_width"].items())


def test_command_line_defaults_are_the_defaults_file():
    data = read("defaults")
    defaults = {param.name: param.default for param in run.params}
    assert defaults["methods"] == ",".join(data["methods"]) and defaults["tasks"] == ",".join(data["tasks"])
    assert default_compression() == tuple(data["compression"])
