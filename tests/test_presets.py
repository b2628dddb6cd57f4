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
from harness.train import TrainConfig


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


PAPER = sorted((presets.PRESETS_DIR / "paper").glob("*.toml"))


@pytest.mark.parametrize("path", PAPER, ids=lambda path: path.stem)
def test_a_paper_preset_expands_to_exactly_what_its_file_lists(path):
    from harness.cli import expand_preset

    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    defaults = {param.name: param.default for param in run.params}
    options, train = expand_preset(data, defaults, explicit=set())
    listed = {**data["run"], **data["train"]}
    expanded = {key: options[key] if key in options else train[key] for key in listed}
    assert expanded == {key: ",".join(value) if isinstance(value, list) else value for key, value in listed.items()}
    assert set(train) <= set(TrainConfig.__dataclass_fields__)  # every recipe value is a training setting
    assert {key: value for key, value in options.items() if key not in listed} == \
        {key: value for key, value in defaults.items() if key not in listed}  # nothing else moves


def test_explicit_options_override_a_preset_and_take_what_goes_with_them():
    from harness.cli import expand_preset

    preset = presets.paper_presets()["pyra-vit-b"]
    defaults = {param.name: param.default for param in run.params}
    options, train = expand_preset(preset, {**defaults, "epochs": 5, "methods": "lora", "lr_schedule": "per_step"},
                                   explicit={"epochs", "methods", "lr_schedule"})
    assert options["epochs"] == 5 and options["methods"] == "lora" and options["lr"] == 1e-3
    assert options["lr_schedule"] == "per_step" and train["eval_first"] == 1
    deit = presets.paper_presets()["pyra-deit-b"]
    assert expand_preset(deit, defaults, explicit=set())[1]["distilled_loss"] == "class_head"
    # the class head alone is DeiT's recipe: another backbone drops it
    assert "distilled_loss" not in expand_preset(deit, defaults, explicit={"backbone"})[1]
    assert options["compression"] is None and "warmup_epochs" not in train and "eval_every" not in train
    assert options["warmup_epochs"] is None and train["warmup_lr"] == 1e-6
    # the input size is the preset backbone's: another backbone brings its own
    assert expand_preset(preset, defaults, explicit=set())[0]["img_size"] == 224
    assert expand_preset(preset, defaults, explicit={"backbone"})[0]["img_size"] is None


SHIPPED = (presets.PRESETS_DIR / "paper" / "pyra-vit-b.toml").read_text()


@pytest.mark.parametrize("text, message", [
    ("this is = = bad\n", "is not valid TOML: Expected '=' after a key in a key/value pair (at line 1, column 6)"),
    ('description = "x"\n[train]\nepochs = 1\n', "needs a description (text), a [run] and a [train] table"),
    (SHIPPED.replace("epochs = 100", "epochs = 100\nbogus_key = 3"),
     "[train] bogus_key is neither an option of the run command"),
    (SHIPPED.replace('train_precision = "fp32"', 'train_precision = "fp64"'),
     "[run] train_precision = 'fp64': 'fp64' is not one of 'fp32', 'bf16', 'fp16'"),
    (SHIPPED.replace("epochs = 100", 'epochs = "ten"'), "[train] epochs = 'ten': 'ten' is not a valid integer"),
    (SHIPPED.replace("warmup_lr = 1e-6", "warmup_lr = true"), "[train] warmup_lr = True is not a float"),
    (SHIPPED.replace("eval_first = 1", "eval_first = -1"), "eval_first at least 0"),
])
def test_a_preset_file_that_is_not_a_preset_is_one_line_naming_the_file_and_the_key(tmp_path, monkeypatch, text,
                                                                                     message):
    from harness.cli import read_paper_preset
    from harness.errors import UserError

    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "mine.toml").write_text(text)
    monkeypatch.setattr(presets, "PRESETS_DIR", tmp_path)
    presets.load.cache_clear()
    try:
        with pytest.raises(UserError) as raised:
            read_paper_preset("mine", run)
    finally:
        presets.load.cache_clear()
    assert str(raised.value).startswith("harness/presets/paper/mine.toml") and message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_shipped_preset_reads_as_its_file_with_its_values_checked():
    from harness.cli import read_paper_preset

    for path in PAPER:
        assert read_paper_preset(path.stem, run) == read(f"paper/{path.stem}")


def test_the_command_line_is_built_without_reading_the_paper_presets(tmp_path):
    import subprocess
    import sys

    # every paper preset unreadable: --help, and every command not given --preset, still work
    probe = ("import harness.presets as p\nread = p.load.__wrapped__\n"
             "def load(name):\n    if name.startswith('paper/'): raise SystemExit('read ' + name)\n"
             "    return read(name)\np.load = load\nfrom harness.cli import main\n"
             "main(['--help'], standalone_mode=False)\nmain(['report', '--help'], standalone_mode=False)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "--preset" in done.stdout, done.stderr


@pytest.mark.parametrize("option, expected", [([], "pyra"), (["--bench-preset", "quick"], "quick")])
def test_a_preset_overrides_an_environment_variable_and_the_command_line_overrides_the_preset(monkeypatch, option,
                                                                                            expected):
    from click.testing import CliRunner

    from harness import cli

    monkeypatch.setenv("ADAPTBENCH_BENCH_PRESET", "quick")
    reached = {}
    monkeypatch.setattr(cli, "_main", lambda **options: reached.update(options))
    result = CliRunner().invoke(cli.main, ["--preset", "pyra-vit-b", *option])
    assert result.exit_code == 0, result.output
    assert presets.paper_presets()["pyra-vit-b"]["run"]["bench_preset"] == "pyra"
    assert reached["bench_preset"] == expected


def test_the_preset_reaches_the_plan_and_list_names_every_file():
    from click.testing import CliRunner

    from harness.cli import main

    result = CliRunner().invoke(main, ["--preset", "pyra-vit-b", "--tasks", "count", "--no-pretrained",
                                       "--dry-run", "--no-estimate"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("[")]
    assert len(lines) == 9 and all("img=224 epochs=100 lr=0.001 batch=32" in line for line in lines)
    assert "tome@high / count / vit_base_patch16_224.orig_in21k" in result.output
    listing = CliRunner().invoke(main, ["--preset", "list"]).output
    assert all(path.stem in listing for path in PAPER) and len(PAPER) == 3


def test_the_offline_recipe_gives_each_kind_of_method_the_learning_rate_its_file_lists():
    import tomllib
    from pathlib import Path

    import torch

    import harness
    from harness.plan import load_tasks, plan_runs

    harness.load_plugins()
    recipe = tomllib.loads((Path(harness.__file__).parents[1] / "tasks" / "offline.toml").read_text())
    tasks = load_tasks(["count"], None)
    plan = {config.method: config.train for config in plan_runs(
        ["full_ft", "lora", "tome"], tasks, seeds=[0], compressions=["high"], backbone=None, pretrained=None,
        device=torch.device("cpu"), train_overrides={})}
    assert plan["full_ft"].lr == recipe["lr"]["all"] and plan["lora"].lr == plan["tome"].lr == recipe["lr"]["adapters"]
    assert {train.epochs for train in plan.values()} == {recipe["epochs"]}
    given = plan_runs(["full_ft", "lora"], tasks, seeds=[0], compressions=None, backbone=None, pretrained=None,
                      device=torch.device("cpu"), train_overrides={"lr": 3e-4})
    assert [config.train.lr for config in given] == [3e-4, 3e-4]  # --lr overrides the recipe


def test_a_method_declares_what_it_trains():
    import pytest

    import harness
    from harness import registry

    harness.load_plugins()
    assert registry.get_method("full_ft").trains == "all" and registry.get_method("lora").trains == "adapters"
    with pytest.raises(ValueError, match="trains must be one of"):
        harness.register_method("half", trains="half")
