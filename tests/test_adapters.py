"""Adapter-only checkpoints: a trained run's trainable parameters reload onto a freshly adapted backbone and give
the same logits; a file that does not fit is one line; the CLI writes one beside each record unless told not to."""
import json
import subprocess
import sys

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import harness
from harness import runner, worker
from harness import store as store_module
from harness.cli import main
from harness.config import RunConfig
from harness.measure import MeasureConfig
from harness.store import STATUS_FAILED, STATUS_OK, STATUS_RUNNING, RunStore
from harness.train import TrainConfig

BIG, SMALL = "vit_micro_base_patch4_32", "vit_micro_small_patch4_32"
NEXT_SMALLER = "vit_micro_medium_patch4_32"  # what small_peft takes for BIG, uncompressed
CLASSES = 4


def images(count: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def adapted(method: str, level: str = "none", seed: int = 0, **options) -> torch.nn.Module:
    """A pretrained micro ViT (frozen weights the same whatever the seed) adapted with ``method``; the seed draws
    the head and the adapters."""
    harness.load_plugins()
    torch.manual_seed(seed)
    return harness.adapt(harness.create_backbone(BIG, CLASSES, img_size=32), method, level, **options)


def train_a_little(model: torch.nn.Module, steps: int = 2) -> torch.nn.Module:
    """A few AdamW steps at a high learning rate: every trainable tensor moves away from its init."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(model(images(8, step)), torch.arange(8) % CLASSES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images(4, seed=99))


CASES = {  # method, level, options for the trained model; how the fresh one is adapted (a search need not rerun)
    "lora": ("lora", "none", {}, {}),
    "tome": ("tome", "high", {}, {}),
    "pyra": ("pyra", "high", {}, {}),
    "diffrate": ("diffrate", "high", {"train_data": [images(8, 7)], "search_steps": 3}, {"level": "none"}),
    "full_ft": ("full_ft", "none", {}, {}),
    "small_peft": ("small_peft", "none", {}, {}),
}


@pytest.fixture(scope="module", params=list(CASES))
def saved(request, tmp_path_factory):
    """A trained model of each method, its adapter file, and the case."""
    method, level, options, _ = CASES[request.param]
    model = train_a_little(adapted(method, level, seed=0, **options))
    path = tmp_path_factory.mktemp("adapters") / f"{method}.adapter.safetensors"
    harness.save_adapter(model, path, {"method": method, "compression": level, "backbone": BIG})
    return model, path, request.param


def test_reload_onto_a_fresh_backbone_gives_the_same_logits(saved):
    trained, path, case = saved
    method, level, _, fresh_options = CASES[case]
    fresh = adapted(method, fresh_options.get("level", level), seed=1)  # another seed: other head and adapters
    assert not torch.allclose(logits(fresh), logits(trained), atol=1e-3), "the fresh model must start elsewhere"
    assert harness.load_adapter(fresh, path) is fresh
    torch.testing.assert_close(logits(fresh), logits(trained), rtol=1e-6, atol=1e-6)
    if case == "diffrate":  # the searched counts are back, though the fresh model searched nothing
        assert fresh.adaptbench_info["prune_kept"] == trained.adaptbench_info["prune_kept"]


def test_the_file_holds_exactly_the_trainable_parameters(saved):
    trained, path, _ = saved
    tensors = load_file(str(path))
    trainable = {name: p for name, p in trained.named_parameters() if p.requires_grad}
    assert set(tensors) == set(trainable)
    assert all(torch.equal(tensors[name], param.detach()) for name, param in trainable.items())


def test_the_header_names_what_rebuilds_the_model(saved):
    trained, path, case = saved
    facts = harness.read_adapter_facts(path)
    method, level, _, _ = CASES[case]
    assert {key: facts[key] for key in ("method", "compression", "backbone", "num_classes", "img_size")} == {
        "method": method, "compression": level, "backbone": BIG, "num_classes": str(CLASSES), "img_size": "32"}
    if case == "diffrate":  # the searched counts, which are no parameters
        assert facts["prune_kept"] == trained.adaptbench_info["prune_kept"] != ",".join(["65"] * 12)
        assert facts["merge_kept"] == trained.adaptbench_info["merge_kept"]
    if case == "small_peft":  # the smaller backbone it chose: the one the weights belong to
        assert facts["small_backbone"] == facts["architecture"] == NEXT_SMALLER
    else:
        assert facts["architecture"] == BIG


def test_a_lora_adapter_of_the_micro_b_is_a_few_tens_of_kb(tmp_path):
    path = harness.save_adapter(adapted("lora"), tmp_path / "lora.adapter.safetensors", {"method": "lora"})
    backbone_bytes = 4 * sum(p.numel() for p in harness.create_backbone(BIG, CLASSES).parameters())
    assert 10_000 < path.stat().st_size < 100_000 and path.stat().st_size < backbone_bytes / 50


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora") / "lora.adapter.safetensors"
    return harness.save_adapter(adapted("lora"), path, {"method": "lora", "compression": "none", "backbone": BIG})


@pytest.mark.parametrize("method, level, options, message", [
    ("pyra", "high", {}, "the model trains blocks.0.modulator"),       # another method: more parameters
    ("full_ft", "none", {}, "it holds parameter blocks.0.attn.qkv.lora_A.weight, which the model has not"),
    ("lora", "none", {"rank": 8}, "parameter blocks.0.attn.qkv.lora_A.weight is (4, 96) in the file, (8, 96)"),
    ("diffrate", "none", {}, "its restore hook is nothing and the model's DiffRate"),  # same parameters as lora
    ("small_peft", "none", {}, f"it holds weights of {BIG} and the model is {NEXT_SMALLER}"),
    ("tome", "high", {}, "it was trained with method lora and the model was adapted with tome"),  # same parameters
])
def test_an_adapter_that_does_not_fit_is_one_line_naming_the_mismatch(lora_file, method, level, options, message):
    with pytest.raises(harness.UserError) as error:
        harness.load_adapter(adapted(method, level, **options), lora_file)
    text = str(error.value)
    assert "\n" not in text and message in text and "lora.adapter.safetensors" in text
    assert f"harness.create_backbone('{BIG}', {CLASSES}, img_size=32), then harness.adapt(model, 'lora'" in text


def test_a_token_merging_adapter_loads_only_at_the_level_it_was_trained_at(tmp_path):
    path = harness.save_adapter(adapted("tome", "low"), tmp_path / "tome.adapter.safetensors",
                                {"method": "tome", "compression": "low", "backbone": BIG})
    with pytest.raises(harness.UserError, match="trained with compression low and the model was adapted with high"):
        harness.load_adapter(adapted("tome", "high"), path)
    harness.load_adapter(adapted("tome", "low"), path)
    uncompressed = harness.save_adapter(adapted("lora"), tmp_path / "lora.adapter.safetensors",
                                        {"method": "lora", "compression": None})  # the Python API's no level
    harness.load_adapter(adapted("lora"), uncompressed)


def test_a_speed_matched_small_model_is_rebuilt_from_the_choice_its_file_records(tmp_path):
    """small_peft at a level times a match to choose its model; the file records the choice under the option's
    name, the hint passes it, and the rebuilt model gives the run's logits without timing anything."""
    trained = train_a_little(adapted("small_peft", "high", measure=MeasureConfig(
        batches=(2,), warmup_iters=1, warmup_seconds=0.0, repeats=1, iters_per_repeat=1)))
    path = harness.save_adapter(trained, tmp_path / "small.adapter.safetensors",
                                {"method": "small_peft", "compression": "high", "backbone": BIG})
    facts = harness.read_adapter_facts(path)
    others = [name for name in (SMALL, NEXT_SMALLER) if name != facts["small_backbone"]]
    with pytest.raises(harness.UserError, match=f"small_backbone='{facts['small_backbone']}'") as error:
        harness.load_adapter(adapted("small_peft", "high", seed=1, small_backbone=others[0]), path)
    assert "harness.adapt(model, 'small_peft', 'high', small_backbone=" in str(error.value)  # a call that runs
    fresh = adapted("small_peft", "high", seed=1, small_backbone=facts["small_backbone"])
    torch.testing.assert_close(logits(harness.load_adapter(fresh, path)), logits(trained), rtol=1e-6, atol=1e-6)
    with pytest.raises(harness.UserError, match=f"small_backbone '{BIG}' is not smaller than '{BIG}'"):
        adapted("small_peft", "high", small_backbone=BIG)
    with torch.device("meta"):  # a hub family's choice is its known name, weights tag included
        big = timm.create_model("vit_base_patch16_224.orig_in21k", pretrained=False, num_classes=CLASSES)
        harness.adapt(big, "small_peft", "high", small_backbone="vit_small_patch16_224.augreg_in21k")


def test_a_file_that_is_no_adapter_is_one_line(tmp_path):
    foreign = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    for path, message in ((foreign, "is not an adaptbench adapter"), (tmp_path / "missing.safetensors", "cannot read")):
        with pytest.raises(harness.UserError, match=message) as error:
            harness.load_adapter(adapted("lora"), path)
        assert "\n" not in str(error.value)


# The runner and the CLI: a run's adapter lies beside its record, only an ok run has one.

def config() -> RunConfig:
    return RunConfig("lora", "tiny_bright", SMALL, 0, "none", False, "cpu", TrainConfig(epochs=1))


def test_a_failed_run_leaves_no_adapter_and_a_rerun_none_of_the_earlier_run(monkeypatch, loaded_plugin, tmp_path):
    store, run = RunStore(tmp_path), config()
    store.adapter_path(run).write_bytes(b"an earlier run's")
    written = []

    def pipeline(run_config, task, device, log, run_dir, adapter_path, **kwargs):
        assert not store.adapter_path(run).exists(), "an earlier run's adapter is gone when the run starts"
        written.append(adapter_path)
        adapter_path.write_bytes(b"partial")
        raise RuntimeError("broke after saving")

    monkeypatch.setattr(runner, "train_and_measure", pipeline)
    task = harness.registry.get_task("tiny_bright").fn(None)
    record = runner.execute(run, task, store, torch.device("cpu"), lambda line: None)
    assert record["status"] == STATUS_FAILED and written == [store.adapter_path(run)]
    assert not store.adapter_path(run).exists()
    monkeypatch.setattr(runner, "train_and_measure", lambda *args, **kwargs: written.append(args[-1]) or {"x": 1})
    assert runner.execute(run, task, store, torch.device("cpu"), lambda line: None,
                          runner.RunOptions(save_adapters=False, rerun="failed"))["status"] == STATUS_OK
    assert written[-1] is None  # --no-save-adapters: the pipeline is given nowhere to save


def test_a_worker_is_told_not_to_save(monkeypatch, tmp_path):
    executed = []
    monkeypatch.setattr(worker, "load_tasks", lambda names, root, **options: {name: object() for name in names})
    monkeypatch.setattr(worker, "execute", lambda *args: executed.append(args) or {"status": STATUS_OK})
    for save in (False, True):
        job = runner.worker_job(config(), RunStore(tmp_path), "cpu", None, [], runner.RunOptions(save_adapters=save),
                                {})
        assert worker.main(job.command()[-1:]) == 0
    assert [args[5].save_adapters for args in executed] == [False, True]


def cli_run(plugin_file, out, *extra: str):
    result = CliRunner().invoke(main, ["--plugins", str(plugin_file), "--methods", "lora", "--tasks", "tiny",
                                       "--bench-batch", "8", "--out", str(out), *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (record_file,) = out.glob("*.json")
    return json.loads(record_file.read_text()), record_file


def test_the_cli_saves_the_adapter_beside_the_record_and_it_reloads(plugin_file, tmp_path):
    record, record_file = cli_run(plugin_file, tmp_path / "runs")
    adapter = record_file.with_name(f"{record_file.stem}.adapter.safetensors")
    assert sorted(path.name for path in (tmp_path / "runs").glob("*.safetensors")) == [adapter.name]
    assert record["metrics"]["adapter_file"] == adapter.name
    assert record["metrics"]["adapter_mb"] == pytest.approx(adapter.stat().st_size / 2 ** 20)
    facts = harness.read_adapter_facts(adapter)
    assert facts["run_key"] == record["key"] and facts["task"] == "tiny_bright"
    # Saved before LoRA was merged into qkv: a fresh LoRA model takes it.
    model = harness.create_backbone(facts["backbone"], int(facts["num_classes"]), img_size=int(facts["img_size"]))
    harness.load_adapter(harness.adapt(model, facts["method"], facts["compression"]), adapter)


def test_no_save_adapters_writes_none(plugin_file, tmp_path):
    record, _ = cli_run(plugin_file, tmp_path / "runs", "--no-save-adapters")
    assert not list((tmp_path / "runs").glob("*.safetensors")) and "adapter_file" not in record["metrics"]


def _finished_run(monkeypatch, store: RunStore, task) -> dict:
    def pipeline(run_config, task, device, log, run_dir, adapter_path, **kwargs):
        adapter_path.write_bytes(b"the finished run's")
        return {"test_acc_best": 1.0, "adapter_file": adapter_path.name}
    monkeypatch.setattr(runner, "train_and_measure", pipeline)
    assert runner.execute(config(), task, store, torch.device("cpu"), lambda line: None)["status"] == STATUS_OK
    return store.read(config())  # as the file holds it


@pytest.mark.parametrize("ending", [KeyboardInterrupt, RuntimeError])
def test_a_forced_rerun_that_does_not_finish_leaves_the_finished_run_and_its_adapter(monkeypatch, loaded_plugin,
                                                                                     tmp_path, ending):
    store, run = RunStore(tmp_path), config()
    task = harness.registry.get_task("tiny_bright").fn(None)
    finished = _finished_run(monkeypatch, store, task)

    def pipeline(run_config, task, device, log, run_dir, adapter_path, **kwargs):
        assert store.read(run)["replaces"] == finished  # running, carrying the row a kill must not lose
        assert adapter_path != store.adapter_path(run) and store.adapter_path(run).exists()
        adapter_path.write_bytes(b"partial")
        raise ending("cut short")
    monkeypatch.setattr(runner, "train_and_measure", pipeline)
    try:
        record = runner.execute(run, task, store, torch.device("cpu"), lambda line: None,
                                runner.RunOptions(rerun="all"))
        assert record["status"] == STATUS_FAILED  # what the sweep reports
    except KeyboardInterrupt:
        pass
    kept = store.read(run)
    note = kept.pop("forced_rerun")
    assert kept == finished and store.adapter_path(run).read_bytes() == b"the finished run's"
    assert note["status"] == STATUS_FAILED and note["reason"].endswith("the finished run it was to replace is kept; "
                                                                       "--force runs it again)")
    assert [path.name for path in tmp_path.iterdir() if "adapter" in path.name] == [store.adapter_path(run).name]


def test_a_killed_forced_rerun_gives_back_the_finished_run_and_an_ok_one_replaces_it(monkeypatch, loaded_plugin,
                                                                                     tmp_path):
    store, run = RunStore(tmp_path), config()
    task = harness.registry.get_task("tiny_bright").fn(None)
    finished = _finished_run(monkeypatch, store, task)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.write(run, {**runner.new_record(run, task), "executor": {"host": "vm", "pid": dead.pid, "attempt": "a1"},
                      "replaces": finished})  # what a SIGKILL during the rerun leaves
    kept = store.read(run)
    assert {key: value for key, value in kept.items() if key != "forced_rerun"} == finished
    assert kept["forced_rerun"]["failure"] == "died"
    outcome = store_module.attempt_outcome(kept, "a1")  # what the sweep that launched it reports
    assert (outcome["status"], outcome["failure"]) == (STATUS_FAILED, "died")
    assert store_module.attempt_outcome(kept, "another") == kept

    def pipeline(run_config, task, device, log, run_dir, adapter_path, **kwargs):
        adapter_path.write_bytes(b"the rerun's")
        return {"test_acc_best": 2.0, "adapter_file": adapter_path.name}
    monkeypatch.setattr(runner, "train_and_measure", pipeline)
    record = runner.execute(run, task, store, torch.device("cpu"), lambda line: None, runner.RunOptions(rerun="all"))
    assert record["status"] == STATUS_OK and store.read(run)["metrics"]["test_acc_best"] == 2.0
    assert not {"replaces", "forced_rerun"} & set(store.read(run))
    assert record["metrics"]["adapter_file"] == store.adapter_path(run).name
    assert store.adapter_path(run).read_bytes() == b"the rerun's"
    assert [path.name for path in tmp_path.iterdir() if "adapter" in path.name] == [store.adapter_path(run).name]


def test_an_executor_that_sees_a_forced_rerun_end_unfinished_keeps_the_finished_run(monkeypatch, loaded_plugin,
                                                                                    tmp_path):
    """The local executor's timeout can kill a worker before it writes anything: the finished run stays."""
    store, run = RunStore(tmp_path), config()
    task = harness.registry.get_task("tiny_bright").fn(None)
    finished = _finished_run(monkeypatch, store, task)
    failed = runner.write_failure(run, task, store, "timeout", "the worker process outlived --timeout 5 s",
                                  store.read(run))
    assert failed["status"] == STATUS_FAILED and failed["failure"] == "timeout"
    kept = store.read(run)
    assert kept["forced_rerun"]["failure"] == "timeout" and kept["metrics"] == finished["metrics"]
    assert store.adapter_path(run).read_bytes() == b"the finished run's"


def test_a_failure_is_not_written_over_a_run_that_another_live_process_has_claimed_since(loaded_plugin, tmp_path):
    """A worker died; before its sweep writes it off, a sweep beside it found the run dead and runs it now: the
    record, adapters and claim are the new owner's."""
    store, run = RunStore(tmp_path), config()
    task = harness.registry.get_task("tiny_bright").fn(None)
    held = store.claims.take(run.file_stem, {"name": "local", "job_id": "1.worker0"})
    store.write(run, {**runner.new_record(run, task), "executor": {"name": "local"}})
    store.new_adapter_path(run).write_bytes(b"the new owner's")
    seen = store.read(run)
    assert runner.write_failure(run, task, store, "died", "the worker process exited with code -9", seen) is None
    assert store.read(run)["status"] == STATUS_RUNNING and store.new_adapter_path(run).exists()
    assert store.claims.owner(run.file_stem) is not None
    held.release()
    failed = runner.write_failure(run, task, store, "died", "the worker process exited with code -9", seen)
    assert failed["failure"] == "died" and store.read(run)["failure"] == "died"
    assert not store.new_adapter_path(run).exists() and store.claims.owner(run.file_stem) is None


@pytest.mark.parametrize("since", ["ok", "failed"])
def test_a_failure_is_not_written_over_a_record_another_process_wrote_since_the_executor_looked(loaded_plugin,
                                                                                                 tmp_path, since):
    """A waiting sweep reaches its killed job hours later: a sweep run meanwhile has run the config again and
    recorded it. Its record and adapter stand, and are what the config came to."""
    store, run = RunStore(tmp_path), config()
    task = harness.registry.get_task("tiny_bright").fn(None)
    store.write(run, {**runner.new_record(run, task), "executor": {"name": "slurm", "attempt": "killed"}})
    seen = store.read(run)
    later = {**runner.new_record(run, task), "executor": {"name": "slurm", "attempt": "later"}, "status": since,
             **({"metrics": {"test_acc_best": 1.0}} if since == STATUS_OK else {"failure": "nan", "reason": "NaN"})}
    store.write(run, later)
    later = store.read(run)  # as written: lists for tuples
    store.adapter_path(run).write_bytes(b"the later run's")
    assert runner.write_failure(run, task, store, "died", "Slurm job 42_3 ended without finishing the run", seen,
                                "42_3") == later
    assert store.read(run) == later and store.adapter_path(run).read_bytes() == b"the later run's"


def test_a_forced_rerun_of_a_task_whose_data_went_bad_keeps_the_finished_run(monkeypatch, loaded_plugin, tmp_path):
    import dataclasses

    store, run = RunStore(tmp_path), config()
    task = harness.registry.get_task("tiny_bright").fn(None)
    finished = _finished_run(monkeypatch, store, task)
    broken = dataclasses.replace(task, problem="3 of 6 images listed in test.txt are missing")
    record = runner.execute(run, broken, store, torch.device("cpu"), lambda line: None, runner.RunOptions(rerun="all"))
    assert record["failure"] == "data" and store.read(run)["metrics"] == finished["metrics"]
