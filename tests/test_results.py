import json

import pytest

from harness.config import RunConfig
from harness.measure import MeasureConfig
from harness.results import flatten, write_json_atomic
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


def test_atomic_write_never_leaves_partial_files(tmp_path):
    path = tmp_path / "run.json"
    write_json_atomic(path, {"status": "ok"})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"status": object.__new__(type("Unserialisable", (), {"__str__": None}))})
    assert json.loads(path.read_text()) == {"status": "ok"}  # the finished file survives a failed rewrite
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_flatten_gives_one_flat_row():
    config = _config()
    record = {"key": config.key, "config": config.to_dict(), "status": "ok",
              "metrics": {"gmacs": 0.1, "curve": [{"epoch": 1}]}, "environment": {"torch": "2.x"}}
    row = flatten(record)
    assert row["method"] == "lora" and row["train_epochs"] == 3 and row["gmacs"] == 0.1
    assert row["env_torch"] == "2.x" and not any(isinstance(value, (dict, list)) for value in row.values())
