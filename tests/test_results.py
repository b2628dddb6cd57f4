import json

import pandas as pd
import pytest

from harness.config import RunConfig
from harness.measure import MeasureConfig
from harness.results import flatten
from harness.store import RunStore, write_json_atomic
from harness.train import TrainConfig


def _config(**changes) -> RunConfig:
    fields = dict(method="lora", task="count", backbone="vit_micro_base_patch4_32", seed=0, compression="none",
                  pretrained=False, device="cpu", train=TrainConfig(epochs=3))
    return RunConfig(**{**fields, **changes})


def test_config_key_is_stable_and_sensitive_to_every_field():
    assert _config().key == _config().key
    variants = [_config(seed=1), _config(method="full_ft"), _config(train=TrainConfig(epochs=3, lr=2e-3)),
                _config(device="cuda"), _config(measure=MeasureConfig(batches=(32,)))]
    assert len({variant.key for variant in variants} | {_config().key}) == len(variants) + 1


def test_a_setting_added_later_keeps_every_earlier_key_at_its_default_and_changes_it_when_set():
    """The key this config had before ``lr_schedule`` and ``eval_first`` existed: run folders recorded then
    must still find their files (a changed key would rerun every finished run)."""
    assert _config().key == "bb2d28993a94"
    changed = {_config(train=TrainConfig(epochs=3, lr_schedule="per_epoch_lagged")).key,
               _config(train=TrainConfig(epochs=3, eval_first=1)).key}
    assert len(changed | {_config().key}) == 3
    assert "lr_schedule" in _config().to_dict()["train"]  # the record still says what ran


def test_atomic_write_never_leaves_partial_files(tmp_path):
    path = tmp_path / "run.json"
    write_json_atomic(path, {"status": "ok"})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"status": object.__new__(type("Unserialisable", (), {"__str__": None}))})
    assert json.loads(path.read_text()) == {"status": "ok"}  # the finished file survives a failed rewrite
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_an_atomically_written_file_gets_the_mode_a_plain_open_gives(tmp_path):
    import os

    write_json_atomic(tmp_path / "run.json", {"status": "ok"})
    (tmp_path / "plain.json").write_text("{}")
    assert os.stat(tmp_path / "run.json").st_mode & 0o777 == os.stat(tmp_path / "plain.json").st_mode & 0o777


def test_an_adapter_file_gets_the_mode_a_plain_open_gives_though_safetensors_writes_its_own(tmp_path):
    import os

    import harness
    from harness.adapters import save_adapter

    model = harness.adapt(harness.create_backbone("vit_micro_small_patch4_32", 3, pretrained=False), "lora")
    save_adapter(model, tmp_path / "run.adapter.safetensors", {"method": "lora"})
    (tmp_path / "plain.json").write_text("{}")
    assert os.stat(tmp_path / "run.adapter.safetensors").st_mode & 0o777 == \
        os.stat(tmp_path / "plain.json").st_mode & 0o777


def test_flatten_gives_one_flat_row():
    config = _config()
    record = {"key": config.key, "config": config.to_dict(), "status": "ok",
              "metrics": {"gmacs": 0.1, "curve": [{"epoch": 1}]}, "environment": {"torch": "2.x"}}
    row = flatten(record)
    assert row["method"] == "lora" and row["train_epochs"] == 3 and row["gmacs"] == 0.1
    assert row["env_torch"] == "2.x" and not any(isinstance(value, (dict, list)) for value in row.values())


def test_a_row_recorded_before_a_training_setting_existed_says_it_ran_at_its_default():
    config = _config(train=TrainConfig(epochs=3, eval_first=1)).to_dict()
    for added in ("lr_schedule", "distilled_loss"):
        del config["train"][added]
    row = flatten({"key": "old", "config": config, "status": "ok"})
    assert (row["train_lr_schedule"], row["train_distilled_loss"], row["train_eval_first"]) == \
        ("per_step", "average", 1)


def test_flatten_carries_what_the_record_says_of_its_method_and_task():
    config = _config()
    record = {"key": config.key, "config": config.to_dict(), "status": "ok", "schema": 2,
              "method_info": {"compresses": False, "role": "reference", "order": 1},
              "task_info": {"suite": "offline", "group": None, "num_classes": 8,
                            "split_sizes": {"train": 800, "val": 200, "test": 500}}}
    row = flatten(record)
    assert (row["method_role"], row["method_order"], row["method_compresses"]) == ("reference", 1, False)
    assert (row["suite"], row["group"], row["num_classes"], row["train_size"], row["test_size"]) == \
        ("offline", None, 8, 800, 500)


def test_results_csv_is_rebuilt_from_the_run_files_alone(tmp_path):
    store = RunStore(tmp_path)
    for seed in (0, 1):
        config = _config(seed=seed)
        store.write(config, {"key": config.key, "config": config.to_dict(), "status": "ok"})
    (tmp_path / "notes.json").write_text('{"author": "me"}')  # foreign JSON beside the runs
    (tmp_path / "broken.json").write_text('{"key": ')
    path = store.write_csv()
    assert sorted(pd.read_csv(path)["seed"]) == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left
