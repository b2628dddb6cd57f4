"""The cost of a plan before it starts: timed steps of each distinct model, scaled by the tasks and the recipe."""
import pytest
import torch

from harness import estimate as estimates
from harness.config import DataConfig, RunConfig
from harness.data import TaskData
from harness.measure import MeasureConfig
from harness.train import TrainConfig

TIMING = estimates.Timing(adapt_seconds=2.0, step_seconds=0.5, infer_seconds_per_image=0.001)


def config(method="lora", seed=0, **train) -> RunConfig:
    return RunConfig(method, "t", "vit_micro_small_patch4_32", seed, "none", False, "cpu",
                     TrainConfig(**{"epochs": 10, "eval_every": 4, "batch_size": 32, **train}),
                     MeasureConfig(batches=(64,), warmup_seconds=1.0, repeats=7, iters_per_repeat=2),
                     DataConfig(img_size=32))


def task(train=800, val=200, test=500, problem=None) -> TaskData:
    task = TaskData([0] * train, [0] * val, [0] * test, 10, 32, None, problem=problem)
    return task


def test_a_run_costs_adaptation_steps_evaluations_and_its_measurement():
    seconds = estimates.run_seconds(config(), task(), TIMING)
    steps = 10 * 32 * 0.5  # 1,000 images in batches of 32: 32 steps an epoch
    evaluations = 3 * 500 * 0.001  # after epochs 4, 8 and the last
    measurement = max(1.0, 3 * 64 * 0.001) + 7 * 2 * 64 * 0.001
    assert seconds == pytest.approx(2.0 + steps + evaluations + 2 * 0.5 + measurement)


def test_selecting_on_val_trains_on_train_alone_and_evaluates_val_too():
    seconds = estimates.run_seconds(config(selection="val"), task(), TIMING)
    steps = 10 * 25 * 0.5
    evaluations = 3 * 700 * 0.001
    assert seconds == pytest.approx(2.0 + steps + evaluations + 1.0 + max(1.0, 0.192) + 0.896)


def test_each_distinct_model_is_timed_once_and_broken_tasks_cost_nothing(monkeypatch):
    timed = []
    monkeypatch.setattr(estimates, "time_model", lambda config, classes, device: timed.append(config) or TIMING)
    configs = [config(seed=0), config(seed=1), config("full_ft"), RunConfig("lora", "broken", "x", 0, "none", False,
                                                                           "cpu", TrainConfig())]
    seconds = estimates.estimate(configs, {"t": task(), "broken": task(problem="no data")}, torch.device("cpu"))
    assert [run.method for run in timed] == ["lora", "full_ft"] and seconds[configs[3].key] == 0.0
    assert seconds[configs[0].key] == seconds[configs[1].key] > 0


@pytest.mark.parametrize("failure", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_a_failed_timing_frees_its_model_before_the_device_cache_is_emptied(monkeypatch, failure):
    import weakref

    class Model:
        pass

    held = []

    def time_model(config, classes, device):
        model = Model()  # what the traceback of the failure holds while it is in flight
        held.append(weakref.ref(model))
        raise failure("CUDA out of memory")

    alive_when_emptied = []
    monkeypatch.setattr(estimates, "time_model", time_model)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: alive_when_emptied.append(held[0]() is not None))
    with pytest.raises(estimates.EstimateUnavailable):
        estimates.estimate([config()], {"t": task()}, torch.device("cuda"))
    assert alive_when_emptied == [False]  # the workers sharing the GPU get the memory back


def test_a_real_model_is_timed_on_random_images():
    timing = estimates.time_model(config(batch_size=4), 3, torch.device("cpu"))
    assert timing.step_seconds > 0 and timing.infer_seconds_per_image > 0 and timing.adapt_seconds >= 0


def test_a_gpu_is_timed_at_the_runs_own_batches_a_cpu_at_small_ones():
    from harness.pipeline import TEST_BATCH

    # a GPU's time per image falls with the batch: evaluation runs at TEST_BATCH, so inference is timed there
    assert estimates.timing_batches(torch.device("cuda"), 32) == ([32], TEST_BATCH)
    assert estimates.timing_batches(torch.device("cpu"), 32) == ([4, 8], 8)
    assert estimates.timing_batches(torch.device("cpu"), 6) == ([4, 6], 6)


def test_a_search_while_adapting_is_charged_at_the_runs_batch_where_a_smaller_one_was_timed(monkeypatch):
    """On a CPU the timing's search reads batches of 4 images; the run's reads batches of 32: each batch read
    is charged what a training step gains from 4 to 32 images (here 2 s of the stubbed 3 s step)."""
    import dataclasses
    import inspect

    import harness

    harness.load_plugins()
    monkeypatch.setattr(estimates, "_timed", lambda fn, synchronize: 1.0)
    monkeypatch.setattr(estimates, "_extend", lambda counts, seconds, batch: 3.0)
    searched = estimates.time_model(dataclasses.replace(config("diffrate"), compression="high"), 3,
                                    torch.device("cpu"))
    plain = estimates.time_model(config("lora"), 3, torch.device("cpu"))
    steps = inspect.signature(harness.registry.get_method("diffrate").fn).parameters["search_steps"].default
    assert steps * 2.0 <= searched.adapt_seconds < steps * 2.0 + 30 and plain.adapt_seconds < 30


def test_the_inference_time_is_per_image_of_the_batch_timed(monkeypatch):
    timed_batches = []
    make_batch = estimates._batch
    monkeypatch.setattr(estimates, "_batch", lambda size, count, classes: timed_batches.append(count)
                        or make_batch(size, count, classes))
    monkeypatch.setattr(estimates, "_timed", lambda fn, synchronize: 1.0)  # every timed call takes one second
    monkeypatch.setattr(estimates, "timing_batches", lambda device, batch: ([4], 16))  # as a GPU: its own batches
    timing = estimates.time_model(config(batch_size=4), 3, torch.device("cpu"))
    assert timed_batches == [4, 16] and timing.infer_seconds_per_image == 1.0 / 16 and timing.step_seconds == 1.0


def test_the_dry_run_prints_the_estimate_and_the_run_compares_it_with_the_truth(plugin_file, tmp_path):
    from click.testing import CliRunner

    from harness.cli import main

    common = ["--plugins", str(plugin_file), "--methods", "bitfit", "--tasks", "tiny", "--bench-batch", "8",
              "--out", str(tmp_path)]
    dry = CliRunner().invoke(main, [*common, "--dry-run"])
    assert dry.exit_code == 0 and "Estimated wall time on cpu:" in dry.output and " s  -> " in dry.output
    result = CliRunner().invoke(main, common)
    summary = next(line for line in result.output.splitlines() if " ok, " in line)
    assert result.exit_code == 0 and "estimated" in summary
    # the dry run estimates what the run would do: not the run the folder holds
    again = CliRunner().invoke(main, [*common, "--dry-run", "--seeds", "0,1"])
    assert again.exit_code == 0, again.output
    assert "for the 1 run(s) to do; not the 1 its records cover" in again.output
    assert [" s  -> " in line for line in again.output.splitlines() if line.startswith("[")] == [False, True]
    done = CliRunner().invoke(main, [*common, "--dry-run"])
    assert "Nothing to run" in done.output and "Estimated" not in done.output


def test_with_parallel_jobs_the_estimate_compared_with_the_wall_time_is_shared_out_over_them():
    from harness.cli import _estimated_time

    assert _estimated_time(600.0, 1) == "10 min"
    assert _estimated_time(600.0, 2) == "5 min over 2 jobs (10 min one after another)"


def test_cpu_steps_are_extended_along_the_line_through_two_small_batches():
    assert estimates._extend([4, 8], [1.0, 1.4], 32) == pytest.approx(1.4 + 0.1 * 24)
    assert estimates._extend([4, 8], [1.0, 0.9], 32) == pytest.approx(0.9)  # noise never makes a batch cheaper
    assert estimates._extend([32], [2.0], 32) == 2.0


def test_a_model_too_large_to_time_leaves_the_plan_unestimated_and_the_runs_go_ahead(plugin_file, tmp_path,
                                                                                    monkeypatch):
    from click.testing import CliRunner

    from harness.cli import main

    def out_of_memory(config, classes, device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(estimates, "time_model", out_of_memory)
    common = ["--plugins", str(plugin_file), "--methods", "bitfit", "--tasks", "tiny", "--bench-batch", "8",
              "--out", str(tmp_path)]
    dry = CliRunner().invoke(main, [*common, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert ("Not estimated: out of memory on cpu timing bitfit on vit_micro_small_patch4_32 (training batch 32, "
            "inference batch 8)") in dry.output
    result = CliRunner().invoke(main, common)
    assert result.exit_code == 0 and "1 ok, 0 failed" in result.output
    assert "not estimated (out of memory on cpu timing bitfit" in result.output
